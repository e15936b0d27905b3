"""Expert-routing statistics and plots on synthetic capture records and log lines."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from irra_core.viz import routing as RT


def _record(modality, layer, topk, logits=None, E=4):
    topk = torch.as_tensor(topk)
    if logits is None:
        logits = torch.zeros(*topk.shape[:2], E)
    return {"modality": modality, "layer": layer, "gate_logits": logits, "topk": topk,
            "weights": torch.full(topk.shape, 1.0 / topk.shape[-1])}


def test_load_counts_each_selection_and_keeps_modalities_apart():
    img = _record("image", 0, [[[0, 1], [0, 2]]])
    txt = _record("text", 0, [[[3, 2], [3, 1], [3, 0]]])
    load = RT.expert_load([img, txt, img])  # the image batch twice: summed, never mixed with text
    im = load[load.modality == "image"].sort_values("expert")
    assert im["count"].tolist() == [4, 2, 2, 0]
    assert im["fraction"].sum() == pytest.approx(1.0)
    tx = load[load.modality == "text"].sort_values("expert")
    assert tx["count"].tolist() == [1, 1, 1, 3]


def test_entropy_and_divergence():
    load = RT.counts_table({("image", 0): [5, 5, 5, 5], ("text", 0): [10, 0, 0, 0]})
    ent = RT.routing_entropy(load).set_index("modality")
    assert ent.loc["image", "entropy"] == pytest.approx(math.log(4))
    assert ent.loc["text", "entropy"] == pytest.approx(0.0)
    js = RT.modality_divergence(load)["js_divergence"].iloc[0]
    p, q = np.full(4, 0.25), np.array([1.0, 0, 0, 0])
    m = (p + q) / 2
    expected = 0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q[:1] * np.log(q[:1] / m[:1]))
    assert js == pytest.approx(expected)


def test_aux_is_k_over_E_when_balanced_and_higher_when_collapsed():
    balanced = _record("image", 0, [[[0, 1], [2, 3]]])  # uniform softmax, f = 1/2 each
    aux = RT.aux_per_layer([balanced])
    assert aux["aux"].iloc[0] == pytest.approx(0.5) and aux["floor"].iloc[0] == pytest.approx(0.5)
    logits = torch.tensor([[[5.0, 4.0, 0, 0], [5.0, 4.0, 0, 0]]])
    collapsed = _record("image", 1, [[[0, 1], [0, 1]]], logits)
    assert RT.aux_per_layer([collapsed])["aux"].iloc[0] > 0.9


def test_token_expert_map_votes_through_crfm():
    topk = torch.tensor([[2, 0], [1, 3]])  # token 0 -> expert 2, token 1 -> expert 1
    crfm = torch.tensor([[0.7, 0.1, 0.2], [0.3, 0.9, 0.8]])
    expert, share = RT.token_expert_map(topk, crfm, 4)
    assert expert.tolist() == [2, 1, 1]
    assert share[0].item() == pytest.approx(0.7)
    with pytest.raises(ValueError, match="CRFM"):
        RT.token_expert_map(topk, crfm[:1], 4)


def test_routing_plots():
    load = RT.counts_table({(m, l): np.random.randint(1, 9, 4) for m in ("image", "text") for l in (0, 1)})
    fig = RT.plot_expert_load(load)
    assert len(fig.axes) == 2 and [a.get_title() for a in fig.axes] == ["layer 0", "layer 1"]
    assert len(fig.axes[0].patches) == 8  # 4 experts x 2 modalities
    fig = RT.plot_routing_entropy(RT.routing_entropy(load))
    assert fig.axes[0].lines[-1].get_ydata()[0] == pytest.approx(math.log(4))
    expert, share = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]), torch.rand(8)
    fig = RT.plot_patch_expert_map(np.random.rand(32, 16, 3), expert, share, (4, 2), 4)
    over = fig.axes[0].get_images()[1].get_array()
    assert over.shape == (4, 2, 4)
    assert tuple(over[0, 1, :3]) == pytest.approx(RT.expert_colors(4)[1][:3])
    fig = RT.plot_word_experts(["a", "red", "coat"], [0, 3, 3], 4)
    assert [t.get_text() for t in fig.axes[0].texts] == ["a", "red", "coat"]
    aux = pd.DataFrame({"modality": ["image", "text"], "layer": [0, 0], "aux": [0.6, 0.7], "floor": [0.5, 0.5]})
    fig = RT.plot_aux_vs_floor(aux)
    assert fig.axes[0].lines[0].get_ydata()[0] == pytest.approx(0.5)
    assert [p.get_height() for p in fig.axes[0].patches] == pytest.approx([0.6, 0.7])


def test_drift_from_log_both_formats():
    lines = [
        {"epoch": 1, "routing": {"image": [[1, 1, 2, 0]], "text": [{"counts": [4, 0, 0, 0], "aux": 0.9}]}},
        {"step": 5, "loss": 1.0},
        {"epoch": 2, "routing": {"image": [[1, 1, 1, 1]], "text": [{"counts": [1, 1, 1, 1], "aux": 0.5}]}},
    ]
    drift = RT.drift_from_log(lines)
    assert sorted(drift["epoch"].unique()) == [1, 2]
    e1 = drift[(drift.epoch == 1) & (drift.modality == "image")].sort_values("expert")
    assert e1["fraction"].tolist() == pytest.approx([0.25, 0.25, 0.5, 0.0])
    assert drift[(drift.epoch == 1) & (drift.modality == "text")]["aux"].iloc[0] == pytest.approx(0.9)
    fig = RT.plot_routing_drift(drift)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 5  # 4 experts + balanced line
    with pytest.raises(ValueError, match="log.jsonl"):
        RT.plot_routing_drift(RT.drift_from_log([{"epoch": 1}]))


def test_aux_over_training():
    lines = [{"epoch": e, "routing": {"image": [{"counts": [1, 1, 1, 1], "aux": 0.5 + 0.1 / e}] * 2}} for e in (1, 2, 3)]
    fig = RT.plot_aux_over_training(RT.drift_from_log(lines), floor=0.5)
    ax = fig.axes[0]
    assert len(ax.lines) == 3  # two layers + floor
    assert list(ax.lines[0].get_ydata()) == pytest.approx([0.6, 0.55, 0.5 + 0.1 / 3])
    with pytest.raises(ValueError, match="aux"):
        RT.plot_aux_over_training(RT.drift_from_log([{"epoch": 1, "routing": {"image": [[1, 2]]}}]), 0.5)
