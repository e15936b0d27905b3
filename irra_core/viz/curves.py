"""Training curves: live during ``fit`` (a callback) and final ones from a run's ``log.jsonl``.

:class:`LiveCurves` is an engine callback (``fit(cfg, run_dir, callbacks=[LiveCurves(INTERACTIVE)])``). It
records every optimiser step's losses and every epoch's evaluation; with ``interactive=True`` (JupyterLab)
it redraws one figure in place as training goes, headless it only records, so an executed notebook is not
flooded with figures (papermill keeps every display). :func:`plot_training_curves` draws the epoch log
that ``fit`` writes, which is also what a resumed or finished run has on disk.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from irra_core.io_utils import read_jsonl

#: scalar outputs shown as losses / accuracies (engine outputs and log.jsonl keys)
LOSS_SUFFIX = "_loss"
ACC_SUFFIX = "_acc"


def log_frame(log: str | Path | Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per epoch of a training log (``log.jsonl`` path, its run folder, or its records).

    Columns: ``epoch``, ``step``, ``lr``, ``loss`` and every ``*_loss`` / ``*_acc`` the run logged, plus
    ``eval_split`` and ``t2i_R1`` ... ``i2t_mINP`` for the epochs that were evaluated (NaN otherwise).
    """
    if isinstance(log, (str, Path)):
        path = Path(log)
        records = read_jsonl(path / "log.jsonl" if path.is_dir() else path)
    else:
        records = list(log)
    rows = []
    for record in records:
        row = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        evaluation = record.get("eval") or {}
        if evaluation:
            row["eval_split"] = evaluation.get("split")
            for task in ("t2i", "i2t"):
                for key, value in (evaluation.get(task) or {}).items():
                    row[f"{task}_{key}"] = value
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise ValueError("the training log is empty: has the run finished an epoch?")
    return frame.sort_values("epoch").reset_index(drop=True)


def _loss_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.endswith(LOSS_SUFFIX)]


def plot_training_curves(log: str | Path | Sequence[Mapping[str, Any]] | pd.DataFrame, *, title: str = "",
                         fig: Figure | None = None) -> Figure:
    """Three panels over epochs: each loss term (and the total), retrieval on the selection split
    (t2i R1 and mAP, the best epoch marked), and the learning rate.

    Args:
        log: a run folder, its ``log.jsonl``, the records, or :func:`log_frame`'s table.
        title: figure title (e.g. the model's name).
        fig: an empty Figure to draw into.
    """
    frame = log if isinstance(log, pd.DataFrame) else log_frame(log)
    fig = fig or Figure(figsize=(13.0, 3.6), layout="constrained")
    ax_loss, ax_eval, ax_lr = fig.subplots(1, 3)
    for column in _loss_columns(frame):
        ax_loss.plot(frame["epoch"], frame[column], marker="o", markersize=3, label=column.removesuffix(LOSS_SUFFIX))
    if "loss" in frame:
        ax_loss.plot(frame["epoch"], frame["loss"], color="black", linewidth=2, marker="s", markersize=4, label="total")
    ax_loss.set(xlabel="epoch", ylabel="mean loss over the epoch", title="Loss terms")
    ax_loss.legend(fontsize=8)
    if "t2i_R1" in frame and frame["t2i_R1"].notna().any():
        evaluated = frame[frame["t2i_R1"].notna()]
        split = evaluated["eval_split"].iloc[-1] if "eval_split" in evaluated else "val"
        for column, label in (("t2i_R1", "t2i R1"), ("t2i_mAP", "t2i mAP"), ("i2t_R1", "i2t R1")):
            if column in evaluated:
                ax_eval.plot(evaluated["epoch"], evaluated[column], marker="o", markersize=3, label=label)
        best = evaluated.loc[evaluated["t2i_R1"].idxmax()]
        ax_eval.axvline(best["epoch"], color="grey", linestyle=":", linewidth=1)
        ax_eval.annotate(f"best t2i R1 {best['t2i_R1']:.1f}\n(epoch {int(best['epoch'])})",
                         (best["epoch"], best["t2i_R1"]), textcoords="offset points", xytext=(4, -24), fontsize=8)
        ax_eval.set(xlabel="epoch", ylabel="%", title=f"Retrieval on the {split} split", ylim=(0, 100))
        ax_eval.legend(fontsize=8)
    else:
        ax_eval.text(0.5, 0.5, "no evaluation logged", ha="center", va="center", transform=ax_eval.transAxes)
        ax_eval.set_axis_off()
    if "lr" in frame:
        ax_lr.plot(frame["epoch"], frame["lr"], marker="o", markersize=3, color="tab:purple")
        ax_lr.set(xlabel="epoch", ylabel="learning rate (first group)", title="Schedule")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for ax in (ax_loss, ax_eval, ax_lr):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    return fig


def plot_step_losses(steps: pd.DataFrame | Sequence[Mapping[str, Any]], *, smooth: int = 1, ax=None) -> Figure:
    """Per-step loss terms (what :class:`LiveCurves` records), optionally a running mean over ``smooth`` steps."""
    frame = steps if isinstance(steps, pd.DataFrame) else pd.DataFrame(list(steps))
    if ax is None:
        fig = Figure(figsize=(7.0, 3.6), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    if frame.empty:
        ax.text(0.5, 0.5, "no steps yet", ha="center", va="center", transform=ax.transAxes)
        return fig
    for column in _loss_columns(frame):
        values = frame[column].rolling(max(1, smooth), min_periods=1).mean()
        ax.plot(frame["step"], values, label=column.removesuffix(LOSS_SUFFIX), linewidth=1.2)
    if "epoch" in frame:
        for step in frame.groupby("epoch")["step"].min().iloc[1:]:
            ax.axvline(step - 0.5, color="grey", linewidth=0.6, linestyle=":")
    ax.set(xlabel="optimiser step", ylabel="loss", title="Loss terms per step (dotted: epoch boundaries)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    return fig


class LiveCurves:
    """Engine callback recording (and, in JupyterLab, drawing) the losses as training runs.

    Args:
        interactive: redraw a figure in the notebook every ``every`` steps and after each epoch; False
            (papermill runs) only records.
        every: steps between redraws.
        smooth: running-mean window for the per-step curves.

    Attributes:
        steps: one dict per optimiser step: ``step``, ``epoch``, ``lr`` and every ``*_loss``.
        epochs: the engine's epoch records (what ``log.jsonl`` receives).
    """

    def __init__(self, interactive: bool = False, every: int = 10, smooth: int = 5) -> None:
        self.interactive = interactive
        self.every = max(1, int(every))
        self.smooth = smooth
        self.steps: list[dict] = []
        self.epochs: list[dict] = []
        self._handle = None

    def on_step(self, state: Any) -> None:
        values = {k: float(v) for k, v in state.outputs.items() if k.endswith(LOSS_SUFFIX)}
        self.steps.append({"step": state.step, "epoch": state.epoch, "lr": float(state.lr), **values})
        if self.interactive and state.step % self.every == 0:
            self._redraw()

    def on_epoch_end(self, state: Any) -> None:
        self.epochs.append(dict(state.record))
        if self.interactive:
            self._redraw()

    def figure(self) -> Figure:
        """Per-step losses and, once an epoch has been evaluated, the epoch curves beside them."""
        fig = Figure(figsize=(13.0, 3.6), layout="constrained")
        ax_steps, ax_eval = fig.subplots(1, 2, width_ratios=[2, 1])
        plot_step_losses(self.steps, smooth=self.smooth, ax=ax_steps)
        evaluated = [r for r in self.epochs if r.get("eval")]
        if evaluated:
            epochs = [r["epoch"] for r in evaluated]
            ax_eval.plot(epochs, [r["eval"]["t2i"]["R1"] for r in evaluated], marker="o", label="t2i R1")
            ax_eval.plot(epochs, [r["eval"]["t2i"]["mAP"] for r in evaluated], marker="o", label="t2i mAP")
            ax_eval.set(xlabel="epoch", ylabel="%", ylim=(0, 100),
                        title=f"Retrieval on the {evaluated[-1]['eval'].get('split', 'val')} split")
            ax_eval.legend(fontsize=8)
            ax_eval.xaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            ax_eval.text(0.5, 0.5, "evaluated after the first epoch", ha="center", va="center",
                         transform=ax_eval.transAxes)
            ax_eval.set_axis_off()
        return fig

    def _redraw(self) -> None:
        from IPython.display import display

        fig = self.figure()
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
