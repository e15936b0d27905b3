"""Result tables and figures of notebooks 20, 21 and 40, on hand-made metrics and run folders."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from irra_core.viz import results


def metrics(r1: float, map_: float = 50.0) -> dict:
    values = {"R1": r1, "R5": min(100.0, r1 + 10), "R10": min(100.0, r1 + 20), "mAP": map_, "mINP": map_ / 2}
    return {"t2i": dict(values), "i2t": {k: v / 2 for k, v in values.items()}}


def test_metrics_frame_rows_per_result():
    frame = results.metrics_frame({("php", "best"): metrics(60), ("php", "last"): metrics(55)}, "i2t")
    assert list(frame.columns) == ["R1", "R5", "R10", "mAP", "mINP"]
    assert frame.loc[("php", "last"), "R1"] == 27.5 and isinstance(frame.index, pd.MultiIndex)


def test_plot_metric_bars_one_bar_per_result_and_metric():
    fig = results.plot_metric_bars({"irra / best": metrics(40), "php / best": metrics(60)})
    t2i, i2t = fig.axes
    heights = [p.get_height() for p in t2i.patches]
    assert len(heights) == 10 and heights[:5] == [40, 50, 60, 50, 25] and heights[5] == 60
    assert i2t.get_title() == "Image to text"


def write_run(root, name, seed, r1s, params):
    run = root / name
    for model, r1 in r1s.items():
        (run / model).mkdir(parents=True)
        (run / model / "metrics.json").write_text(json.dumps(metrics(r1)))
        (run / model / "config.yaml").write_text(f"train:\n  seed: {seed}\n")
    (run / "pipeline.json").write_text(json.dumps({"parameters": params}))


def test_collect_results_and_seed_summary(tmp_path):
    params = {"PRESET": "cpu", "DATASET": "synthetic", "SMOKE": False}
    write_run(tmp_path, "a", 1, {"irra": 40.0, "php": 50.0}, params)
    write_run(tmp_path, "b", 2, {"irra": 44.0, "php": 54.0}, params)
    (tmp_path / "c" / "php").mkdir(parents=True)  # still training: no metrics.json
    table = results.collect_results(tmp_path)
    assert list(zip(table["run"], table["model"], table["seed"])) == [("a", "irra", 1), ("a", "php", 1),
                                                                      ("b", "irra", 2), ("b", "php", 2)]
    assert table["preset"].unique().tolist() == ["cpu"]
    summary = results.seed_summary(table)
    assert summary.loc["php", "t2i_R1_mean"] == pytest.approx(52.0)
    assert summary.loc["php", "t2i_R1_std"] == pytest.approx(np.std([50, 54], ddof=1))
    assert summary.loc["irra", "n"] == 2
    fig = results.plot_model_comparison(summary, ("t2i_R1",))
    assert [p.get_height() for p in fig.axes[0].patches] == pytest.approx([42.0, 52.0])


def test_plot_leak_audit_picks_batch_size_one_ordered_and_shuffled():
    frame = pd.DataFrame({"batch_size": [1, 16, 64, 16, 64], "shuffled": [False, False, False, True, True],
                          "t2i_R1": [30.0, 45.0, 50.0, 31.0, 32.0], "t2i_mAP": [20.0, 25.0, 26.0, 21.0, 22.0]})
    fig = results.plot_leak_audit({"php-batch-efp": frame}, ("t2i_R1",))
    assert [p.get_height() for p in fig.axes[0].patches] == [30.0, 45.0, 31.0]  # smallest batched size: 16
    fig = results.plot_leak_audit({"php-batch-efp": frame}, ("t2i_R1", "t2i_mAP"), batch_size=64)
    assert [p.get_height() for p in fig.axes[1].patches] == [20.0, 26.0, 22.0]


def test_plot_inflation_curve_draws_the_paired_interval_band():
    curve = pd.DataFrame({"batch_size": [32, 64, 512], "gallery_ids_per_batch": [2.4, 3.9, 20.5],
                          "inflation_R1": [4.0, 3.0, -3.0], "inflation_R1_low": [1.0, -0.5, -7.0],
                          "inflation_R1_high": [7.0, 6.5, 1.0]})
    ax = results.plot_inflation_curve({"php-batch-efp": curve}).axes[0]
    line = ax.get_lines()[0]
    assert list(line.get_ydata()) == [4.0, 3.0, -3.0]
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(-7.0) and band[:, 1].max() == pytest.approx(7.0)
    no_band = results.plot_inflation_curve({"m": curve.drop(columns=["inflation_R1_low", "inflation_R1_high"])})
    assert not no_band.axes[0].collections
    # the log axis is labelled with the measured identities per batch as plain numbers
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2.4", "3.9", "20.5"]
