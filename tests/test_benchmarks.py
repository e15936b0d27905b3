"""The benchmark scripts run in their tiny (smoke) form and report sane, complete JSON.

Speed itself is never asserted (it is measured in benchmarks/, see benchmarks/README.md); these tests check
that every field exists and is consistent: step parts add up, FLOP counts agree with the analytic tower
count, the A/B comparison reports both variants, and gpu_check.sh's CPU dry run completes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import bench_bootstrap, bench_encode, bench_model, bench_train, common  # noqa: E402
from irra_core import losses  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread (two can thrash under load)."""
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("model", ["irra", "php"])
def test_bench_train_smoke_fields(model, capsys):
    summary = bench_train.main(["--config", "B", "--model", model, "--smoke", "--steps", "2", "--threads", "1"])
    assert _last_json(capsys) == json.loads(json.dumps(summary))
    for key in ("loadavg_1_5_15", "cpu_matmul_gflops_before", "cpu_matmul_gflops_after", "threads", "torch"):
        assert key in summary
    assert summary["threads"] == 1 and summary["cpu_matmul_gflops_before"] > 0
    (row,) = summary["results"]
    assert row["model"] == model and row["batch"] == 4 and row["optimizer_kernel"] == "fused"
    parts = row["data_s"] + row["forward_s"] + row["backward_s"] + row["optimizer_s"]
    assert row["step_s"] > 0 and parts <= row["step_s"] * 1.01 + 1e-4
    assert row["pairs_per_s"] == pytest.approx(row["batch"] / row["step_s"], rel=1e-3)
    assert row["peak_mem_MB"] >= 0
    assert row["reference_pairs_per_s"] is None and row["ratio_vs_reference"] is None  # smoke: no comparison
    assert row["mfu"] is None  # CPU: no bf16 peak
    flops = row["flops_per_pair"]
    assert flops["total"] == flops["matmul"] + flops["attention"] and flops["attention"] > 0
    # the heads add FLOPs beyond the two towers: the count is at least the analytic tower count
    assert row["gflops_per_pair"] >= 0.9 * row["analytic_tower_train_gflops_per_pair"] > 0
    expected_losses = {"irra": "sdm+mlm+id", "php": "sdm+itc+aux"}[model]
    assert row["loss_names"] == expected_losses


@pytest.mark.parametrize("text_conv", [0, 8])
def test_flop_count_matches_analytic_towers_for_config_s_shapes(text_conv):
    """Config S losses (sdm+itc) have almost no head FLOPs: counter and analytic formula agree closely (with a
    token convolution wide enough to matter at the smoke width, too)."""
    cfg = common.load_bench_config("S", "irra", smoke=True, extra={"model.text_conv": text_conv})
    from irra_core.model import build_model

    torch.manual_seed(0)
    model = build_model(cfg, num_classes=8)
    model.trim_text_padding = False  # full context, as the analytic count assumes
    model.prune_to_global_token = False  # every token of every block, as the analytic count assumes
    batch = common.synthetic_batch(cfg, 4)

    def step():
        sum(losses.total_loss(model(batch), batch, cfg.loss_weights()).values()).backward()

    counted = common.count_step_flops(step, model)["total"] / 4
    analytic = common.analytic_tower_flops(cfg, cfg.data.text_length)["train_towers"]
    assert counted == pytest.approx(analytic, rel=0.1)


def test_bench_train_compare_reports_both_variants(capsys):
    summary = bench_train.main(["--config", "S", "--smoke", "--steps", "1", "--threads", "1", "--compare", "prune",
                                "--rounds", "1"])
    capsys.readouterr()
    assert [r["prune"] for r in summary["results"]] == [False, True]
    compare = summary["compare"]
    assert compare["switch"] == "prune" and set(compare["median_pairs_per_s"]) == {"prune=False", "prune=True"}
    assert compare["speedup_second_over_first"] > 0


def test_bench_train_compares_row_sparse_embeddings(capsys):
    summary = bench_train.main(["--config", "php-cpu", "--model", "php", "--smoke", "--steps", "1", "--threads", "1",
                                "--compare", "sparse_embedding", "--rounds", "1", "--no-flops"])
    capsys.readouterr()
    assert [r["sparse_embedding"] for r in summary["results"]] == [False, True]  # the second row ran row-sparse
    assert set(summary["compare"]["median_pairs_per_s"]) == {"sparse_embedding=False", "sparse_embedding=True"}


def test_bench_train_json_file_and_reference_ratio(tmp_path, capsys, reference_dir):
    """Non-smoke rows compare with perf.json; checked here at S's config on a 1-step run with a tiny batch."""
    out = tmp_path / "train.json"
    row = bench_train.bench_train("S", "irra", steps=1, batch=2, threads=1, count_flops=False)
    reference = json.loads((reference_dir / "perf.json").read_text())["train"][0]["pairs_per_s"]
    assert row["reference_pairs_per_s"] == reference
    assert row["ratio_vs_reference"] == pytest.approx(row["pairs_per_s"] / reference, rel=1e-2)
    assert row["img_size"] == [192, 64] and row["text_length"] == 77 and row["loss_names"] == "sdm+itc"
    bench_train.main(["--config", "S", "--smoke", "--steps", "1", "--threads", "1", "--no-flops",
                      "--json", str(out)])
    capsys.readouterr()
    assert json.loads(out.read_text())["results"][0]["gflops_per_pair"] is None


def test_bench_encode_smoke_fields(capsys):
    summary = bench_encode.main(["--smoke", "--threads", "1", "--repeats", "1", "--only", "irra-cpu", "php-cpu", "S"])
    assert _last_json(capsys)["results"] == json.loads(json.dumps(summary["results"]))
    assert [r["case"] for r in summary["results"]] == ["irra-cpu", "php-cpu", "S"]
    for row in summary["results"]:
        assert row["images_per_s"] > 0 and row["captions_per_s"] > 0 and row["precision"] == "fp32"


def test_bench_encode_rejects_unknown_case():
    with pytest.raises(SystemExit):
        bench_encode.main(["--smoke", "--only", "nope"])


def test_bench_model_smoke_uses_shared_helpers(capsys):
    summary = bench_model.main(["--smoke", "--only", "irra-cpu", "--steps", "1", "--threads", "1", "--no-cuda"])
    capsys.readouterr()
    assert bench_model.synthetic_batch is common.synthetic_batch
    assert summary["results"][0]["train_pairs_per_s"] > 0


def test_bf16_peak_lookup():
    assert common.bf16_peak_tflops(torch.device("cpu")) is None
    assert dict(common.BF16_PEAK_TFLOPS)["H100"] == 989.0 and dict(common.BF16_PEAK_TFLOPS)["H200"] == 989.0


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "gpu_check: all steps passed" in proc.stdout
    produced = sorted(p.name for p in tmp_path.glob("*.json"))
    assert produced == ["encode_B.json", "train_irra_bf16.json", "train_irra_legacy_fp16.json",
                        "train_php_bf16.json", "train_php_legacy_fp16.json"]
    row = json.loads((tmp_path / "train_php_legacy_fp16.json").read_text())["results"][0]
    assert row["precision"] == "legacy_fp16" and row["device"] == "cpu" and row["pairs_per_s"] > 0
    assert "bf16 / legacy_fp16 throughput" in proc.stdout


def test_bench_train_set_overrides(capsys):
    summary = bench_train.main(["--config", "php-cpu", "--model", "php", "--smoke", "--steps", "1", "--threads", "1",
                                "--no-flops", "--set", "model.vision_width=48", "model.vision_heads=3"])
    capsys.readouterr()
    row = summary["results"][0]
    assert row["overrides"] == {"model.vision_width": 48, "model.vision_heads": 3}
    with pytest.raises(SystemExit):
        bench_train.main(["--smoke", "--set", "model.vision_width"])


def test_bench_train_compares_with_the_reference_style_step_in_one_process(capsys):
    summary = bench_train.main(["--config", "S", "--smoke", "--steps", "1", "--threads", "1", "--compare",
                                "reference", "--rounds", "1", "--no-flops"])
    capsys.readouterr()
    first, second = summary["results"]
    assert (first["impl"], second["impl"]) == ("reference_style", "ours")
    # the reference-style step runs the whole context with a for-loop optimiser; ours trims, prunes and fuses
    assert first["optimizer_kernel"] == "for-loop" and not first["trim"] and not first["prune"]
    assert second["optimizer_kernel"] == "fused" and second["trim"] and second["prune"]
    assert set(summary["compare"]["median_pairs_per_s"]) == {"impl=reference_style", "impl=ours"}
    with pytest.raises(ValueError, match="impl"):
        bench_train.bench_train("S", "irra", steps=1, smoke=True, impl="official", count_flops=False)


def test_attention_kernel_switch_routes_short_sequences_and_restores_the_dispatch(monkeypatch):
    from irra_core.model import fast

    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    q = torch.randn(1, 2, 5, 4)
    default = fast.CPU_EXPLICIT_ATTENTION_MAX_KEYS
    with bench_train.attention_kernel("sdpa"):
        fast.attend(q, q, q)
    assert len(calls) == 1 and fast.CPU_EXPLICIT_ATTENTION_MAX_KEYS == default
    with bench_train.attention_kernel("auto"):
        fast.attend(q, q, q)  # 5 keys: the explicit path
    assert len(calls) == 1
    with pytest.raises(ValueError, match="attention"), bench_train.attention_kernel("flash"):
        pass


def test_flop_count_includes_packed_attention_and_drops_with_pruning():
    cfg = common.load_bench_config("S", "irra", smoke=True)
    from irra_core.model import build_model

    torch.manual_seed(0)
    model = build_model(cfg, num_classes=8)
    batch = common.synthetic_batch(cfg, 4)

    def encode():
        model.encode_text(batch["caption_ids"])

    model.prune_to_global_token = True
    pruned = common.count_step_flops(encode, model, backward=False)
    model.prune_to_global_token = False
    full = common.count_step_flops(encode, model, backward=False)
    # smoke text tower: 1 layer, so the packed blocks are none; the pruned last block attends from 1 query
    assert 0 < pruned["attention"] < full["attention"] and pruned["matmul"] < full["matmul"]
    cfg2 = common.load_bench_config("S", "irra", smoke=True, extra={"model.text_layers": 2})
    model2 = build_model(cfg2, num_classes=8)
    model2.prune_to_global_token = True
    from irra_core.model import fast
    packed_attention = fast.attention_packed
    with common.attention_flop_counter(model2, backward=False) as counted:
        model2.encode_text(batch["caption_ids"])
    b, n = batch["caption_ids"].shape[0], int(batch["caption_ids"].argmax(1).max()) + 1
    width = cfg2.model.text_width
    assert counted[0] == 4 * b * n * n * width + 4 * b * 1 * n * width  # packed block + pruned last block
    assert fast.attention_packed is packed_attention  # unpatched again


def test_bench_bootstrap_smoke_fields(capsys):
    summary = bench_bootstrap.main(["--smoke", "--resamples", "50", "--threads", "1"])
    assert _last_json(capsys) == json.loads(json.dumps(summary))
    assert summary["num_queries"] == 240 and summary["num_gallery"] == 120 and summary["num_identities"] == 30
    cases = {row["case"]: row for row in summary["results"]}
    assert set(cases) == {"bootstrap identities", "bootstrap queries", "paired test"}
    for name in ("bootstrap identities", "bootstrap queries"):
        row = cases[name]
        assert row["seconds"] > 0 and row["resamples"] == 50 and row["R1_low"] <= row["R1"] <= row["R1_high"]
    assert 0 < cases["paired test"]["R1_p"] <= 1


def test_irra_relevance_maps_batch_the_words_without_mixing_them(tmp_path):
    """bench_irra_pointing.relevance_maps masks every attribute word of a caption in one batch; each word's
    row must equal the same rule computed for that word alone (one masked caption, one backward pass), rows
    of other tokens stay zero, and the model's attention recorders are restored."""
    from benchmarks import bench_irra_pointing
    from irra_core.config import load_config
    from irra_core.data import prepare_dataset
    from irra_core.data.tokenizer import MASK_ID
    from irra_core.model import build_model
    from irra_core.viz.attention import attribute_words
    from irra_core.viz.inspect import InspectRun, pointing_pairs

    torch.set_num_threads(1)
    cfg = load_config("irra-cpu", {"data.root": str(tmp_path)}, smoke=True)
    ds = prepare_dataset(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, ds.num_classes).eval()
    run = InspectRun(name="irra", model=model, split=ds.test, cfg=cfg, img_size=tuple(cfg.data.img_size),
                     text_length=cfg.data.text_length)
    samples = bench_irra_pointing.relevance_maps(run, 3, seed=0)
    assert model.cross_attn.recorder is None
    assert all(block.attn.recorder is None for block in model.cross_modal_transformer.resblocks)

    query, gallery = pointing_pairs(run, 3, seed=0)[0]
    maps, tokens, _ = samples[0]
    words = attribute_words(tokens)
    assert len(words) >= 2, "the check needs a caption with several attribute words"
    attribute_rows = {i for i, _, _ in words}
    assert all(float(maps[i].abs().sum()) == 0.0 for i in range(len(tokens)) if i not in attribute_rows)
    image = model.base_model.encode_image(run.model_images([gallery])).detach()
    ids = run.caption_ids([run.split["captions"][query]])
    layers = [model.cross_attn] + [block.attn for block in model.cross_modal_transformer.resblocks]
    for index, _, _ in words:
        masked = ids.clone()
        label = int(masked[0, index])
        masked[0, index] = MASK_ID
        recorded = []
        for layer in layers:
            layer.recorder = recorded.append
        try:
            hidden = model.cross_former(model.base_model.encode_text(masked).detach(), image)
            logit = model.mlm_head(hidden[0, index])[label]
            grads = torch.autograd.grad(logit, recorded)
        finally:
            for layer in layers:
                layer.recorder = None
        relevance = (grads[0] * recorded[0]).clamp_min(0).mean(1)[0]
        for grad, probs in zip(grads[1:], recorded[1:]):
            relevance = relevance + (grad * probs).clamp_min(0).mean(1)[0] @ relevance
        expected = relevance[index, 1:]
        assert float(expected.detach().sum()) > 0
        torch.testing.assert_close(maps[index], expected, rtol=1e-4, atol=1e-7)


def test_irra_pointing_refuses_a_missing_run_without_a_traceback(tmp_path, capsys):
    from benchmarks import bench_irra_pointing

    assert bench_irra_pointing.main(["--run", str(tmp_path / "missing"), "--threads", "1"]) == 2
    out = capsys.readouterr().out
    assert out.startswith("error: ") and "missing" in out and "Traceback" not in out
