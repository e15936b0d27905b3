"""Figures and styled tables for intervals, paired comparisons, slices, re-scoring and the transfer matrix
(notebooks 20, 21 and the transfer notebook). They read the DataFrames of ``irra_core.evaluation``'s
``bootstrap``, ``compare``, ``slices``, ``rescoring`` and ``transfer`` modules; nothing here computes a metric.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from irra_core.viz.style import MODEL_COLORS, PANEL

WORST_COLOR = "#d55e00"
NEUTRAL_COLOR = "#0173b2"


def plot_intervals(records: Mapping, metrics: Sequence[str] = ("R1", "mAP"), task: str = "t2i",
                   fig: Figure | None = None) -> Figure:
    """Point estimate and 95% interval of each evaluation, one panel per metric.

    Args:
        records: ``{(model, checkpoint): metrics.json record}`` with ``"ci"``
            (:func:`irra_core.evaluation.compare.load_eval_records`).
    """
    fig = fig or Figure(figsize=(4.2 * len(metrics), 0.45 * len(records) + 1.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(metrics), sharey=True))
    labels = [" / ".join(map(str, k)) if isinstance(k, tuple) else str(k) for k in records]
    y = np.arange(len(records))[::-1]
    for ax, metric in zip(axes, metrics):
        for yi, (key, record) in zip(y, records.items()):
            value = record[task][metric]
            low, high = (record.get("ci") or {}).get(task, {}).get(metric, (value, value))
            model = key[0] if isinstance(key, tuple) else str(key)
            ax.errorbar(value, yi, xerr=[[value - low], [high - value]], fmt="o", capsize=3,
                        color=MODEL_COLORS.get(model, NEUTRAL_COLOR))
        ax.set_yticks(y, labels)
        ax.set(xlabel=f"{task} {metric} (%)", title=f"{metric}: 95% interval over identities")
    return fig


def style_slices(frame: pd.DataFrame, metrics: Sequence[str] = ("R1", "mAP", "mINP")):
    """The slice table (:func:`irra_core.evaluation.slices.slice_metrics`) as a Styler: ``"R1 [low, high]"``
    cells, the worst slice's row highlighted."""
    shown = frame[["family", "slice", "queries", "identities"]].copy()
    for metric in metrics:
        shown[metric] = [f"{v:.1f} [{lo:.1f}, {hi:.1f}]" for v, lo, hi in
                         zip(frame[metric], frame[f"{metric}_low"], frame[f"{metric}_high"])]
    shown["worst"] = frame["worst"].map({True: "worst", False: ""})
    color = f"background-color: {WORST_COLOR}; color: white"
    return shown.style.apply(lambda row: [color if row["worst"] else "" for _ in row], axis=1).hide(axis="index")


def plot_slices(frame: pd.DataFrame, metric: str = "R1", ax: Axes | None = None) -> Figure:
    """Horizontal bars of ``metric`` per slice with 95% intervals, grouped by family; the worst slice in
    orange and the overall value as a dashed line."""
    rows = frame[frame["family"] != "all"].reset_index(drop=True)
    if ax is None:
        fig = Figure(figsize=(7.5, 0.28 * len(rows) + 1.5), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    y = np.arange(len(rows))[::-1]
    colors = [WORST_COLOR if w else NEUTRAL_COLOR for w in rows["worst"]]
    ax.barh(y, rows[metric], color=colors, alpha=0.85)
    ax.errorbar(rows[metric], y, xerr=[rows[metric] - rows[f"{metric}_low"], rows[f"{metric}_high"] - rows[metric]],
                fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
    ax.set_yticks(y, [f"{f}: {s} (n={n})" for f, s, n in zip(rows["family"], rows["slice"], rows["queries"])],
                  fontsize=7)
    overall = frame.loc[frame["family"] == "all", metric]
    if len(overall):
        ax.axvline(float(overall.iloc[0]), color="grey", linestyle="--", linewidth=1, label="all queries")
        ax.legend(fontsize=7, loc="lower right")
    ax.set(xlabel=f"t2i {metric} (%), 95% interval over identities", title=f"{metric} by slice (worst in orange)")
    return fig


def plot_differences(table: pd.DataFrame, label_columns: Sequence[str] = ("A", "B"), ax: Axes | None = None) -> Figure:
    """Forest plot of paired differences: ``diff`` with ``low``/``high`` per row, a zero line, p-values.

    Args:
        table: rows with ``diff``, ``low``, ``high``, ``p_value``, ``metric`` and the ``label_columns``
            (:func:`irra_core.evaluation.compare.paired_model_table`).
    """
    if ax is None:
        fig = Figure(figsize=(PANEL[0] + 1, 0.4 * len(table) + 1.4), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    y = np.arange(len(table))[::-1]
    labels = [" vs ".join(str(row[c]) for c in label_columns) + f" ({row['metric']})" for _, row in table.iterrows()]
    for yi, (_, row) in zip(y, table.iterrows()):
        color = WORST_COLOR if row["low"] > 0 or row["high"] < 0 else NEUTRAL_COLOR
        ax.errorbar(row["diff"], yi, xerr=[[row["diff"] - row["low"]], [row["high"] - row["diff"]]], fmt="o",
                    capsize=3, color=color)
        ax.annotate(f"p={row['p_value']:.3g}", (row["high"], yi), xytext=(4, -3), textcoords="offset points",
                    fontsize=7)
    ax.axvline(0.0, color="grey", linewidth=1)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set(xlabel="difference (pp), 95% interval over identities", title="Paired differences (orange: interval excludes 0)")
    return fig


def plot_transfer(matrix: pd.DataFrame, metric: str = "R1", ax: Axes | None = None) -> Figure:
    """Heat map of a transfer matrix (rows: trained on, columns: evaluated on) with the in-domain diagonal
    framed.

    Args:
        matrix: square-or-not DataFrame of percents; a cell is in-domain when its row and column labels match.
    """
    import seaborn as sns

    if ax is None:
        fig = Figure(figsize=(1.6 * len(matrix.columns) + 2.5, 1.1 * len(matrix) + 1.5), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    sns.heatmap(matrix.astype(float), annot=True, fmt=".1f", cmap="viridis", ax=ax, cbar_kws={"label": f"{metric} (%)"})
    for i, source in enumerate(matrix.index):
        for j, target in enumerate(matrix.columns):
            if source == target:
                ax.add_patch(Rectangle((j, i), 1, 1, fill=False, edgecolor=WORST_COLOR, linewidth=3))
    ax.set(xlabel="evaluated on (test split)", ylabel="trained on",
           title=f"Transfer: t2i {metric} (framed: in-domain)")
    return fig


def format_rescoring(table: pd.DataFrame, metrics: Sequence[str] = ("R1", "R5", "mAP", "mINP")) -> pd.DataFrame:
    """The re-scoring table (:func:`irra_core.evaluation.rescoring.rescoring_table`) as text: ``transductive``,
    each metric ``"v [low, high]"`` and the paired differences to plain cosine ``"+1.2 [0.3, 2.0] p=0.01"``."""
    out = pd.DataFrame(index=table.index)
    out["transductive"] = table["transductive"].map({True: "yes", False: "no"})
    for metric in metrics:
        out[metric] = [f"{v:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" for v, ci in zip(table[metric], table[f"{metric}_ci"])]
    for metric in ("R1", "mAP"):
        out[f"Δ{metric} vs none"] = [f"{d:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}] p={p:.3g}" for d, ci, p in
                                     zip(table[f"d{metric}"], table[f"d{metric}_ci"], table[f"p_{metric}"])]
    out["uses"] = table["uses"]
    return out


def rescoring_differences(table: pd.DataFrame, metrics: Sequence[str] = ("R1", "mAP")) -> pd.DataFrame:
    """The re-scoring table's paired differences to plain cosine in :func:`plot_differences`'s layout
    (``A`` = method, with ``(transductive)`` appended where it reads other test queries; ``B`` = ``none``)."""
    rows = []
    for method, row in table.drop(index="none", errors="ignore").iterrows():
        label = f"{method} (transductive)" if row["transductive"] else method
        for metric in metrics:
            low, high = row[f"d{metric}_ci"]
            rows.append({"A": label, "B": "none", "metric": metric, "diff": row[f"d{metric}"], "low": low,
                         "high": high, "p_value": row[f"p_{metric}"]})
    return pd.DataFrame(rows, columns=["A", "B", "metric", "diff", "low", "high", "p_value"])
