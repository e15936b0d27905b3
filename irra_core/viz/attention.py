"""Attention maps over the person crop: image-tower rollout, text-token -> patch attention, CRFM tokens.

All functions work on the tensors recorded by ``irra_core.model.capture.capture_attention``:
``maps["image"]`` (layers of (B, heads, N, N), N = 1 + gh*gw, CLS first), ``maps["cross"]`` (IRRA's MLM
cross-attention, (B, heads, L, N): text queries over image keys) and ``maps["crfm_image"]`` /
``maps["crfm_text"]`` (PHP's CRFM unified-token weights, (B, cnum, P) and (B, cnum, L)).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

HEATMAP_CMAP = "inferno"


def attention_rollout(maps: Sequence[torch.Tensor], *, head_fusion: str = "mean", residual: bool = True,
                      discard_ratio: float = 0.0) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): how much the CLS token draws on each patch through all layers.

    Each layer's attention is fused over heads, mixed with the identity for the residual path
    (``0.5 A + 0.5 I``), renormalised over keys, and the layers are multiplied bottom-up.

    Args:
        maps: one (B, heads, N, N) tensor per layer, input layer first; N = 1 + patches, CLS first.
        head_fusion: ``mean`` | ``max`` | ``min`` over heads.
        residual: add the identity for the skip connection (the usual rollout; off gives raw products).
        discard_ratio: drop this fraction of the smallest fused weights per row (never the CLS column) to sharpen.

    Returns:
        (B, N - 1): the CLS row of the rolled-out attention over the patches, each row summing to 1.
    """
    if not maps:
        raise ValueError("no attention maps: run the model inside capture_attention(model) first")
    fuse = {"mean": lambda a: a.mean(1), "max": lambda a: a.amax(1), "min": lambda a: a.amin(1)}
    if head_fusion not in fuse:
        raise ValueError(f"head_fusion must be one of {sorted(fuse)}, got {head_fusion!r}")
    result = None
    for layer in maps:
        if layer.ndim != 4 or layer.shape[-1] != layer.shape[-2]:
            raise ValueError(f"image attention must be (B, heads, N, N), got {tuple(layer.shape)}")
        a = fuse[head_fusion](layer.float())
        if discard_ratio > 0:
            flat = a[:, :, 1:]
            k = int(flat.shape[-1] * discard_ratio)
            if k > 0:
                low = flat.topk(k, dim=-1, largest=False).indices
                flat = flat.scatter(-1, low, 0.0)
                a = torch.cat([a[:, :, :1], flat], dim=-1)
        if residual:
            a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype)
        a = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
        result = a if result is None else a @ result
    cls_to_patches = result[:, 0, 1:]
    return cls_to_patches / cls_to_patches.sum(-1, keepdim=True).clamp_min(1e-12)


def patches_to_grid(weights: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Reshape patch weights (..., P) into (..., gh, gw) in the tower's row-major patch order."""
    gh, gw = grid
    if weights.shape[-1] != gh * gw:
        raise ValueError(f"{weights.shape[-1]} patch weights do not fill a {gh}x{gw} grid")
    return weights.reshape(*weights.shape[:-1], gh, gw)


def upsample_to_image(grid_map: torch.Tensor, img_size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a (gh, gw) map to the crop's (H, W), normalised to [0, 1] for display."""
    m = F.interpolate(grid_map.float()[None, None], size=tuple(img_size), mode="bilinear", align_corners=False)[0, 0]
    m = m - m.min()
    return (m / m.max().clamp_min(1e-12)).numpy()


def _new_axes(ax, figsize):
    if ax is None:
        fig = Figure(figsize=figsize)
        ax = fig.add_subplot()
    return ax.figure, ax


def plot_heat_overlay(image: np.ndarray, grid_map: torch.Tensor, *, ax=None, title: str = "", alpha: float = 0.55) -> Figure:
    """Draw a (gh, gw) weight map, upsampled, over an (H, W, 3) image."""
    fig, ax = _new_axes(ax, (2.2, 4.4))
    h, w = image.shape[:2]
    ax.imshow(image)
    ax.imshow(upsample_to_image(grid_map, (h, w)), cmap=HEATMAP_CMAP, alpha=alpha, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    return fig


def plot_rollout(images: Sequence[np.ndarray], rollout: torch.Tensor, grid: tuple[int, int], *,
                 fig: Figure | None = None, titles: Sequence[str] | None = None) -> Figure:
    """Each image beside its attention rollout: 2 rows (image, overlay) by ``len(images)`` columns.

    Args:
        images: B display images (H, W, 3).
        rollout: (B, P) from :func:`attention_rollout`.
        grid: (gh, gw) with gh * gw = P.
    """
    if len(images) != rollout.shape[0]:
        raise ValueError(f"{len(images)} images but rollout for {rollout.shape[0]}")
    fig = fig or Figure(figsize=(1.8 * len(images), 6.5))
    axes = np.asarray(fig.subplots(2, len(images), squeeze=False))
    for j, image in enumerate(images):
        axes[0, j].imshow(image)
        axes[0, j].set_xticks([])
        axes[0, j].set_yticks([])
        axes[0, j].set_title(titles[j] if titles else f"image {j}", fontsize=8)
        plot_heat_overlay(image, patches_to_grid(rollout[j], grid), ax=axes[1, j], title="rollout")
    fig.suptitle("image-tower attention rollout (CLS -> patches)")
    return fig


def text_to_patch(cross: torch.Tensor, *, drop_cls: bool = True) -> torch.Tensor:
    """Head-averaged text-token -> image-patch attention of one cross-attention layer.

    Args:
        cross: (B, heads, L, N) text queries over image keys (CLS first).
        drop_cls: drop the CLS key and renormalise over the patches.

    Returns:
        (B, L, P) with P = N - 1 (or N when ``drop_cls`` is False).
    """
    if cross.ndim != 4:
        raise ValueError(f"cross-attention must be (B, heads, L, N), got {tuple(cross.shape)}")
    a = cross.float().mean(1)
    if drop_cls:
        a = a[..., 1:]
        a = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
    return a


def plot_token_maps(image: np.ndarray, token_maps: torch.Tensor, labels: Sequence[str], grid: tuple[int, int], *,
                    fig: Figure | None = None, title: str = "", ncols: int = 8) -> Figure:
    """One overlay per token: the image, then ``len(labels)`` panels of (P,) weights laid on its patches.

    Args:
        image: (H, W, 3) display image.
        token_maps: (T, P) one patch-weight row per panel (text tokens or CRFM unified tokens).
        labels: T panel titles (the words, or ``unified token c``).
        grid: (gh, gw) patch grid.
    """
    if token_maps.shape[0] != len(labels):
        raise ValueError(f"{token_maps.shape[0]} maps but {len(labels)} labels")
    n = len(labels) + 1
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig = fig or Figure(figsize=(1.6 * ncols, 3.4 * nrows))
    axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    axes[0].imshow(image)
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    axes[0].set_title("image", fontsize=8)
    for ax, row, label in zip(axes[1:], token_maps, labels):
        plot_heat_overlay(image, patches_to_grid(row, grid), ax=ax, title=label)
    for ax in axes[n:]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return fig


def plot_text_to_patch(image: np.ndarray, cross_maps: torch.Tensor, tokens: Sequence[str], grid: tuple[int, int], *,
                       fig: Figure | None = None, skip: Sequence[str] = ("<|startoftext|>", "<|endoftext|>"),
                       max_tokens: int = 15) -> Figure:
    """IRRA's relation-reasoning branch: where each caption word looks in the image.

    Args:
        image: (H, W, 3) display image.
        cross_maps: (L, P) one sample's :func:`text_to_patch` rows.
        tokens: the L' <= L decoded tokens of the caption (padding omitted).
        grid: (gh, gw) patch grid.
        skip: special tokens not drawn.
        max_tokens: cap on the panels.
    """
    keep = [i for i, t in enumerate(tokens) if t not in skip][:max_tokens]
    if not keep:
        raise ValueError("caption has no word tokens to draw")
    return plot_token_maps(image, cross_maps[keep], [tokens[i] for i in keep], grid,
                           fig=fig, title="text token -> image patch cross-attention (MLM branch, mean over heads)")


def plot_crfm_maps(image: np.ndarray, crfm: torch.Tensor, grid: tuple[int, int], *, fig: Figure | None = None) -> Figure:
    """PHP's CRFM: the softmax weights each unified token puts on the patches.

    Args:
        image: (H, W, 3) display image.
        crfm: (cnum, P) one sample's ``maps["crfm_image"]`` row.
        grid: (gh, gw) patch grid.
    """
    return plot_token_maps(image, crfm, [f"unified token {c}" for c in range(crfm.shape[0])], grid,
                           fig=fig, title="CRFM unified tokens over the patches")


# --------------------------------------------------------------------------------------------------
# scoring attention against the synthetic generator's part boxes
# --------------------------------------------------------------------------------------------------
def cells_in_box(box: Sequence[float], grid: tuple[int, int]) -> torch.Tensor:
    """(gh * gw,) bool: which patch cells have their centre inside ``box``.

    Args:
        box: ``[x0, y0, x1, y1]`` as fractions of the image width and height (``regions.json``).
        grid: (gh, gw) patch grid; cell (r, c) has its centre at ((c + 0.5) / gw, (r + 0.5) / gh).
    """
    gh, gw = grid
    x0, y0, x1, y1 = (float(v) for v in box)
    ys = (torch.arange(gh, dtype=torch.float64) + 0.5) / gh
    xs = (torch.arange(gw, dtype=torch.float64) + 0.5) / gw
    inside = ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :]
    return inside.reshape(-1)


def _tied_maxima(w: torch.Tensor) -> torch.Tensor:
    """(P,) bool: the cells of a flat (P,) map within float tolerance of its maximum (ties share a peak)."""
    return w >= w.max() - 1e-7 * max(1.0, float(w.abs().max()))


def _scored_words(maps: Sequence[tuple[torch.Tensor, Sequence[str], dict]]):
    """``(word map (P,), part, kind, regions)`` for every :func:`attribute_words` entry whose part is drawn."""
    for word_maps, tokens, regions in maps:
        for index, part, kind in attribute_words(tokens):
            if part in regions and index < word_maps.shape[0]:
                yield word_maps[index], part, kind, regions


def pointing_game(weights: torch.Tensor, box: Sequence[float], grid: tuple[int, int]) -> tuple[float, float]:
    """Pointing game (Zhang et al., 2016, "Top-down neural attention by excitation backprop") on a patch grid.

    A map scores a hit when its maximum falls in a cell whose centre lies inside the region's box. Ties
    share the credit (the hit is the fraction of the tied maxima that lie inside), so a flat map scores
    exactly the *uniform rate*: the share of cells inside the box, which is also the expected hit of a
    randomly pointing map.

    Args:
        weights: (P,) attention over the P = gh * gw patches (any non-negative scale).
        box: ``[x0, y0, x1, y1]`` fractions of width and height.
        grid: (gh, gw).

    Returns:
        ``(hit, uniform_rate)``, both in [0, 1].

    Raises:
        ValueError: ``weights`` does not have gh * gw entries.
    """
    gh, gw = grid
    w = weights.detach().float().reshape(-1)
    if w.numel() != gh * gw:
        raise ValueError(f"attention has {w.numel()} weights but the grid {grid} has {gh * gw} patches")
    inside = cells_in_box(box, grid)
    top = _tied_maxima(w)
    hit = float((top & inside).sum()) / float(top.sum())
    return hit, float(inside.double().mean())


# caption words -> the generator part they name (colour words take the part of the garment they precede)
WORD_PARTS: dict[str, str] = {
    **{w: "upper" for w in ("tee", "shirt", "top", "sweater", "jacket", "coat", "overcoat")},
    **{w: "lower" for w in ("trousers", "pants", "shorts", "skirt")},
    **{w: "shoes" for w in ("shoes", "sneakers")},
    **{w: "bag" for w in ("backpack", "rucksack", "bag", "purse", "handbag")},
    **{w: "hat" for w in ("cap", "hat")},
    "hair": "hair", "scarf": "scarf",
    **{w: "glasses" for w in ("glasses", "eyeglasses", "spectacles")},
}
COLOUR_WORDS = frozenset(("red", "orange", "yellow", "green", "blue", "purple", "violet", "pink", "white", "black",
                          "grey", "gray", "brown", "blonde", "blond", "dark"))


def attribute_words(tokens: Sequence[str], max_gap: int = 4) -> list[tuple[int, str, str]]:
    """The caption tokens that name a part of the synthetic person: garment, bag, hat, hair, ... nouns, and
    colour words followed within ``max_gap`` tokens by such a noun.

    Args:
        tokens: decoded BPE tokens (``irra_core.viz.inspect.decode_tokens``; a trailing ``</w>`` is ignored).

    Returns:
        ``[(token index, part, "noun" | "colour")]`` with parts from ``WORD_PARTS`` (``regions.json`` names).
    """
    words = [t.replace("</w>", "").strip().lower() for t in tokens]
    out = []
    for i, w in enumerate(words):
        if w in WORD_PARTS:
            out.append((i, WORD_PARTS[w], "noun"))
        elif w in COLOUR_WORDS:
            part = next((WORD_PARTS[v] for v in words[i + 1:i + 1 + max_gap] if v in WORD_PARTS), None)
            if part is not None:
                out.append((i, part, "colour"))
    return out


def score_pointing(maps: Sequence[tuple[torch.Tensor, Sequence[str], dict]], grid: tuple[int, int]):
    """Pointing game of word -> patch maps over many (caption, image) pairs, per part and word kind.

    Args:
        maps: ``(word_maps (L, P), tokens (L,), regions {part: box})`` per pair; the words scored are
            :func:`attribute_words` whose part is drawn in that image.
        grid: (gh, gw).

    Returns:
        pandas DataFrame, one row per (part, kind) plus an ``all`` row: ``words`` (count), ``hit_rate`` and
        ``uniform_rate`` (percent) and ``lift`` (hit_rate / uniform_rate).
    """
    import pandas as pd

    rows = []
    for word_map, part, kind, regions in _scored_words(maps):
        hit, uniform = pointing_game(word_map, regions[part], grid)
        rows.append({"part": part, "kind": kind, "hit": hit, "uniform": uniform})
    if not rows:
        return pd.DataFrame(columns=["part", "kind", "words", "hit_rate", "uniform_rate", "lift"])
    frame = pd.DataFrame(rows)
    table = frame.groupby(["part", "kind"]).agg(words=("hit", "size"), hit_rate=("hit", "mean"),
                                                uniform_rate=("uniform", "mean")).reset_index()
    total = pd.DataFrame([{"part": "all", "kind": "all", "words": len(frame), "hit_rate": frame["hit"].mean(),
                           "uniform_rate": frame["uniform"].mean()}])
    table = pd.concat([table, total], ignore_index=True)
    table[["hit_rate", "uniform_rate"]] *= 100.0
    table["lift"] = table["hit_rate"] / table["uniform_rate"].where(table["uniform_rate"] > 0)
    return table


def pointing_by_part(table):
    """:func:`score_pointing`'s rows pooled over word kinds: one row per part (word-weighted rates), ``all`` last."""
    import pandas as pd

    rows = []
    for part, t in table[table["kind"] != "all"].groupby("part", sort=True):
        n = t["words"].sum()
        rows.append({"part": part, "words": int(n), "hit_rate": (t["hit_rate"] * t["words"]).sum() / n,
                     "uniform_rate": (t["uniform_rate"] * t["words"]).sum() / n})
    rows += [{k: v for k, v in r.items() if k != "kind"} for r in table[table["kind"] == "all"].to_dict("records")]
    out = pd.DataFrame(rows, columns=["part", "words", "hit_rate", "uniform_rate"])
    out["lift"] = out["hit_rate"] / out["uniform_rate"].where(out["uniform_rate"] > 0)
    return out


def pointing_verdict(name: str, table) -> str:
    """One sentence from :func:`pointing_by_part`'s table: the overall hit rate (percent) against the uniform
    rate, above or not, and the part with the largest lift."""
    overall = table.set_index("part").loc["all"]
    verdict = "above" if overall.hit_rate > overall.uniform_rate else "not above"
    best = table[table.part != "all"].sort_values("lift", ascending=False).iloc[0]
    return (f"{name}: attribute words point inside their part {overall.hit_rate:.1f}% of the time, {verdict} uniform "
            f"attention ({overall.uniform_rate:.1f}%, {overall.lift:.2f}x); best part: {best.part} "
            f"({best.hit_rate:.1f}% vs {best.uniform_rate:.1f}%)")


def peak_concentration(maps: Sequence[tuple[torch.Tensor, Sequence[str], dict]], grid: tuple[int, int]) -> dict:
    """Where the attribute words' maps peak, pooled over samples: the most-peaked patch cell and its share.

    An *attention sink* (Xiao et al. 2023, "Efficient Streaming Language Models with Attention Sinks"; Darcet et
    al. 2024, "Vision Transformers Need Registers") shows as one cell, usually background, that holds the peak of
    many words whatever they name; it caps the pointing game (:func:`score_pointing`) however well the rest of
    the map follows the part. Ties share the credit as in :func:`pointing_game`, so flat maps spread it evenly.

    Args:
        maps: as :func:`score_pointing`: ``(word_maps (L, P), tokens (L,), regions {part: box})`` per sample;
            the words counted are the :func:`attribute_words` whose part is drawn in that image.
        grid: (gh, gw).

    Returns:
        ``{"words": n, "cell": (row, col), "share": percent of the words' peaks on that cell, "even": 100 / P
        (the share of any one cell under evenly spread peaks), "outside_parts": percent of the counted words
        whose image's regions leave that cell's centre outside every box}``; ``share`` and ``outside_parts``
        are ``nan`` with no words.
    """
    gh, gw = grid
    credit = torch.zeros(gh * gw, dtype=torch.float64)
    per_sample = []
    for word_map, _, _, regions in _scored_words(maps):
        top = _tied_maxima(word_map.detach().double().reshape(-1))
        credit += top.double() / top.sum()
        per_sample.append(regions)
    n = len(per_sample)
    cell = int(credit.argmax())
    outside = [not any(bool(cells_in_box(box, grid)[cell]) for box in regions.values()) for regions in per_sample]
    return {"words": n, "cell": divmod(cell, gw), "share": 100.0 * float(credit[cell]) / n if n else float("nan"),
            "even": 100.0 / (gh * gw), "outside_parts": 100.0 * float(np.mean(outside)) if n else float("nan")}


def sink_verdict(name: str, peaks: dict) -> str:
    """One sentence from :func:`peak_concentration`: how many attribute words peak on the one most-peaked cell
    (percent), against the share evenly spread peaks give a cell, and whether that cell lies outside the parts.

    It names a sink when the cell holds at least 3x an even share of the peaks and lies outside every drawn part
    in at least half of the images."""
    if not peaks["words"]:
        return f"{name}: no attribute words to locate the peaks of"
    row, col = peaks["cell"]
    ratio = peaks["share"] / peaks["even"]
    sink = ratio >= 3 and peaks["outside_parts"] >= 50
    kind = ("an attention sink (one cell takes the peak whatever the word names)" if sink
            else "no background sink")
    return (f"{name}: {peaks['share']:.1f}% of attribute words peak on patch (row {row}, col {col}), "
            f"{ratio:.1f}x an even spread ({peaks['even']:.1f}%), a patch outside every drawn part in "
            f"{peaks['outside_parts']:.0f}% of the images: {kind}")


def plot_pointing(tables: dict, *, ax=None, title: str = "") -> Figure:
    """Bars of the pointing-game hit rate per part, one bar per model, against the uniform-attention rate.

    Args:
        tables: ``{model name: pointing_by_part(...) DataFrame}``.
    """
    fig, ax = _new_axes(ax, (8, 3.4))
    parts = sorted({p for t in tables.values() for p in t["part"]} - {"all"}) + ["all"]
    width = 0.8 / (len(tables) + 1)
    x = np.arange(len(parts))
    uniform = None
    for k, (name, t) in enumerate(tables.items()):
        t = t.set_index("part").reindex(parts)
        ax.bar(x + (k - len(tables) / 2) * width, t["hit_rate"], width=width, label=f"{name}: hit rate")
        uniform = t["uniform_rate"] if uniform is None else uniform.fillna(t["uniform_rate"])
    if uniform is not None:
        ax.bar(x + (len(tables) / 2) * width, uniform, width=width, color="0.7", label="uniform attention")
    ax.set_xticks(x, parts, fontsize=8)
    ax.set_ylabel("pointing game (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title(title or "does a word's attention peak inside the part it names?")
    return fig


def plot_pointing_examples(samples: Sequence[tuple], grid: tuple[int, int], images: Sequence[np.ndarray], *,
                           per_sample: int = 2, fig: Figure | None = None, title: str = "") -> Figure:
    """Examples of the pointing game: for each (caption, image) sample, up to ``per_sample`` attribute words
    (nouns first), their word -> patch map over the image, the named part's box (green: the map's peak
    falls inside it, red: it does not) and the peak cell (white dot).

    Args:
        samples: ``(maps (L, P), tokens, regions)`` as from :func:`word_patch_maps`.
        images: the (H, W, 3) display image of each sample.
    """
    import matplotlib.patches as mpatches

    panels = []
    for (maps, tokens, regions), image in zip(samples, images):
        words = sorted((w for w in attribute_words(tokens) if w[1] in regions), key=lambda w: w[2] != "noun")
        panels += [(maps[i], tokens[i], regions[part], part, image) for i, part, _ in words[:per_sample]]
    if not panels:
        raise ValueError("no attribute word with a drawn part in these samples")
    ncols = min(8, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = fig or Figure(figsize=(1.5 * ncols, 3.3 * nrows))
    axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    gh, gw = grid
    for ax, (weights, word, box, part, image) in zip(axes, panels):
        hit, _ = pointing_game(weights, box, grid)
        plot_heat_overlay(image, patches_to_grid(weights, grid), ax=ax, title=f"'{word}' -> {part}")
        h, w = image.shape[:2]
        x0, y0, x1, y1 = box
        ax.add_patch(mpatches.Rectangle((x0 * w, y0 * h), (x1 - x0) * w, (y1 - y0) * h, fill=False,
                                        edgecolor="lime" if hit >= 0.5 else "red", linewidth=1.5))
        peak = int(torch.as_tensor(weights).float().argmax())
        ax.plot((peak % gw + 0.5) * w / gw, (peak // gw + 0.5) * h / gh, "o", color="white", markersize=4)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    fig.suptitle(title or "attribute word -> patch map, with the part's box (green: peak inside)")
    return fig
