"""encode_split / evaluate / leak_audit / aggregate_runs / report on tiny splits and models."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from irra_core.evaluation.bootstrap import bootstrap_table
from irra_core.evaluation import (
    aggregate_runs,
    encode_split,
    evaluate,
    format_metrics_table,
    leak_audit,
    load_queries,
    metrics_dataframe,
    rank_metrics,
    subset_split,
)

KEYS = ("R1", "R5", "R10", "mAP", "mINP")


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _FakeLoaderSet(torch.utils.data.Dataset):
    def __init__(self, pids, inputs, order=None):
        self.pids, self.inputs = pids, inputs
        self.order = list(range(len(pids))) if order is None else list(order)

    def __len__(self):
        return len(self.order)

    def __getitem__(self, i):
        j = self.order[i]
        return self.pids[j], self.inputs[j]


class _FakeModel(nn.Module):
    """Per-sample linear encoders; with ``mix`` the image encoder adds the batch mean (a leak)."""

    def __init__(self, mix: bool):
        super().__init__()
        self.mix = mix
        self.img = nn.Linear(6, 4)
        self.txt = nn.Linear(6, 4)

    def encode_image(self, x):
        out = self.img(x)
        return out + out.mean(0, keepdim=True) if self.mix else out

    def encode_text(self, x):
        return self.txt(x)


def _fake_loaders(batch_size, shuffle, seed, n_ids=6):
    gen = torch.Generator().manual_seed(0)
    protos = torch.randn(n_ids, 6, generator=gen)
    g_pids = torch.arange(n_ids).repeat_interleave(2)
    q_pids = torch.arange(n_ids).repeat_interleave(3)
    g_in = protos[g_pids] + 0.3 * torch.randn(len(g_pids), 6, generator=gen)
    q_in = protos[q_pids] + 0.3 * torch.randn(len(q_pids), 6, generator=gen)
    perm = lambda n: torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist() if shuffle else None  # noqa: E731
    g_set = _FakeLoaderSet(g_pids.tolist(), g_in, perm(len(g_pids)))
    q_set = _FakeLoaderSet(q_pids.tolist(), q_in, perm(len(q_pids)))
    mk = lambda s: torch.utils.data.DataLoader(s, batch_size=batch_size)  # noqa: E731
    return mk(g_set), mk(q_set), g_in, q_in


def test_encode_split_unpermutes_and_restores_mode():
    torch.manual_seed(0)
    model = _FakeModel(mix=False).train()
    g_loader, q_loader, g_in, q_in = _fake_loaders(5, shuffle=True, seed=3)
    enc = encode_split(model, None, None, device="cpu", loaders=(g_loader, q_loader))
    assert model.training  # restored
    with torch.no_grad():
        assert torch.allclose(enc.g_feats, model.img(g_in), atol=1e-6)
        assert torch.allclose(enc.q_feats, model.txt(q_in), atol=1e-6)
    assert enc.g_pids.tolist() == torch.arange(6).repeat_interleave(2).tolist()


def test_encode_split_mixing_module_depends_on_batch():
    torch.manual_seed(0)
    model = _FakeModel(mix=True)
    a = encode_split(model, None, None, device="cpu", loaders=_fake_loaders(1, False, 0)[:2])
    b = encode_split(model, None, None, device="cpu", loaders=_fake_loaders(4, True, 1)[:2])
    assert torch.allclose(a.q_feats, b.q_feats, atol=1e-6)
    assert not torch.allclose(a.g_feats, b.g_feats, atol=1e-3)


@pytest.fixture(scope="module")
def tiny_php(tmp_path_factory):
    pytest.importorskip("irra_core.model")
    from irra_core.config import load_config
    from irra_core.data import prepare_dataset
    from irra_core.model import build_model

    root = tmp_path_factory.mktemp("data")
    models = {}
    for attention in ("batch", "tokens"):
        cfg = load_config("php-cpu", {"model.efp_attention": attention, "data.root": str(root)}, smoke=True)
        dataset = prepare_dataset(cfg)
        torch.manual_seed(0)
        models[attention] = (build_model(cfg, dataset.num_classes), cfg, dataset)
    return models


@pytest.mark.parametrize("attention,expect_flag", [("batch", True), ("tokens", False)])
def test_leak_audit_flags_batch_axis_php(tiny_php, attention, expect_flag):
    model, cfg, dataset = tiny_php[attention]
    report = leak_audit(model, cfg, dataset.test, batch_sizes=(1, 8, None), max_queries=24, device="cpu")
    assert report.flagged is expect_flag, report.summary()
    frame = report.to_dataframe()
    assert len(frame) == 5  # bs 1, 8, default(16) ordered + 8, 16 shuffled
    assert {"batch_size", "shuffled", "max_embedding_diff", "t2i_R1", "i2t_mINP"} <= set(frame.columns)
    if expect_flag:
        assert report.max_embedding_diff > 1e-2
        assert "FLAGGED" in report.summary()
    else:
        assert report.max_embedding_diff < 1e-4
        assert max(report.metric_spread.values()) == 0.0


def test_subset_split_keeps_whole_identities():
    split = {"image_pids": [0, 0, 1, 1, 2], "img_paths": list("abcde"),
             "caption_pids": [0, 0, 0, 0, 1, 1, 1, 1, 2, 2], "captions": [str(i) for i in range(10)]}
    sub = subset_split(split, max_queries=7)
    assert sub["image_pids"] == [0, 0] and sub["caption_pids"] == [0] * 4
    with pytest.raises(ValueError, match="no whole identity"):
        subset_split(split, max_gallery=1)


def test_evaluate_writes_metrics_queries_and_cache(tiny_php, tmp_path):
    model, cfg, dataset = tiny_php["tokens"]
    out, cache = tmp_path / "eval", tmp_path / "cache"
    result = evaluate(model, cfg, "test", device="cpu", out_dir=out, cache_dir=cache)
    assert set(result) == {"t2i", "i2t"} and set(result["t2i"]) == set(KEYS)
    written = json.loads((out / "metrics.json").read_text())
    assert written["t2i"] == pytest.approx(result["t2i"])
    assert len(list(cache.glob("embeddings-*.pt"))) == 1
    # 95% intervals over identities next to each point estimate, with their settings
    assert written["bootstrap"]["n_resamples"] == 1000 and written["bootstrap"]["unit"] == "identity"
    for task in ("t2i", "i2t"):
        for key in KEYS:
            low, high = written["ci"][task][key]
            assert low <= written[task][key] <= high
    again = bootstrap_table(load_queries(out), n_resamples=1000, seed=written["bootstrap"]["seed"])
    assert written["ci"]["t2i"]["mAP"] == pytest.approx([again.low["mAP"], again.high["mAP"]], abs=1e-3)

    # per-query table agrees with the metrics and with an independent full sort
    enc = encode_split(model, cfg, "test", device="cpu")
    q = torch.nn.functional.normalize(enc.q_feats, dim=1)
    g = torch.nn.functional.normalize(enc.g_feats, dim=1)
    sim = q @ g.T
    table = load_queries(out)
    assert len(table) == len(dataset.test["captions"])
    assert list(table["caption"]) == list(dataset.test["captions"])
    assert 100 * (table["first_hit_rank"] == 1).mean() == pytest.approx(result["t2i"]["R1"])
    assert 100 * table["AP"].mean() == pytest.approx(result["t2i"]["mAP"], abs=1e-3)
    order = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :10]
    assert table["top10_indices"].tolist() == order.tolist()
    assert result["i2t"]["mAP"] == pytest.approx(rank_metrics(sim.T, enc.g_pids, enc.q_pids)["mAP"], abs=1e-4)

    # cache hit: a different model under the same key returns the cached embeddings' metrics
    other = evaluate(model, cfg, "test", device="cpu", cache_dir=cache,
                     cache_key=next(cache.glob("embeddings-*.pt")).stem[len("embeddings-"):])
    assert other["t2i"] == pytest.approx(result["t2i"])


def test_report_views():
    metrics = {"t2i": dict(zip(KEYS, [73.38, 89.93, 93.71, 66.13, 50.24])),
               "i2t": dict(zip(KEYS, [1.0, 2.0, 3.0, 4.0, 5.0]))}
    table = format_metrics_table(metrics)
    assert "| t2i  | 73.380 |" in table and "mINP" in table and table.count("\n") == 5
    frame = metrics_dataframe(metrics, name="a")
    assert len(frame) == 10 and frame.query("task == 't2i' and metric == 'R1'")["value"].item() == 73.38


def test_aggregate_runs(tmp_path):
    runs = []
    for i, r1 in enumerate([70.0, 72.0, 74.0]):
        folder = tmp_path / f"seed{i}"
        folder.mkdir()
        (folder / "metrics.json").write_text(json.dumps(
            {"t2i": dict(zip(KEYS, [r1, 80, 90, 60, 40])), "i2t": dict(zip(KEYS, [1, 2, 3, 4, 5]))}))
        runs.append(folder)
    frame = aggregate_runs(runs)
    row = frame.loc[("t2i", "R1")]
    assert row["mean"] == pytest.approx(72.0) and row["std"] == pytest.approx(2.0) and row["n"] == 3
    assert row["text"] == "72.00 ± 2.00"
    assert frame.loc[("i2t", "mAP")]["std"] == 0.0
    with pytest.raises(ValueError, match="has no t2i R1"):
        aggregate_runs([runs[0], {"t2i": {"R5": 1}, "i2t": {}}])
