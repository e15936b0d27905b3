"""Result tables and figures for the evaluation, comparison and leak-audit notebooks (20, 21, 40).

Everything here reads what ``fit`` / ``evaluate`` / ``leak_audit`` wrote (``metrics.json``, ``config.yaml``,
the workbook's ``pipeline.json``) or the dicts they return; nothing trains or encodes. Plot functions take
``ax=None`` (``fig=None`` for several panels), return the Figure and never call ``show()``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from irra_core.io_utils import read_json
from irra_core.viz.style import MODEL_COLORS, PANEL

METRICS = ("R1", "R5", "R10", "mAP", "mINP")
#: training folders a workbook run may hold, in display order
MODEL_FOLDERS = ("irra", "php", "php-batch-efp")


def metrics_frame(results: Mapping[Any, Mapping[str, Mapping[str, float]]], task: str = "t2i") -> pd.DataFrame:
    """One row per result (the mapping's keys; tuples become a MultiIndex), one column per metric."""
    rows = {key: {k: float(v[task][k]) for k in METRICS if k in v.get(task, {})} for key, v in results.items()}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    if all(isinstance(k, tuple) for k in results):
        frame.index = pd.MultiIndex.from_tuples(list(results))
    return frame[[m for m in METRICS if m in frame.columns]]


def selection_frame(trained: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """How each training run chose its reported checkpoint, from its ``metrics.json`` ``selection``.

    Args:
        trained: ``{model: training metrics.json}``.

    Returns:
        One row per model: ``selected`` (``best`` | ``last``), ``policy`` (in effect), ``requested``
        (``train.select_on``), ``split`` (where it selected; empty for ``last``), ``epoch`` and ``note`` (e.g.
        why a dataset without a validation split selected the last epoch).
    """
    rows = {}
    for model, metrics in trained.items():
        sel = metrics.get("selection") or {}
        policy = sel.get("policy")
        rows[model] = {"selected": "last" if policy == "last" or not metrics.get("best") else "best",
                       "policy": policy, "requested": sel.get("requested", policy), "split": sel.get("split") or "",
                       "epoch": sel.get("epoch"), "note": sel.get("note", "")}
    return pd.DataFrame.from_dict(rows, orient="index",
                                  columns=["selected", "policy", "requested", "split", "epoch", "note"])


def plot_metric_bars(results: Mapping[str, Mapping[str, Mapping[str, float]]], *, tasks: Sequence[str] = ("t2i", "i2t"),
                     fig: Figure | None = None) -> Figure:
    """Grouped bars: one panel per task, metrics on the x axis, one bar per result (e.g. ``"php / best"``).

    Args:
        results: ``{label: {"t2i": {R1..mINP}, "i2t": {...}}}``.
    """
    fig = fig or Figure(figsize=(6.0 * len(tasks), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(tasks)))
    labels = list(results)
    width = 0.8 / max(1, len(labels))
    for ax, task in zip(axes, tasks):
        frame = metrics_frame(results, task)
        x = np.arange(len(frame.columns))
        for i, label in enumerate(labels):
            model = str(label).split(" ")[0].split("/")[0]
            bars = ax.bar(x + (i - (len(labels) - 1) / 2) * width, frame.loc[label].to_numpy(), width, label=str(label),
                          color=MODEL_COLORS.get(model), alpha=1.0 if i % 2 == 0 else 0.6, edgecolor="white")
            ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=1)
        ax.set_xticks(x, frame.columns)
        ax.set(ylim=(0, 105), ylabel="%", title={"t2i": "Text to image", "i2t": "Image to text"}.get(task, task))
        ax.legend(fontsize=7, ncols=2)
    return fig


def _seed_of(folder: Path) -> int | None:
    try:
        return int(yaml.safe_load((folder / "config.yaml").read_text())["train"]["seed"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None


def collect_results(runs_root: str | Path, models: Sequence[str] = MODEL_FOLDERS) -> pd.DataFrame:
    """One row per trained model of every workbook run under ``runs_root`` that has a ``metrics.json``.

    Columns: ``run``, ``model``, ``preset``, ``dataset``, ``smoke``, ``seed``, ``selection`` (e.g. ``last @ 60``:
    the policy in effect and the selected epoch), ``path`` (the training folder) and ``t2i_R1`` ...
    ``i2t_mINP`` (the selected checkpoint's test metrics). Runs still training (no
    ``metrics.json``) are left out.
    """
    rows = []
    for run in sorted(p for p in Path(runs_root).glob("*") if p.is_dir()):
        state = read_json(run / "pipeline.json", "pipeline state") if (run / "pipeline.json").exists() else {}
        params = state.get("parameters", {})
        for model in models:
            folder = run / model
            if not (folder / "metrics.json").exists():
                continue
            metrics = read_json(folder / "metrics.json", "metrics")
            sel = metrics.get("selection") or {}
            row = {"run": run.name, "model": model, "preset": params.get("PRESET"), "dataset": params.get("DATASET"),
                   "smoke": params.get("SMOKE"), "seed": _seed_of(folder),
                   "selection": f"{sel.get('policy')} @ {sel.get('epoch')}" if sel else None, "path": str(folder)}
            row.update({f"{task}_{k}": metrics[task][k] for task in ("t2i", "i2t") for k in METRICS
                        if k in metrics.get(task, {})})
            rows.append(row)
    columns = ["run", "model", "preset", "dataset", "smoke", "seed", "selection", "path"] + [f"{t}_{k}" for t in ("t2i", "i2t")
                                                                                 for k in METRICS]
    return pd.DataFrame(rows, columns=columns)


def plot_model_comparison(summary: pd.DataFrame, metrics: Sequence[str] = ("t2i_R1", "t2i_mAP"),
                          ax: Axes | None = None) -> Figure:
    """Bars of each model's mean with ± std error bars over seeds, grouped by metric.

    Args:
        summary: one row per model (index) with columns ``<metric>_mean``, ``<metric>_std`` and ``n``.
    """
    if ax is None:
        fig = Figure(figsize=PANEL, layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    models = list(summary.index)
    width = 0.8 / max(1, len(models))
    x = np.arange(len(metrics))
    for i, model in enumerate(models):
        means = [summary.loc[model, f"{m}_mean"] for m in metrics]
        stds = [np.nan_to_num(summary.loc[model, f"{m}_std"]) for m in metrics]
        bars = ax.bar(x + (i - (len(models) - 1) / 2) * width, means, width, yerr=stds, capsize=3,
                      label=f"{model} (n={int(summary.loc[model, 'n'])})", color=MODEL_COLORS.get(model))
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set_xticks(x, [m.replace("_", " ") for m in metrics])
    ax.set(ylim=(0, 105), ylabel="% (mean ± std over seeds)", title="Models compared")
    ax.legend(fontsize=8)
    return fig


def seed_summary(table: pd.DataFrame, metrics: Sequence[str] = ("t2i_R1", "t2i_mAP", "i2t_R1", "i2t_mAP")) -> pd.DataFrame:
    """Mean, sample std and count of ``metrics`` per model over the rows of ``table`` (one row per seed)."""
    grouped = table.groupby("model", sort=False)[list(metrics)]
    out = pd.concat({"mean": grouped.mean(), "std": grouped.std(ddof=1)}, axis=1)
    out.columns = [f"{metric}_{stat}" for stat, metric in out.columns]
    out["n"] = grouped.size()
    order = [m for m in MODEL_FOLDERS if m in out.index] + [m for m in out.index if m not in MODEL_FOLDERS]
    return out.loc[order]


def plot_leak_audit(audits: Mapping[str, pd.DataFrame], metrics: Sequence[str] = ("t2i_R1", "t2i_mAP"), *,
                    batch_size: int | None = None, fig: Figure | None = None) -> Figure:
    """Per model and metric: no batch-mates (batch size 1), identity-ordered batches, shuffled batches.

    A batch-invariant model has three equal bars; a model whose embeddings see their batch-mates scores
    higher on identity-ordered batches (the batch-mates are mostly the same person) and drops when shuffled.

    Args:
        audits: ``{model: LeakAuditReport.to_dataframe()}`` (columns ``batch_size``, ``shuffled``, metrics).
        metrics: one panel each, e.g. ``t2i_R1``.
        batch_size: the batched setting shown (default: the smallest audited size above 1; a batch holding the
            whole split has the same batch-mates in any order).
    """
    fig = fig or Figure(figsize=(5.5 * len(metrics), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    settings = ("batch size 1", "identity-ordered batches", "shuffled batches")
    colors = ("#949494", "#d55e00", "#0173b2")
    width = 0.8 / len(settings)
    x = np.arange(len(audits))
    for ax, metric in zip(axes, metrics):
        for j, (setting, color) in enumerate(zip(settings, colors)):
            values = []
            for frame in audits.values():
                if j == 0:
                    rows = frame[frame["batch_size"] == 1]
                else:
                    size = batch_size or frame.loc[frame["batch_size"] > 1, "batch_size"].min()
                    rows = frame[(frame["batch_size"] == size) & (frame["shuffled"] == (j == 2))]
                values.append(float(rows[metric].iloc[0]) if len(rows) else np.nan)
            bars = ax.bar(x + (j - 1) * width, values, width, label=setting, color=color)
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
        ax.set_xticks(x, list(audits))
        ax.set(ylim=(0, 105), ylabel=f"{metric.replace('_', ' ')} (%)", title=f"{metric.replace('_', ' ')} by test batching")
        ax.legend(fontsize=8, loc="upper right")
    return fig


def plot_inflation_curve(curves: Mapping[str, pd.DataFrame], *, fig: Figure | None = None) -> Figure:
    """Identity-ordered minus shuffled t2i R1 (pp) against the identities a gallery batch holds.

    Args:
        curves: ``{model: irra_core.evaluation.audit.inflation_curve(...)}``; each point is one batch size
            (labelled), placed at the identity-ordered batches' mean identities per gallery batch; a band shows
            the paired 95% interval over identities where the frame has ``inflation_R1_low`` / ``_high``.
    """
    fig = fig or Figure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.add_subplot()
    for name, frame in curves.items():
        line, = ax.plot(frame["gallery_ids_per_batch"], frame["inflation_R1"], "o-", label=name)
        if {"inflation_R1_low", "inflation_R1_high"} <= set(frame.columns):
            ax.fill_between(frame["gallery_ids_per_batch"], frame["inflation_R1_low"], frame["inflation_R1_high"],
                            color=line.get_color(), alpha=0.15, linewidth=0, label=f"{name}: paired 95% interval")
        for _, row in frame.iterrows():
            ax.annotate(f"bs {int(row['batch_size'])}", (row["gallery_ids_per_batch"], row["inflation_R1"]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    ax.set_xscale("log")
    ticks = sorted({round(float(v), 1) for frame in curves.values() for v in frame["gallery_ids_per_batch"]})
    if ticks:  # plain numbers at the measured points instead of 3x10^0
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
    ax.set(xlabel="identities per identity-ordered gallery batch (log scale)",
           ylabel="t2i R1: ordered - shuffled (pp)", title="t2i R1 change from identity-ordered test batches")
    ax.legend(fontsize=8)
    return fig
