"""The inspection glue on real (untrained, smoke-sized) IRRA and PHP models and a tiny synthetic split."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from irra_core.config import load_config
from irra_core.data import prepare_dataset
from irra_core.model import build_model
from irra_core.viz import attention as A
from irra_core.viz import routing as RT
from irra_core.viz.inspect import (InspectRun, capture_cross, capture_image, caption_expert_map, decode_tokens,
                                   image_expert_map)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    out = {}
    for arch in ("irra", "php"):
        cfg = load_config(f"{arch}-cpu", {"data.root": str(root)}, smoke=True)
        torch.manual_seed(0)
        ds = prepare_dataset(cfg)
        model = build_model(cfg, ds.num_classes).eval()
        out[arch] = InspectRun(name=arch, model=model, split=ds.test, img_size=tuple(cfg.data.img_size),
                               text_length=cfg.data.text_length, cfg=cfg)
    return out


def test_query_table_and_display_image(runs):
    run = runs["irra"]
    table = run.query_table()
    assert len(table) == len(run.split["captions"])
    assert set(table.columns) >= {"query_index", "pid", "first_hit_rank", "AP", "top10_indices"}
    assert (table["first_hit_rank"] >= 1).all()
    h, w = run.img_size
    assert run.display_image(0).shape == (h, w, 3)


def test_rollout_and_cross_on_real_model(runs):
    run = runs["irra"]
    att, _ = capture_image(run, [0, 1])
    grid = tuple(att.meta["grid"])
    roll = A.attention_rollout(att.maps["image"])
    assert roll.shape == (2, grid[0] * grid[1])
    assert torch.allclose(roll.sum(-1), torch.ones(2), atol=1e-5)
    cross, words, grid2 = capture_cross(run, 0, run.split["captions"][0])
    assert words[0] == "<|startoftext|>" and words[-1] == "<|endoftext|>"
    assert cross.shape == (len(words), grid[0] * grid[1]) and grid2 == grid
    fig = A.plot_text_to_patch(run.display_image(0), cross, words, grid)
    assert fig.axes[1].get_title() == words[1]
    with pytest.raises(ValueError, match="MLM"):
        capture_cross(runs["php"], 0, "a man")


def test_routing_maps_on_real_php(runs):
    run = runs["php"]
    att, rt = capture_image(run, [0, 1, 2], routing=True)
    load = RT.expert_load(rt.records)
    E, k = run.cfg.model.num_experts, run.cfg.model.topk
    assert set(load["modality"]) == {"image"}
    per_layer = load.groupby("layer")["count"].sum()
    assert (per_layer == 3 * run.cfg.model.cnum * k).all()  # each unified token counted k times, once
    aux = RT.aux_per_layer(rt.records)
    assert aux["floor"].iloc[0] == pytest.approx(k / E)
    assert (aux["aux"] >= 0).all()
    assert att.maps["crfm_image"][0].shape[1] == run.cfg.model.cnum
    expert, share, grid, num_experts = image_expert_map(run, 0)
    assert expert.shape == (grid[0] * grid[1],) and int(expert.max()) < num_experts
    assert ((share > 0) & (share <= 1 + 1e-6)).all()
    words, w_expert, w_share, _ = caption_expert_map(run, run.split["captions"][0])
    assert len(words) == len(w_expert) and words[-1] == "<|endoftext|>"


def test_decode_tokens_roundtrip():
    from irra_core.data import tokenize

    words = decode_tokens(tokenize(["a man in red"], 16)[0])
    assert words == ["<|startoftext|>", "a", "man", "in", "red", "<|endoftext|>"]


def test_load_runs_names_the_training_notebooks(tmp_path):
    from irra_core.viz.inspect import load_runs

    with pytest.raises(FileNotFoundError, match="10_train_irra"):
        load_runs(tmp_path / "empty-run")


def test_queries_csv_of_another_split_is_not_used(tmp_path, capsys):
    import pandas as pd

    from irra_core.viz.inspect import find_queries_csv

    split = {"captions": ["a", "b"]}
    row = {"query_index": 0, "pid": 1, "caption": "x", "first_hit_rank": 1, "AP": 1.0, "INP": 1.0,
           "top10_indices": "[0]", "top10_scores": "[0.5]"}
    (tmp_path / "eval" / "val-best").mkdir(parents=True)
    pd.DataFrame([row]).to_csv(tmp_path / "eval" / "val-best" / "queries.csv", index=False)
    assert find_queries_csv(tmp_path, "best", split) is None
    assert "another split" in capsys.readouterr().out
    pd.DataFrame([{**row, "caption": "a"}, {**row, "caption": "b", "query_index": 1}]).to_csv(tmp_path / "queries.csv", index=False)
    assert find_queries_csv(tmp_path, "best", split) == tmp_path / "queries.csv"
