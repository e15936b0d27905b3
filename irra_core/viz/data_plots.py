"""Figures about a dataset: image–caption grids, caption lengths, identities, attributes, vocabulary.

The functions take plain values (images, strings, pids, a DataFrame) so they work the same for the
synthetic set and the real ones; the counting lives in ``irra_core.data.stats``. Each takes ``ax=None``
(``fig=None`` when it draws several panels), returns the Figure and never calls ``show()``.
"""
from __future__ import annotations

import re
import textwrap
from collections import Counter
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from irra_core.viz.style import PANEL, SPLIT_COLORS, TILE

#: words too common to say anything about a caption corpus
STOPWORDS = frozenset(
    "a an the and or of in on with his her he she is are wearing wears has have to at by for from this that "
    "who which it its their they also person man woman while as be there some pair".split())


def _axes(ax: Axes | None, size: tuple[float, float] = PANEL) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def plot_samples(images: Sequence, captions: Sequence[str | Sequence[str]], titles: Sequence[str] | None = None,
                 *, ncols: int = 4, wrap: int = 30, fig: Figure | None = None) -> Figure:
    """A grid of images, each with its caption(s) underneath.

    Args:
        images: N images as ``(H, W, 3)`` uint8 arrays or PIL images.
        captions: N captions, or N lists of captions (each shown on its own line group).
        titles: N short titles (e.g. ``"pid 12 · test"``).
        ncols: tiles per row.
        wrap: caption line width in characters.
        fig: an empty Figure to draw into (its size is set), else a new one.
    """
    if len(images) != len(captions) or (titles is not None and len(titles) != len(images)):
        raise ValueError(f"got {len(images)} images, {len(captions)} captions and "
                         f"{'no' if titles is None else len(titles)} titles; they must match")
    if not len(images):
        raise ValueError("plot_samples needs at least one image")
    ncols = min(ncols, len(images))
    nrows = int(np.ceil(len(images) / ncols))
    fig = fig or Figure(layout="constrained")
    fig.set_size_inches(TILE[0] * ncols, TILE[1] * nrows * 1.35)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= len(images):
            continue
        ax.imshow(np.asarray(images[i]))
        caps = [captions[i]] if isinstance(captions[i], str) else list(captions[i])
        text = "\n\n".join(textwrap.fill(c, wrap) for c in caps)
        ax.text(0.5, -0.02, text, transform=ax.transAxes, ha="center", va="top", fontsize=7, wrap=True)
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
    return fig


def truncation_rate(lengths: Sequence[int], text_length: int) -> float:
    """Fraction of captions longer than ``text_length`` tokens (SOT and EOT counted), i.e. cut by the tokenizer."""
    lengths = np.asarray(lengths)
    return float((lengths > text_length).mean()) if lengths.size else 0.0


def plot_caption_lengths(lengths: Sequence[int], *, text_length: int | None = None,
                         hue: Sequence[str] | None = None, unit: str = "tokens", ax: Axes | None = None) -> Figure:
    """Histogram of caption lengths, with the tokenizer's context length and the share it truncates.

    Args:
        lengths: one length per caption, in ``unit`` (token counts include SOT and EOT, as ``tokenize`` does).
        text_length: the preset's ``data.text_length``; drawn as a dashed line labelled with the truncation rate.
        hue: optional group of each caption (e.g. its split), one colour per group.
    """
    fig, ax = _axes(ax)
    frame = pd.DataFrame({"length": np.asarray(lengths, dtype=int)})
    kwargs = {}
    if hue is not None:
        frame["split"] = list(hue)
        known = set(frame["split"]) <= set(SPLIT_COLORS)
        order = [s for s in SPLIT_COLORS if s in set(frame["split"])] if known else None
        kwargs = {"hue": "split", "hue_order": order, "palette": SPLIT_COLORS if known else None,
                  "multiple": "stack"}
    import seaborn as sns

    sns.histplot(frame, x="length", discrete=True, ax=ax, **kwargs)
    if text_length is not None:
        rate = truncation_rate(frame["length"], text_length)
        ax.axvline(text_length + 0.5, color="black", linestyle="--", linewidth=1.2)
        ax.text(text_length + 0.5, ax.get_ylim()[1] * 0.95, f" text_length {text_length}\n {rate:.1%} truncated",
                va="top", ha="left" if text_length < frame["length"].max() * 0.8 else "right", fontsize=8)
    ax.set_xlabel(f"caption length ({unit})")
    ax.set_ylabel("captions")
    ax.set_title(f"Caption length: median {np.median(frame['length']):.0f} {unit}, max {frame['length'].max()}")
    return fig


def plot_images_per_identity(per_identity: pd.DataFrame, column: str = "images", ax: Axes | None = None) -> Figure:
    """How many images (or captions) each identity has: bars = number of identities with k of them, per split.

    Args:
        per_identity: one row per identity with a ``split`` column (optional) and a count column, as
            ``irra_core.data.stats.images_per_identity`` returns.
        column: the count to show, ``images`` or ``captions``.
    """
    if column not in per_identity.columns:
        raise ValueError(f"column {column!r} not in the table ({list(per_identity.columns)})")
    fig, ax = _axes(ax)
    frame = per_identity.copy()
    if "split" not in frame.columns:
        frame["split"] = "all"
    import seaborn as sns

    order = [s for s in SPLIT_COLORS if s in set(frame["split"])] or None
    sns.countplot(frame, x=column, hue="split", hue_order=order, palette=SPLIT_COLORS if order else None, ax=ax)
    ax.set_xlabel(f"{column} per identity")
    ax.set_ylabel("identities")
    ax.set_title(f"{column.capitalize()} per identity ({len(frame)} identities, {int(frame[column].sum())} {column})")
    return fig


def plot_split_summary(table: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """Grouped bars of identities / images / captions per split.

    Args:
        table: one row per split (index or a ``split`` column) and count columns such as
            ``identities``, ``images``, ``captions``.
    """
    fig, ax = _axes(ax)
    frame = table.reset_index() if "split" not in table.columns else table.copy()
    frame = frame.rename(columns={"index": "split"})
    counts = [c for c in frame.columns if c != "split" and pd.api.types.is_numeric_dtype(frame[c])]
    long = frame.melt(id_vars="split", value_vars=counts, var_name="count", value_name="n")
    import seaborn as sns

    sns.barplot(long, x="count", y="n", hue="split", palette=SPLIT_COLORS if set(long["split"]) <= set(SPLIT_COLORS)
                else None, ax=ax)
    for container in ax.containers:
        ax.bar_label(container, fontsize=7)
    ax.set_xlabel("")
    ax.set_ylabel("count")
    ax.set_title("Split sizes")
    return fig


def plot_attribute_counts(attributes: pd.DataFrame, columns: Sequence[str] | None = None, *, hue: str = "split",
                          ncols: int = 3, fig: Figure | None = None) -> Figure:
    """One count plot per attribute (one row of ``attributes`` per identity), coloured by ``hue``.

    Args:
        attributes: a table with one row per identity and categorical attribute columns (the synthetic
            set's ``attributes.json``; real datasets have none).
        columns: the attributes to show (default: every non-numeric column except ``hue``).
    """
    import seaborn as sns

    if columns is None:
        columns = [c for c in attributes.columns if c != hue and not pd.api.types.is_numeric_dtype(attributes[c])]
    missing = [c for c in columns if c not in attributes.columns]
    if missing or not columns:
        raise ValueError(f"attribute columns {missing or columns} not in the table ({list(attributes.columns)})")
    ncols = min(ncols, len(columns))
    nrows = int(np.ceil(len(columns) / ncols))
    fig = fig or Figure(layout="constrained")
    fig.set_size_inches(4.2 * ncols, 2.6 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    use_hue = hue in attributes.columns
    order_hue = [s for s in SPLIT_COLORS if use_hue and s in set(attributes[hue])] or None
    for ax, column in zip(axes.flat, columns):
        order = attributes[column].value_counts().index
        sns.countplot(attributes, y=column, order=order, hue=hue if use_hue else None, hue_order=order_hue,
                      palette=SPLIT_COLORS if order_hue else None, ax=ax, legend=ax is axes.flat[0])
        ax.set_title(column.replace("_", " "))
        ax.set_xlabel("identities")
        ax.set_ylabel("")
    for ax in list(axes.flat)[len(columns):]:
        ax.set_axis_off()
    return fig


def word_counts(captions: Sequence[str], stopwords: frozenset[str] = STOPWORDS) -> Counter:
    """Lower-cased word frequencies over captions, without stop words."""
    counts: Counter = Counter()
    for caption in captions:
        counts.update(w for w in re.findall(r"[a-z]+(?:-[a-z]+)?", caption.lower()) if w not in stopwords)
    return counts


def plot_top_words(captions: Sequence[str], top: int = 25, ax: Axes | None = None) -> Figure:
    """Horizontal bars of the ``top`` most frequent content words in the captions."""
    fig, ax = _axes(ax, (6.0, max(3.0, 0.22 * top)))
    common = word_counts(captions).most_common(top)
    if not common:
        raise ValueError("no words found in the captions")
    words, counts = zip(*common)
    ax.barh(list(words)[::-1], list(counts)[::-1], color=SPLIT_COLORS["train"])
    ax.set_xlabel("occurrences")
    ax.set_title(f"Most frequent words ({len(captions)} captions)")
    return fig
