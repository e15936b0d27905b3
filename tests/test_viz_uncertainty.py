"""Figures and styled tables of intervals, slices, paired differences, re-scoring and transfer."""
from __future__ import annotations

import numpy as np
import pandas as pd

from irra_core.viz.uncertainty import (
    format_rescoring,
    plot_differences,
    plot_intervals,
    plot_slices,
    plot_transfer,
    rescoring_differences,
    style_slices,
)


def _slices():
    return pd.DataFrame({"family": ["all", "colour", "colour"], "slice": ["all queries", "red", "blue"],
                         "queries": [40, 20, 20], "identities": [10, 5, 5], "R1": [50.0, 60.0, 40.0],
                         "R1_low": [40.0, 45.0, 20.0], "R1_high": [60.0, 75.0, 55.0], "mAP": [30.0, 35, 25],
                         "mAP_low": [25.0, 28, 15], "mAP_high": [35.0, 42, 33], "mINP": [20.0, 22, 18],
                         "mINP_low": [15.0, 16, 10], "mINP_high": [25.0, 28, 24], "worst": [False, False, True]})


def test_slice_figure_and_styler_mark_the_worst():
    fig = plot_slices(_slices())
    bars = fig.axes[0].patches
    assert len(bars) == 2 and bars[1].get_facecolor() != bars[0].get_facecolor()
    html = style_slices(_slices()).to_html()
    style = html.split("</style>")[0]
    assert "background-color: #d55e00" in style and "40.0 [20.0, 55.0]" in html
    assert "row2_col0" in style and "row1_col0" not in style and "row0_col0" not in style  # only the worst row


def test_interval_and_difference_figures():
    record = {"t2i": {"R1": 10.0, "mAP": 20.0}, "ci": {"t2i": {"R1": [5.0, 15.0], "mAP": [18.0, 22.0]}}}
    fig = plot_intervals({("irra", "best"): record, ("php", "best"): record})
    ticks = {t.get_text(): t.get_position()[1] for t in fig.axes[0].get_yticklabels()}
    assert len(fig.axes) == 2 and ticks["irra / best"] > ticks["php / best"]  # first record on top
    table = pd.DataFrame({"A": ["irra"], "B": ["php"], "metric": ["R1"], "diff": [-3.0], "low": [-5.0],
                          "high": [-1.0], "p_value": [0.01]})
    fig = plot_differences(table)
    assert "p=0.01" in [t.get_text() for t in fig.axes[0].texts]


def test_rescoring_views():
    table = pd.DataFrame({"transductive": [False, True], "uses": ["own row", "all test queries"],
                          "R1": [10.0, 12.0], "R1_ci": [[8.0, 12.0], [9.0, 15.0]], "R5": [20.0, 21.0],
                          "R5_ci": [[18, 22], [19, 23]], "mAP": [5.0, 6.0], "mAP_ci": [[4, 6], [5, 7]],
                          "mINP": [1.0, 1.5], "mINP_ci": [[0.5, 1.5], [1, 2]], "dR1": [0.0, 2.0],
                          "dR1_ci": [[0.0, 0.0], [0.5, 3.5]], "p_R1": [1.0, 0.02], "dmAP": [0.0, 1.0],
                          "dmAP_ci": [[0.0, 0.0], [-0.5, 2.0]], "p_mAP": [1.0, 0.3]},
                         index=pd.Index(["none", "dual_softmax"], name="method"))
    text = format_rescoring(table)
    assert text.loc["dual_softmax", "transductive"] == "yes"
    assert text.loc["dual_softmax", "ΔR1 vs none"] == "+2.00 [+0.50, +3.50] p=0.02"
    diffs = rescoring_differences(table)
    assert list(diffs["A"]) == ["dual_softmax (transductive)"] * 2 and list(diffs["metric"]) == ["R1", "mAP"]


def test_transfer_heat_map_frames_the_diagonal():
    matrix = pd.DataFrame(np.array([[50.0, 20.0], [10.0, 45.0]]), index=["A", "B"], columns=["A", "B"])
    fig = plot_transfer(matrix)
    frames = [p for p in fig.axes[0].patches if not p.get_fill()]
    assert sorted((p.get_x(), p.get_y()) for p in frames) == [(0, 0), (1, 1)]
