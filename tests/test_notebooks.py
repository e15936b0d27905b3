"""Every numbered notebook, executed headless through the runner in smoke mode, in order, into one run folder.

Each test runs its notebook (and any earlier one not finished yet: later notebooks read what earlier ones
wrote) with ``SMOKE=True`` and ``INTERACTIVE=False``, then checks the files it wrote: figures saved as PNG
*and* shown in the executed copy, JSON reports, metrics in range. The synthetic smoke set is generated once,
into a temporary data root; the run folder is the session's ``smoke`` fixture (conftest), which the browser
tests reuse.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
from PIL import Image

from irra_core.pipeline import NOTEBOOK_GLOB, run_pipeline

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob(NOTEBOOK_GLOB))
METRIC_KEYS = {"R1", "R5", "R10", "mAP", "mINP"}

#: what each notebook must leave in the run folder: files (relative paths) and figures (stems under figures/)
EXPECTED: dict[str, dict[str, list[str]]] = {
    "00_environment_check": {"files": ["environment.json"], "figures": []},
    "01_prepare_data": {"files": ["data_report.json"], "figures": ["01_split_sizes"]},
    "02_explore_data": {"files": ["data_summary.json"],
                        "figures": ["02_samples", "02_caption_lengths", "02_images_per_identity",
                                    "02_captions_per_identity", "02_attributes", "02_top_words"]},
    "10_train_irra": {"files": ["irra/config.yaml", "irra/log.jsonl", "irra/metrics.json", "irra/checkpoints/best.pt"],
                      "figures": ["10_sdm_targets_irra", "10_steps_irra", "10_curves_irra"]},
    "11_train_php": {"files": ["php/config.yaml", "php/log.jsonl", "php/metrics.json", "php/checkpoints/best.pt"],
                     "figures": ["11_sdm_targets_php", "11_steps_php", "11_curves_php"]},
    "20_evaluate": {"files": ["metrics.json", "irra/eval/best_test/queries.csv", "php/eval/last_test/queries.csv",
                              "rescoring.json"],
                    "figures": ["20_metrics", "20_intervals", "20_slices", "20_rescoring"]},
    "21_compare_runs": {"files": ["comparison.csv", "paired.csv"], "figures": ["21_compare", "21_paired"]},
    "30_retrieval_gallery": {"files": [], "figures": ["30_topk_irra", "30_topk_php", "30_worst_irra", "30_worst_php",
                                                      "30_free_text_irra", "30_free_text_php", "30_first_hit_irra",
                                                      "30_explorer"]},
    "31_attention_maps": {"files": [], "figures": ["31_rollout_irra", "31_rollout_php", "31_text_to_patch_irra",
                                                   "31_crfm_php"]},
    "32_expert_routing": {"files": [], "figures": ["32_expert_load", "32_routing_entropy", "32_patch_experts",
                                                   "32_word_experts", "32_aux_vs_floor", "32_routing_drift",
                                                   "32_aux_over_training", "32_explorer"]},
    "33_search_your_photos": {"files": ["search/results.csv", "search/unreadable.csv"], "figures": ["33_search"]},
    "40_leak_audit": {"files": ["leak_audit.json", "php-batch-efp/metrics.json", "paired_leak.csv"],
                      "figures": ["40_leak_audit", "40_paired"]},
}


def execute_through(notebook: Path, smoke) -> dict:
    """Run ``notebook`` and every earlier notebook not finished yet; return the run's pipeline state."""
    return smoke.execute_through(notebook.stem, NOTEBOOKS)


def assert_png(path: Path) -> None:
    assert path.exists(), f"{path.name} was not written"
    with Image.open(path) as image:
        assert image.size[0] > 200 and image.size[1] > 100, f"{path.name} is only {image.size}"
        assert len(np.unique(np.asarray(image.convert("L")))) > 20, f"{path.name} looks blank"


def assert_metrics(metrics: dict, where: str) -> None:
    for task in ("t2i", "i2t"):
        values = metrics[task]
        assert set(values) >= METRIC_KEYS, f"{where}: {task} lacks {METRIC_KEYS - set(values)}"
        assert all(0.0 <= values[k] <= 100.0 for k in METRIC_KEYS), f"{where}: {task} outside [0, 100]: {values}"
        assert values["R1"] <= values["R5"] <= values["R10"], f"{where}: {task} recalls not monotone: {values}"


@pytest.mark.notebooks
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(notebook, smoke):
    state = execute_through(notebook, smoke)
    name = notebook.stem
    assert state["notebooks"][name]["status"] == "done"
    assert state["parameters"]["SMOKE"] is True
    executed = nbformat.read(smoke.run_dir / "notebooks" / notebook.name, as_version=4)
    assert executed.metadata.papermill.parameters["INTERACTIVE"] is False
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    shown = sum("image/png" in o.get("data", {}) for o in outputs)

    expected = EXPECTED.get(name, {"files": [], "figures": []})
    for relative in expected["files"]:
        assert (smoke.run_dir / relative).exists(), f"{name} did not write {relative}"
    figures = expected["figures"] or [p.stem for p in (smoke.run_dir / "figures").glob(f"{name[:2]}_*.png")]
    for stem in figures:
        assert_png(smoke.run_dir / "figures" / f"{stem}.png")
    assert shown >= len(figures), f"{name}: {len(figures)} figures saved but only {shown} shown in the notebook"
    CHECKS.get(name, lambda run_dir: None)(smoke.run_dir)


def check_environment(run_dir: Path) -> None:
    report = json.loads((run_dir / "environment.json").read_text())
    assert report["parameters"]["SMOKE"] is True
    assert all(row["ok"] for row in report["checks"]), [r for r in report["checks"] if not r["ok"]]


def check_prepare(run_dir: Path) -> None:
    report = json.loads((run_dir / "data_report.json").read_text())
    assert report["ok"] and not report["errors"]
    assert set(report["stats"]["splits"]) == {"train", "val", "test"}


def check_explore(run_dir: Path) -> None:
    summary = json.loads((run_dir / "data_summary.json").read_text())
    assert 0.0 <= summary["truncation_rate"] <= 1.0
    assert summary["splits"]["test"]["ids"] > 0 and summary["text_length"] > 0


def check_training(model: str):
    def check(run_dir: Path) -> None:
        metrics = json.loads((run_dir / model / "metrics.json").read_text())
        assert_metrics(metrics, f"{model}/metrics.json")
        assert metrics["last"]["epoch"] >= 1
    return check


def check_train_php(run_dir: Path) -> None:
    check_training("php")(run_dir)
    executed = nbformat.read(run_dir / "notebooks" / "11_train_php.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    if "in a second process" in text:  # a CPU kernel with >= 2 threads: notebook 40's model trained alongside
        summary = r"php-batch-efp: trained alongside in \d+ s on \d+ thread\(s\)\n  epoch 1 done: "
        assert re.search(summary, text), text[-2000:]
        assert_metrics(json.loads((run_dir / "php-batch-efp" / "metrics.json").read_text()), "php-batch-efp")
    else:
        assert "php-batch-efp: not trained alongside" in text, text[-2000:]
        assert not (run_dir / "php-batch-efp").exists()


def check_evaluate(run_dir: Path) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert_metrics(metrics, "run metrics.json")
    assert set(metrics["models"]) >= {"irra", "php"}
    for model, values in metrics["models"].items():
        assert_metrics(values["best"], f"{model} best")
        assert_metrics(values["last"], f"{model} last")
    # the headline is PHP's selected checkpoint
    assert metrics["t2i"] == metrics["models"]["php"][metrics["models"]["php"]["selected"]]["t2i"]
    # identity-bootstrap intervals next to every point estimate, with their settings
    assert metrics["bootstrap"]["n_resamples"] == 1000 and metrics["bootstrap"]["unit"] == "identity"
    for values in [metrics] + [m[w] for m in metrics["models"].values() for w in ("best", "last")]:
        for task in ("t2i", "i2t"):
            assert all(values["ci"][task][k][0] <= values[task][k] <= values["ci"][task][k][1] for k in METRIC_KEYS)
    rescoring = json.loads((run_dir / "rescoring.json").read_text())
    assert [row["method"] for row in rescoring["table"]] == ["none", "qb_norm", "inverted_softmax", "dual_softmax",
                                                              "k_reciprocal"]
    assert all(row["label_matches"] for row in rescoring["audit"])


def check_compare(run_dir: Path) -> None:
    import pandas as pd

    paired = pd.read_csv(run_dir / "paired.csv")
    assert {("irra", "php", "R1"), ("irra", "php", "mAP")} <= set(zip(paired["A"], paired["B"], paired["metric"]))
    assert ((paired["low"] <= paired["diff"]) & (paired["diff"] <= paired["high"])).all()
    assert ((paired["p_value"] > 0) & (paired["p_value"] <= 1)).all()


def check_leak_audit(run_dir: Path) -> None:
    audit = json.loads((run_dir / "leak_audit.json").read_text())
    assert audit["php-batch-efp"]["flagged"] is True, "batch-axis EFP must show batch dependence"
    assert audit["php"]["flagged"] is False, "per-sample EFP must be batch-invariant"
    per_sample = {r["metric"]: r for r in audit["php"]["ordered_minus_shuffled"]}
    assert per_sample["R1"]["diff"] == 0 and per_sample["R1"]["p_value"] == 1.0
    batch = {r["metric"]: r for r in audit["php-batch-efp"]["ordered_minus_shuffled"]}
    assert all(r["low"] <= r["diff"] <= r["high"] for r in batch.values())
    import pandas as pd

    paired = pd.read_csv(run_dir / "paired_leak.csv")
    assert {("irra", "php"), ("irra", "php-batch-efp"), ("php", "php-batch-efp")} <= set(zip(paired["A"], paired["B"]))


def check_search(run_dir: Path) -> None:
    import pandas as pd

    table = pd.read_csv(run_dir / "search" / "results.csv")
    assert table["query"].nunique() == 2 and (table.groupby("query")["rank"].max() == 5).all()
    assert table.groupby("query")["score"].apply(lambda s: s.is_monotonic_decreasing).all()


CHECKS = {"00_environment_check": check_environment, "01_prepare_data": check_prepare,
          "02_explore_data": check_explore, "10_train_irra": check_training("irra"),
          "11_train_php": check_train_php, "20_evaluate": check_evaluate, "21_compare_runs": check_compare,
          "33_search_your_photos": check_search,
          "40_leak_audit": check_leak_audit}


@pytest.mark.notebooks
@pytest.mark.slow
def test_pipeline_on_a_released_irra_checkpoint(reference_dir, tmp_path):
    """``pipeline --checkpoint``: IRRA's released layout (configs.yaml + best.pth) evaluated and inspected on a
    synthetic smoke set without training: notebooks 20, 30, 31, 33."""
    result = run_pipeline(checkpoint=reference_dir / "irra_tiny", smoke=True, data_root=tmp_path / "data",
                          runs_dir=tmp_path / "runs", run_name="ckpt", stream=False, cell_timeout=600)
    assert [r.name for r in result.notebooks] == ["20_evaluate", "30_retrieval_gallery", "31_attention_maps",
                                                  "33_search_your_photos"]
    assert result.ok
    run_dir = tmp_path / "runs" / "ckpt"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["models"]["irra"]["selected"] == "checkpoint" and metrics["headline"] == "irra (checkpoint)"
    assert_metrics(metrics, "checkpoint metrics.json")
    assert (run_dir / "checkpoint" / "eval" / "checkpoint_test" / "queries.csv").exists()
    assert not (run_dir / "irra").exists()  # nothing trained
    for stem in ("20_metrics", "30_topk_irra", "31_rollout_irra", "31_text_to_patch_irra", "33_search"):
        assert_png(run_dir / "figures" / f"{stem}.png")
    state = json.loads((run_dir / "pipeline.json").read_text())
    assert state["extra_parameters"]["CHECKPOINT_PATH"] == str((reference_dir / "irra_tiny").resolve())
