"""Figures that explain the method rather than a result: SDM's target matrix next to the model's matching.

Used by the training notebooks (10, 11) before training: the reader sees what SDM asks of one batch
(IRRA paper §3.3) and how far a freshly initialised model is from it.
"""
from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure

from irra_core.losses import sdm_targets

__all__ = ["plot_sdm_targets"]


def plot_sdm_targets(pids: torch.Tensor, logits: torch.Tensor | None = None, *, fig: Figure | None = None) -> Figure:
    """Heat map of SDM's label distribution q (B, B) of a batch, and beside it the model's p if given.

    q_ij = y_ij / sum_k y_ik with y_ij = [pid_i == pid_j] (:func:`irra_core.losses.sdm_targets`); the
    model's image-to-text matching distribution is p_ij = softmax_j(logits_ij). Rows and columns are
    ordered by identity (a stable sort of ``pids``, so the batch order is kept within an identity) and thin
    lines separate the identities; both panels share one colour scale, [0, max q].

    Args:
        pids: (B,) person ids of the batch.
        logits: optional (B, B) image-to-text logits s cos(v_i, t_j) (row i: image i, column j: caption j).
        fig: a Figure to draw into (default: a new one).

    Returns:
        The Figure (one panel, or two with ``logits``).

    Raises:
        ValueError: ``pids`` is not one-dimensional or ``logits`` is not (B, B).
    """
    pids = torch.as_tensor(pids).detach().cpu()
    if pids.dim() != 1 or pids.numel() == 0:
        raise ValueError(f"pids must be a non-empty (B,) tensor of person ids, got shape {tuple(pids.shape)}")
    size = pids.numel()
    if logits is not None and tuple(logits.shape) != (size, size):
        raise ValueError(f"logits must be ({size}, {size}) for {size} pids, got {tuple(logits.shape)}")
    order = torch.sort(pids, stable=True).indices
    sorted_pids = pids[order]
    q = sdm_targets(sorted_pids).numpy()
    panels = [("SDM target q (from the batch's identities)", q)]
    if logits is not None:
        p = logits.detach().float().cpu()[order][:, order].softmax(dim=1).numpy()
        panels.append(("model p = softmax(s cos(v, t)), before training", p))
    fig = fig or Figure(figsize=(5.2 * len(panels) + 0.8, 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    vmax = float(q.max())
    boundaries = (torch.nonzero(sorted_pids[1:] != sorted_pids[:-1]).reshape(-1) + 0.5).tolist()
    image = None
    for ax, (title, matrix) in zip(axes, panels):
        image = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest")
        for b in boundaries:
            ax.axhline(b, color="white", lw=0.4, alpha=0.6)
            ax.axvline(b, color="white", lw=0.4, alpha=0.6)
        ax.set(title=title, xlabel="caption j (by identity)", ylabel="image i (by identity)")
        ax.grid(False)
        if size <= 24:
            ticks = list(range(size))
            ax.set_xticks(ticks, [str(int(v)) for v in sorted_pids], fontsize=7, rotation=90)
            ax.set_yticks(ticks, [str(int(v)) for v in sorted_pids], fontsize=7)
    fig.colorbar(image, ax=list(axes), shrink=0.85, label="probability")
    identities = int(sorted_pids.unique().numel())
    fig.suptitle(f"SDM on one batch: B = {size} pairs, {identities} identities")
    return fig
