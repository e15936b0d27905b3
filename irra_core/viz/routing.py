"""Expert routing of PHP's EFP layers: load, entropy, per-patch and per-word experts, drift, aux vs floor.

Counting is done the way PHP's ``report_moe_stats`` meant to and did not (SPEC §2.9): every table here is
computed afresh from the tensors of one ``capture_routing`` pass (or from the per-epoch counts the engine
logs), image and text separately, so there is no cumulative buffer, no text counts leaking into the image
statistics, no training-time or checkpoint counts mixed into evaluation numbers, and no double counting
from repeated reductions. A token counts once for each of its k selected experts, so a layer's counts sum
to ``k * tokens`` and its fractions to 1.

Inputs (see ``docs/ARCHITECTURE.md``): capture records ``{"modality", "layer", "gate_logits" (B, T, E),
"topk" (B, T, k), "weights" (B, T, k)}`` where the T tokens are the CRFM unified tokens that EFP routes,
and ``log.jsonl`` lines carrying per-epoch expert counts per layer and modality.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

MODALITY_COLORS = {"image": "#1f77b4", "text": "#ff7f0e"}


def expert_colors(num_experts: int) -> list:
    """One fixed colour per expert (tab10, then tab20), the same in every routing figure."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if num_experts <= 10 else "tab20"]
    return [cmap(e % cmap.N) for e in range(num_experts)]


def _num_experts(records: Sequence[dict]) -> int:
    return int(records[0]["gate_logits"].shape[-1])


def expert_load(records: Sequence[dict]) -> pd.DataFrame:
    """Expert counts per modality and layer from one ``capture_routing`` pass.

    Args:
        records: ``rt.records``; each ``topk`` is (B, T, k) expert indices, ``gate_logits`` (B, T, E).

    Returns:
        Long table ``modality, layer, expert, count, fraction`` (fractions sum to 1 per modality and layer).
        Records of the same modality and layer (several batches) are summed.
    """
    if not records:
        raise ValueError("no routing records: run the PHP model inside capture_routing(model) first")
    num_experts = _num_experts(records)
    totals: dict[tuple[str, int], torch.Tensor] = {}
    for rec in records:
        counts = torch.bincount(rec["topk"].reshape(-1).long(), minlength=num_experts)
        key = (rec["modality"], int(rec["layer"]))
        totals[key] = totals.get(key, 0) + counts
    return counts_table({k: v.tolist() for k, v in totals.items()})


def counts_table(counts: dict[tuple[str, int], Sequence[int]]) -> pd.DataFrame:
    """``{(modality, layer): counts (E,)}`` -> the long ``modality, layer, expert, count, fraction`` table."""
    rows = []
    for (modality, layer), c in sorted(counts.items()):
        c = np.asarray(c, dtype=float)
        total = c.sum()
        for e, n in enumerate(c):
            rows.append({"modality": modality, "layer": int(layer), "expert": e, "count": n,
                         "fraction": n / total if total > 0 else float("nan")})
    return pd.DataFrame(rows)


def routing_entropy(load: pd.DataFrame) -> pd.DataFrame:
    """Shannon entropy (nats) of each layer's expert distribution, with its maximum log E.

    Returns:
        ``modality, layer, entropy, max_entropy, normalised`` (entropy / log E; 1 = perfectly balanced).
    """
    rows = []
    for (modality, layer), group in load.groupby(["modality", "layer"], sort=True):
        p = group.sort_values("expert")["fraction"].to_numpy()
        nz = p[p > 0]
        h = float(-(nz * np.log(nz)).sum())  # 0 log 0 = 0 exactly, no epsilon bias
        hmax = math.log(len(p))
        rows.append({"modality": modality, "layer": int(layer), "entropy": h, "max_entropy": hmax,
                     "normalised": h / hmax if hmax > 0 else float("nan")})
    return pd.DataFrame(rows)


def modality_divergence(load: pd.DataFrame) -> pd.DataFrame:
    """Jensen–Shannon divergence (nats, in [0, log 2]) between image and text expert use, per layer."""
    rows = []
    for layer, group in load.groupby("layer", sort=True):
        dists = {m: g.sort_values("expert")["fraction"].to_numpy() for m, g in group.groupby("modality")}
        if {"image", "text"} <= set(dists):
            p, q = dists["image"], dists["text"]
            m = 0.5 * (p + q)

            def kl(a, b):
                mask = a > 0
                return float((a[mask] * np.log(a[mask] / b[mask])).sum())

            rows.append({"layer": int(layer), "js_divergence": 0.5 * kl(p, m) + 0.5 * kl(q, m)})
    return pd.DataFrame(rows, columns=["layer", "js_divergence"])


def aux_per_layer(records: Sequence[dict]) -> pd.DataFrame:
    """PHP's load-balancing term per modality and layer, recomputed from the gate logits.

    ``l_aux = sum_e P_e f_e`` with ``P_e`` the mean full-softmax probability of expert e over the tokens and
    ``f_e`` the mean of ``1[e in topk(token)]`` (so ``sum_e f_e = k``); at perfect balance it equals k/E
    (SPEC §2.5). Batches of the same modality and layer are pooled before the product.

    Returns:
        ``modality, layer, aux, floor`` (floor = k/E).
    """
    if not records:
        raise ValueError("no routing records: run the PHP model inside capture_routing(model) first")
    pooled: dict[tuple[str, int], list] = {}
    for rec in records:
        pooled.setdefault((rec["modality"], int(rec["layer"])), []).append(rec)
    rows = []
    for (modality, layer), recs in sorted(pooled.items()):
        logits = torch.cat([r["gate_logits"].reshape(-1, r["gate_logits"].shape[-1]) for r in recs]).float()
        topk = torch.cat([r["topk"].reshape(-1, r["topk"].shape[-1]) for r in recs]).long()
        num_experts, k = logits.shape[-1], topk.shape[-1]
        p = logits.softmax(-1).mean(0)
        f = torch.zeros_like(logits).scatter_(1, topk, 1.0).mean(0)
        rows.append({"modality": modality, "layer": layer, "aux": float((p * f).sum()), "floor": k / num_experts})
    return pd.DataFrame(rows)


def token_expert_map(topk: torch.Tensor, crfm: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Map the top-1 expert of each CRFM unified token back onto the patches (or words) it was built from.

    EFP does not route patches or words: it routes the ``cnum`` unified tokens that CRFM forms as softmax-weighted
    sums of the patches (image) or text positions (text). A patch's expert is therefore read through the CRFM
    weights: each unified token votes for its top-1 expert with the weight it gives the patch,
    ``score[p, e] = sum_t A[t, p] * 1[top1(t) = e]``, and the patch takes the expert with the largest vote.
    The vote share says how clear-cut that is.

    Args:
        topk: (T, k) one sample's expert indices per unified token, best first (``rec["topk"][b]``).
        crfm: (T, P) that sample's CRFM weights over P patches (or L text positions).
        num_experts: E.

    Returns:
        ``(expert (P,) long, share (P,) float in [0, 1])``.
    """
    if topk.shape[0] != crfm.shape[0]:
        raise ValueError(f"{topk.shape[0]} routed tokens but {crfm.shape[0]} CRFM rows: use the same layer's tokens")
    one_hot = torch.nn.functional.one_hot(topk[:, 0].long(), num_experts).float()  # (T, E)
    score = crfm.float().t() @ one_hot  # (P, E)
    share, expert = (score / score.sum(-1, keepdim=True).clamp_min(1e-12)).max(-1)
    return expert, share


def _axes(ax, figsize):
    if ax is None:
        fig = Figure(figsize=figsize)
        ax = fig.add_subplot()
    return ax.figure, ax


def plot_expert_load(load: pd.DataFrame, *, fig: Figure | None = None, title: str = "expert load") -> Figure:
    """One panel per EFP layer: the fraction of top-k selections each expert receives, image vs text bars."""
    layers = sorted(load["layer"].unique())
    num_experts = int(load["expert"].max()) + 1
    fig = fig or Figure(figsize=(3.2 * len(layers), 3))
    axes = np.asarray(fig.subplots(1, len(layers), squeeze=False, sharey=True)).ravel()
    modalities = sorted(load["modality"].unique())
    width = 0.8 / len(modalities)
    for ax, layer in zip(axes, layers):
        for j, modality in enumerate(modalities):
            g = load[(load["layer"] == layer) & (load["modality"] == modality)].sort_values("expert")
            ax.bar(g["expert"] + (j - (len(modalities) - 1) / 2) * width, g["fraction"], width,
                   label=modality, color=MODALITY_COLORS.get(modality))
        ax.axhline(1 / num_experts, color="grey", ls="--", lw=1, label="balanced 1/E")
        ax.set_xticks(range(num_experts))
        ax.set_xlabel("expert")
        ax.set_title(f"layer {layer}")
    axes[0].set_ylabel("share of top-k selections")
    axes[0].set_ylim(0, max(1.35 * float(load["fraction"].max()), 1.5 / num_experts))  # room for the legend
    axes[-1].legend(fontsize=7, loc="upper right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_routing_entropy(entropy: pd.DataFrame, *, ax=None) -> Figure:
    """Routing entropy per layer for each modality, against its maximum log E (dashed)."""
    fig, ax = _axes(ax, (4.5, 3))
    for modality, g in entropy.groupby("modality"):
        g = g.sort_values("layer")
        ax.plot(g["layer"], g["entropy"], marker="o", label=modality, color=MODALITY_COLORS.get(modality))
    hmax = float(entropy["max_entropy"].iloc[0])
    ax.axhline(hmax, color="grey", ls="--", label=f"log E = {hmax:.3f}")
    ax.set_ylim(0, hmax * 1.1)
    ax.set_xticks(sorted(entropy["layer"].unique()))
    ax.set_xlabel("EFP layer")
    ax.set_ylabel("entropy (nats)")
    ax.set_title("routing entropy vs log E")
    ax.legend(fontsize=7)
    return fig


def plot_patch_expert_map(image: np.ndarray, expert: torch.Tensor, share: torch.Tensor, grid: tuple[int, int],
                          num_experts: int, *, ax=None, title: str = "per-patch expert (via CRFM)") -> Figure:
    """Overlay each patch's expert (colour) on the image; opacity follows the vote share."""
    fig, ax = _axes(ax, (2.4, 4.6))
    gh, gw = grid
    h, w = image.shape[:2]
    colors = np.asarray(expert_colors(num_experts))
    rgba = colors[expert.reshape(gh, gw).numpy()].copy()
    rgba[..., 3] = 0.15 + 0.45 * share.reshape(gh, gw).numpy()
    ax.imshow(image)
    ax.imshow(rgba, extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    ax.legend(handles=[Patch(color=colors[e], label=f"expert {e}") for e in range(num_experts)],
              fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=2)
    return fig


SPECIAL_SHORT = {"<|startoftext|>": "SOT", "<|endoftext|>": "EOT", "<|mask|>": "MASK"}


def plot_word_experts(words: Sequence[str], expert: Sequence[int], num_experts: int, *, share: Sequence[float] | None = None,
                      ax=None, title: str = "per-word expert (via CRFM)", line_chars: int = 70) -> Figure:
    """A caption with each token boxed in its expert's colour (box opacity follows the vote share).

    Tokens flow left to right and wrap at about ``line_chars`` characters; SOT/EOT are shown as ``SOT``/``EOT``.
    """
    if len(words) != len(expert):
        raise ValueError(f"{len(words)} words but {len(expert)} expert assignments")
    labels = [SPECIAL_SHORT.get(w, w) for w in words]
    positions, line, col = [], 0, 0
    for label in labels:
        width = len(label) + 2
        if col and col + width > line_chars:
            line, col = line + 1, 0
        positions.append((col, line))
        col += width
    lines = line + 1
    fig, ax = _axes(ax, (8, 0.6 + 0.4 * lines))
    colors = expert_colors(num_experts)
    ax.set_xlim(0, line_chars)
    ax.set_ylim(lines, -0.2)
    ax.set_axis_off()
    for (x, y), label, e, i in zip(positions, labels, expert, range(len(labels))):
        alpha = 0.3 + 0.6 * (share[i] if share is not None else 1.0)
        ax.text(x + 0.5, y + 0.5, label, fontsize=9, va="center", ha="left", family="monospace",
                bbox=dict(boxstyle="round,pad=0.2", facecolor=(*colors[int(e)][:3], alpha), edgecolor="none"))
    ax.legend(handles=[Patch(color=colors[e], label=f"expert {e}") for e in range(num_experts)],
              fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=num_experts, frameon=False)
    ax.set_title(title, fontsize=9, pad=22)
    return fig


def plot_routing_drift(drift: pd.DataFrame, *, fig: Figure | None = None) -> Figure:
    """Expert shares over training epochs: one panel per (modality, layer), one line per expert.

    Args:
        drift: ``epoch, modality, layer, expert, fraction`` (from :func:`drift_from_log`).
    """
    if drift.empty:
        raise ValueError("no per-epoch routing counts to draw (log.jsonl has no 'routing' entries)")
    keys = sorted({(m, int(l)) for m, l in zip(drift["modality"], drift["layer"])})
    modalities = sorted({k[0] for k in keys})
    layers = sorted({k[1] for k in keys})
    num_experts = int(drift["expert"].max()) + 1
    colors = expert_colors(num_experts)
    fig = fig or Figure(figsize=(3 * len(layers), 2.4 * len(modalities)))
    axes = np.asarray(fig.subplots(len(modalities), len(layers), squeeze=False, sharex=True, sharey=True))
    for i, modality in enumerate(modalities):
        for j, layer in enumerate(layers):
            ax = axes[i, j]
            g = drift[(drift["modality"] == modality) & (drift["layer"] == layer)]
            for e in range(num_experts):
                ge = g[g["expert"] == e].sort_values("epoch")
                ax.plot(ge["epoch"], ge["fraction"], marker=".", color=colors[e], label=f"expert {e}")
            ax.axhline(1 / num_experts, color="grey", ls="--", lw=1)
            ax.set_title(f"{modality}, layer {layer}", fontsize=8)
            if i == len(modalities) - 1:
                ax.set_xlabel("epoch")
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[i, 0].set_ylabel("share")
    axes[0, -1].legend(fontsize=6)
    fig.suptitle("routing drift over training")
    fig.tight_layout()
    return fig


def plot_aux_vs_floor(aux: pd.DataFrame, *, ax=None) -> Figure:
    """Each layer's aux term (image and text bars) against its balanced value k/E (dashed)."""
    fig, ax = _axes(ax, (4.5, 3))
    layers = sorted(aux["layer"].unique())
    modalities = sorted(aux["modality"].unique())
    width = 0.8 / len(modalities)
    for j, modality in enumerate(modalities):
        g = aux[aux["modality"] == modality].set_index("layer").reindex(layers)
        ax.bar(np.arange(len(layers)) + (j - (len(modalities) - 1) / 2) * width, g["aux"], width,
               label=modality, color=MODALITY_COLORS.get(modality))
    floor = float(aux["floor"].iloc[0])
    ax.axhline(floor, color="black", ls="--", lw=1, label=f"floor k/E = {floor:.3f}")
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels([str(l) for l in layers])
    ax.set_xlabel("EFP layer")
    ax.set_ylabel("aux = sum_e P_e f_e")
    ax.set_title("load-balancing loss vs its floor")
    ax.legend(fontsize=7)
    return fig


def _routing_entries(record: dict):
    """Yield ``(modality, layer, counts, aux)`` from one log.jsonl line, in the formats the engine may write."""
    routing = record.get("routing") or record.get("expert_usage")
    if not routing:
        return
    for modality, layers in routing.items():
        items = layers.items() if isinstance(layers, dict) else enumerate(layers)
        for layer, entry in items:
            if isinstance(entry, dict):
                yield modality, int(layer), entry.get("counts"), entry.get("aux")
            else:
                yield modality, int(layer), entry, None


def drift_from_log(records: Iterable[dict]) -> pd.DataFrame:
    """Per-epoch expert shares from ``log.jsonl`` lines carrying ``routing`` counts.

    Returns:
        ``epoch, modality, layer, expert, count, fraction, aux`` (aux is NaN where the line has none).
    """
    rows = []
    for rec in records:
        if "epoch" not in rec:
            continue
        for modality, layer, counts, aux in _routing_entries(rec):
            if counts is None:
                continue
            c = np.asarray(counts, dtype=float)
            total = c.sum()
            for e, n in enumerate(c):
                rows.append({"epoch": rec["epoch"], "modality": modality, "layer": layer, "expert": e, "count": n,
                             "fraction": n / total if total > 0 else float("nan"),
                             "aux": float(aux) if aux is not None else float("nan")})
    return pd.DataFrame(rows, columns=["epoch", "modality", "layer", "expert", "count", "fraction", "aux"])


def plot_aux_over_training(drift: pd.DataFrame, floor: float, *, ax=None) -> Figure:
    """Training-time aux term per epoch for each (modality, layer), with its floor k/E (dashed).

    Args:
        drift: :func:`drift_from_log` output (its ``aux`` column: the epoch's mean per-layer aux).
        floor: k/E.
    """
    fig, ax = _axes(ax, (5, 3))
    per = drift.dropna(subset=["aux"]).drop_duplicates(["epoch", "modality", "layer"])
    if per.empty:
        raise ValueError("log.jsonl has no per-layer aux values in its 'routing' entries")
    for (modality, layer), g in per.groupby(["modality", "layer"]):
        g = g.sort_values("epoch")
        ax.plot(g["epoch"], g["aux"], marker=".", color=MODALITY_COLORS.get(modality),
                ls="-" if layer % 2 == 0 else ":", label=f"{modality} L{layer}")
    ax.axhline(floor, color="black", ls="--", lw=1, label=f"floor k/E = {floor:.3f}")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("aux (per layer, mean over steps)")
    ax.set_title("load-balancing loss over training")
    ax.legend(fontsize=6, ncol=2)
    return fig
