"""Retrieval galleries: the top-k gallery images of a text query, framed by correctness.

This is what IRRA's ``visualize.py`` meant to show (SPEC §1.17): for a caption, its ground-truth image(s)
followed by the top-k gallery images, each framed green when its identity matches the query's and red when
it does not, with the similarity score under each image. It works from the per-query table written by
``irra_core.evaluation.evaluate`` (``queries.csv``) or from a free-text query ranked against cached
gallery features, and it never reads ``gt_img_paths`` (a key the IRRA parsers never create): the ground
truth is every gallery image whose pid equals the query's.
"""
from __future__ import annotations

import json
import textwrap
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

CORRECT_COLOR = "#2ca02c"  # green frame: same identity as the query
WRONG_COLOR = "#d62728"  # red frame: another identity
GT_COLOR = "#1f77b4"  # blue frame: a ground-truth image shown for reference
NEUTRAL_COLOR = "#7f7f7f"  # grey frame: a free-text query has no identity to check against

ImageLoader = Callable[[int], np.ndarray]


def parse_index_list(value) -> list:
    """Read a ``top10_indices``/``top10_scores`` cell: a list, a JSON list, or space/comma separated numbers."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return list(json.loads(text))
        parts = [p for p in text.replace(",", " ").split() if p]
        return [float(p) if any(c in p for c in ".eE") else int(p) for p in parts]
    raise TypeError(f"cannot read a list of indices from {type(value).__name__} {value!r}")


def read_queries(path) -> pd.DataFrame:
    """Load ``queries.csv`` and decode its list columns (``top10_indices`` ints, ``top10_scores`` floats)."""
    table = pd.read_csv(path)
    required = {"query_index", "pid", "caption", "first_hit_rank", "AP", "INP", "top10_indices", "top10_scores"}
    missing = required - set(table.columns)
    if missing:
        raise ValueError(f"{path}: per-query table lacks columns {sorted(missing)} (written by evaluate(out_dir=...))")
    table["top10_indices"] = table["top10_indices"].map(lambda v: [int(i) for i in parse_index_list(v)])
    table["top10_scores"] = table["top10_scores"].map(lambda v: [float(s) for s in parse_index_list(v)])
    return table


def worst_queries(table: pd.DataFrame, n: int = 5) -> pd.DataFrame:
    """The ``n`` queries whose first correct image comes latest (ties broken by lower AP, then query index)."""
    if "first_hit_rank" not in table.columns:
        raise ValueError("per-query table has no 'first_hit_rank' column")
    ordered = table.sort_values(["first_hit_rank", "AP", "query_index"], ascending=[False, True, True], kind="stable")
    return ordered.head(n)


def rank_gallery(text_feats: torch.Tensor, gallery_feats: torch.Tensor, top_k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine-similarity top-k of queries against the gallery.

    Args:
        text_feats: (Q, D) query features (not necessarily normalised).
        gallery_feats: (G, D) gallery image features.
        top_k: how many to keep (capped at G).

    Returns:
        ``(indices (Q, k) long, scores (Q, k) float)``, best first; ties keep the lower gallery index.
    """
    if text_feats.ndim != 2 or gallery_feats.ndim != 2 or text_feats.shape[1] != gallery_feats.shape[1]:
        raise ValueError(f"need (Q, D) and (G, D) features, got {tuple(text_feats.shape)} and {tuple(gallery_feats.shape)}")
    sims = F.normalize(text_feats.float(), dim=-1) @ F.normalize(gallery_feats.float(), dim=-1).t()
    k = min(top_k, sims.shape[1])
    # a stable sort keeps ties in gallery order, so a result does not depend on the GPU's top-k kernel
    order = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :k]
    return order, torch.gather(sims, 1, order)


@torch.no_grad()
def rank_free_text(model, text: str | Sequence[str], gallery_feats: torch.Tensor, *, top_k: int = 10,
                   context_length: int = 77, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Rank the gallery for a sentence typed by the user.

    The sentence goes through ``irra_core.data.tokenize`` (the same BPE and length as training) and
    ``model.encode_text``; the gallery features come from ``model.encode_image`` (usually a cache).

    Args:
        model: a built model with ``encode_text(caption_ids (B, L)) -> (B, D)``.
        text: one sentence or a list of sentences.
        gallery_feats: (G, D) gallery features.
        top_k: results per sentence.
        context_length: token length L (``cfg.data.text_length``).

    Returns:
        ``(indices (Q, k), scores (Q, k))`` as in :func:`rank_gallery`.
    """
    from irra_core.data import tokenize

    texts = [text] if isinstance(text, str) else list(text)
    if not texts or any(not t.strip() for t in texts):
        raise ValueError("free-text query is empty: type a sentence describing a person")
    was_training = model.training
    model.eval()
    try:
        ids = tokenize(texts, context_length=context_length).to(device)
        feats = model.encode_text(ids).float().cpu()
    finally:
        model.train(was_training)
    return rank_gallery(feats, gallery_feats.cpu(), top_k)


def _show(ax, image: np.ndarray | None, color: str | None, label: str, lw: float = 4.0) -> None:
    if image is not None:
        ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(color is not None)
        if color is not None:
            spine.set_edgecolor(color)
            spine.set_linewidth(lw)
    ax.set_title(label, fontsize=8)


def plot_query_row(axes, caption: str, result_images: Sequence[np.ndarray], scores: Sequence[float],
                   correct: Sequence[bool | None], gt_images: Sequence[np.ndarray], *, n_gt: int = 1,
                   first_hit_rank: int | None = None) -> None:
    """Draw one query into a row of axes: ``n_gt`` ground-truth panels, then one panel per result."""
    if not (len(result_images) == len(scores) == len(correct)):
        raise ValueError("result_images, scores and correct must have the same length")
    if len(axes) < n_gt + len(result_images):
        raise ValueError(f"row has {len(axes)} axes, needs {n_gt + len(result_images)}")
    for j in range(n_gt):
        image = gt_images[j] if j < len(gt_images) else None
        _show(axes[j], image, GT_COLOR if image is not None else None, "ground truth" if image is not None else "")
    for j, (image, score, ok) in enumerate(zip(result_images, scores, correct)):
        color = NEUTRAL_COLOR if ok is None else CORRECT_COLOR if ok else WRONG_COLOR
        _show(axes[n_gt + j], image, color, f"#{j + 1}  {score:.3f}")
    header = textwrap.fill(caption, 110)
    if first_hit_rank is not None:
        header += f"   [first hit: rank {first_hit_rank}]"
    axes[0].annotate(header, xy=(0, 1.25), xycoords="axes fraction", fontsize=8, ha="left", va="bottom",
                     annotation_clip=False)


def plot_topk_gallery(queries: Sequence[dict], load_image: ImageLoader, gallery_pids: Sequence[int], *,
                      top_k: int = 10, n_gt: int = 1, fig: Figure | None = None, title: str | None = None) -> Figure:
    """Top-k galleries for several queries, one row each.

    Args:
        queries: dicts (or table rows) with ``caption``, ``pid`` (``None`` for a free-text query: grey frames,
            no ground truth), ``top10_indices`` (gallery indices, best first),
            ``top10_scores`` and optionally ``first_hit_rank``.
        load_image: gallery index -> (H, W, 3) image array for display.
        gallery_pids: pid of every gallery image (indexing ``split["image_pids"]``).
        top_k: results drawn per row (at most the length of ``top10_indices``).
        n_gt: ground-truth panels at the start of each row (images of the query's pid, in gallery order).
        fig: figure to draw into (a new one by default).

    Returns:
        The Figure; axes are laid out row-major, ``n_gt + top_k`` per query. Frames: green = correct identity,
        red = wrong identity, blue = ground truth.
    """
    queries = [dict(q) for q in (queries.to_dict("records") if isinstance(queries, pd.DataFrame) else queries)]
    if not queries:
        raise ValueError("no queries to draw")
    gallery_pids = np.asarray(gallery_pids)
    cols = n_gt + top_k
    fig = fig or Figure(figsize=(1.1 * cols, 2.6 * len(queries)))
    axes = np.asarray(fig.subplots(len(queries), cols, squeeze=False))
    for row, query in zip(axes, queries):
        idx = [int(i) for i in parse_index_list(query["top10_indices"])][:top_k]
        scores = [float(s) for s in parse_index_list(query["top10_scores"])][:top_k]
        pid = query.get("pid")
        known = pid is not None and not (isinstance(pid, float) and np.isnan(pid))
        correct = [bool(gallery_pids[i] == pid) if known else None for i in idx]
        gt_idx = np.flatnonzero(gallery_pids == pid)[:n_gt] if known else []
        plot_query_row(list(row), str(query["caption"]), [load_image(i) for i in idx], scores, correct,
                       [load_image(int(i)) for i in gt_idx], n_gt=n_gt, first_hit_rank=query.get("first_hit_rank"))
        for ax in list(row[n_gt + len(idx):]) + ([] if known else list(row[:n_gt])):
            ax.set_axis_off()
    if title:
        fig.suptitle(title, y=1.0 + 0.12 / len(queries), fontsize=11)  # above the first row's caption
    fig.subplots_adjust(hspace=0.9, wspace=0.08, top=0.85 if len(queries) == 1 else 0.93)
    return fig


def plot_first_hit_ranks(table: pd.DataFrame, ax=None) -> Figure:
    """Histogram of each query's first-hit rank (log-scaled bins): how far down the right person appears."""
    if ax is None:
        fig = Figure(figsize=(5, 3))
        ax = fig.add_subplot()
    fig = ax.figure
    ranks = table["first_hit_rank"].to_numpy()
    bins = np.unique(np.round(np.geomspace(1, max(2, ranks.max()) + 1, 20)).astype(int))
    ax.hist(ranks, bins=bins, color=CORRECT_COLOR, edgecolor="white")
    ax.set_xscale("log")
    ax.set_xlabel("rank of the first correct image")
    ax.set_ylabel("queries")
    ax.set_title(f"first-hit rank over {len(ranks)} queries (R1 = {100 * np.mean(ranks == 1):.1f}%)")
    return fig
