"""Metrics broken down by slices of the queries, each with an identity-bootstrap interval.

A headline number averages over queries that differ in difficulty. The slices here answer "where does the
model fail?" from the per-query table alone (``queries.csv``: ``pid, caption, first_hit_rank, AP, INP``):

* **caption length** in words (three bins at the split's tertiles);
* **what the caption names**: on the synthetic set, which attribute groups of the identity (``attributes.json``,
  written by :mod:`irra_core.data.synthetic`) the caption mentions, matched by the generator's own words for
  that identity's values, and how many groups it names; on real data, the colour and garment words found in
  the caption (:data:`COLOUR_WORDS`, :data:`GARMENT_WORDS`);
* **gallery images of the query's identity** (how many correct items there are to find).

:func:`slice_metrics` gives one row per slice (queries, identities, R1 ... mINP and their intervals) and marks
the worst slice (lowest R1 among slices with at least ``min_queries`` queries; ties: lower mAP).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from irra_core.evaluation.bootstrap import DEFAULT_RESAMPLES, bootstrap_metrics, query_values
from irra_core.evaluation.metrics import METRIC_KEYS

#: colour words looked for in real captions (CUHK-PEDES / ICFG-PEDES / RSTPReid vocabulary)
COLOUR_WORDS = ("black", "white", "grey", "gray", "red", "blue", "green", "yellow", "orange", "purple", "pink",
                "brown", "beige", "khaki", "navy", "dark", "light")
#: garment words looked for in real captions, by garment group
GARMENT_WORDS: dict[str, tuple[str, ...]] = {
    "top": ("shirt", "t-shirt", "tshirt", "top", "blouse", "sweater", "hoodie", "vest", "tee"),
    "jacket/coat": ("jacket", "coat", "overcoat", "blazer", "windbreaker", "cardigan"),
    "trousers": ("pants", "trousers", "jeans", "leggings"),
    "shorts": ("shorts",),
    "skirt/dress": ("skirt", "dress"),
    "shoes": ("shoes", "sneakers", "boots", "sandals", "heels"),
    "bag": ("bag", "backpack", "handbag", "purse", "rucksack"),
    "hat": ("hat", "cap"),
    "glasses": ("glasses", "sunglasses", "spectacles", "eyeglasses"),
}


@dataclass
class Slice:
    """One slice: ``family`` (e.g. ``caption length``), ``name`` (e.g. ``<= 18 words``), ``mask`` (Q,) bool."""

    family: str
    name: str
    mask: np.ndarray


def _words(caption: str) -> list[str]:
    return re.findall(r"[a-z]+(?:-[a-z]+)*", str(caption).lower())


def _mentions(caption: str, phrases: Sequence[str]) -> bool:
    text = " " + " ".join(_words(caption)) + " "
    return any(f" {p.lower()} " in text for p in phrases)


def length_slices(captions: Sequence[str], bins: int = 3) -> list[Slice]:
    """Caption length in words, in ``bins`` bins at the quantiles (labels give the word ranges)."""
    lengths = np.array([len(_words(c)) for c in captions])
    edges = np.unique(np.quantile(lengths, np.linspace(0, 1, bins + 1)[1:-1]).round().astype(int))
    out, low = [], int(lengths.min()) if len(lengths) else 0
    for high in list(edges) + [int(lengths.max()) if len(lengths) else 0]:
        mask = (lengths >= low) & (lengths <= high)
        if mask.any():
            out.append(Slice("caption length", f"{low}-{high} words", mask))
        low = high + 1
    return out


def gallery_count_slices(q_pids: Sequence[int], g_pids: Sequence[int]) -> list[Slice]:
    """Number of gallery images of the query's identity: one slice per count (``1 image``, ``2 images`` ...)."""
    uniq, counts = np.unique(np.asarray(g_pids), return_counts=True)
    count_of = dict(zip(uniq.tolist(), counts.tolist()))
    per_query = np.array([count_of.get(int(p), 0) for p in q_pids])
    return [Slice("gallery images of the identity", f"{n} image{'s' if n != 1 else ''}", per_query == n)
            for n in sorted(set(per_query.tolist()))]


def word_slices(captions: Sequence[str]) -> list[Slice]:
    """Real captions: one slice per colour word and per garment group the captions mention."""
    out = [Slice("colour named", word, np.array([_mentions(c, (word,)) for c in captions])) for word in COLOUR_WORDS]
    out += [Slice("garment named", group, np.array([_mentions(c, words) for c in captions]))
            for group, words in GARMENT_WORDS.items()]
    return [s for s in out if s.mask.any()]


def _synthetic_words(attrs: Mapping[str, Any]) -> dict[str, list[str]]:
    """The words the synthetic generator may use for each attribute group of one identity."""
    from irra_core.data import synthetic as syn

    def colour(value: str) -> list[str]:
        return list(syn._COLOUR_WORDS.get(value, [value]))

    groups = {
        "gender": list(syn._NOUNS[attrs["gender"]]),
        "build": list(syn._BUILD[attrs["build"]]),
        "hair": ["hair"],
        "upper garment": list(syn._UPPER[attrs["upper_type"]]),
        "lower garment": list(syn._LOWER[attrs["lower_type"]]),
        "shoes": ["shoes", "sneakers"],
        "bag": list(syn._BAG[attrs["bag"]]) if attrs["bag"] != "none" else ["no bag"],
        "hat": list(syn._HAT[attrs["hat"]]) if attrs["hat"] != "none" else [],
        "glasses": ["glasses", "eyeglasses", "spectacles"] if attrs["accessory"] == "glasses" else [],
        "scarf": ["scarf"] if attrs["accessory"] == "scarf" else [],
    }
    groups["upper colour"] = [f"{c} {w}" for c in colour(attrs["upper_colour"]) for w in groups["upper garment"]]
    groups["lower colour"] = [f"{c} {w}" for c in colour(attrs["lower_colour"]) for w in groups["lower garment"]]
    return groups


def attribute_slices(captions: Sequence[str], q_pids: Sequence[int], attributes: Any) -> list[Slice]:
    """Synthetic set: which attribute groups of the query's identity its caption names, and how many.

    Args:
        captions, q_pids: the queries (Q,).
        attributes: ``attributes.json``'s identities as a DataFrame indexed by raw id
            (:func:`irra_core.data.stats.attribute_table`); test pids are the raw ids.

    Raises:
        ValueError: a query's identity is missing from ``attributes`` (another dataset's attributes).
    """
    missing = sorted(set(int(p) for p in q_pids) - set(int(i) for i in attributes.index))
    if missing:
        raise ValueError(f"attributes.json has no identity {missing[:5]} of the queries: it belongs to another "
                         "dataset (pass the attributes of the evaluated split's dataset folder)")
    cache: dict[int, dict] = {}
    named: dict[str, list[bool]] = {}
    counts = []
    for caption, pid in zip(captions, q_pids):
        pid = int(pid)
        if pid not in cache:
            cache[pid] = _synthetic_words(attributes.loc[pid].to_dict())
        hits = {group: bool(words) and _mentions(caption, words) for group, words in cache[pid].items()}
        for group, hit in hits.items():
            named.setdefault(group, []).append(hit)
        counts.append(sum(hits.values()))
    out = [Slice("attribute named", group, np.array(values)) for group, values in named.items()]
    counts = np.array(counts)
    edges = np.unique(np.quantile(counts, [1 / 3, 2 / 3]).round().astype(int)) if len(counts) else []
    low = int(counts.min()) if len(counts) else 0
    for high in list(edges) + [int(counts.max()) if len(counts) else 0]:
        mask = (counts >= low) & (counts <= high)
        if mask.any():
            out.append(Slice("attributes named (count)", f"{low}-{high} groups", mask))
        low = high + 1
    return [s for s in out if s.mask.any()]


def default_slices(queries: Any, g_pids: Sequence[int], attributes: Any = None) -> list[Slice]:
    """Caption length, what the caption names (attributes when given, else colour and garment words) and the
    identity's gallery count, for a ``queries.csv`` DataFrame (columns ``pid``, ``caption``)."""
    captions, pids = list(queries["caption"]), np.asarray(queries["pid"])
    out = length_slices(captions)
    out += attribute_slices(captions, pids, attributes) if attributes is not None else word_slices(captions)
    return out + gallery_count_slices(pids, g_pids)


def slice_metrics(queries: Any, slices: Sequence[Slice], *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                  min_queries: int = 20, metric: str = "R1"):
    """One row per slice: ``family, slice, queries, identities``, the five metrics (percent), their 95%
    identity-bootstrap intervals ``<metric>_low`` / ``<metric>_high`` and ``worst`` (True on the one slice with
    the lowest ``metric`` among slices with at least ``min_queries`` queries; ties: lower mAP).

    The overall row (family ``all``) comes first. ``queries``: a ``queries.csv`` DataFrame.
    """
    import pandas as pd

    values, pids = query_values(queries)
    everything = Slice("all", "all queries", np.ones(len(pids), dtype=bool))
    rows = []
    for piece in [everything, *slices]:
        mask = np.asarray(piece.mask, dtype=bool)
        if len(mask) != len(pids):
            raise ValueError(f"slice {piece.family}/{piece.name} has {len(mask)} entries for {len(pids)} queries")
        if not mask.any():
            continue
        boot = bootstrap_metrics(values[mask], pids[mask], n_resamples=n_resamples, seed=seed)
        row = {"family": piece.family, "slice": piece.name, "queries": int(mask.sum()),
               "identities": int(len(np.unique(pids[mask])))}
        for key in METRIC_KEYS:
            row.update({key: boot.estimate[key], f"{key}_low": boot.low[key], f"{key}_high": boot.high[key]})
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["worst"] = False
    eligible = frame[(frame["family"] != "all") & (frame["queries"] >= min_queries)]
    if len(eligible):
        worst = eligible.sort_values([metric, "mAP"], kind="stable").index[0]
        frame.loc[worst, "worst"] = True
    frame.attrs.update(n_resamples=n_resamples, seed=seed, min_queries=min_queries, metric=metric)
    return frame


def run_slices(train_dir: Any, checkpoint: str = "best", *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
               min_queries: int = 20, cfg: Any = None):
    """:func:`slice_metrics` of a training run's test evaluation (``eval/<checkpoint>_test/queries.csv``), with
    :func:`default_slices` from its dataset (``config.yaml``, or ``cfg`` when given, e.g. an existing checkpoint's
    evaluation configuration): synthetic attributes when ``attributes.json`` exists, colour and garment words
    otherwise."""
    from pathlib import Path

    from irra_core.config import load_config
    from irra_core.data import prepare_dataset
    from irra_core.data.stats import attribute_table
    from irra_core.evaluation.report import load_queries

    train_dir = Path(train_dir)
    dataset = prepare_dataset(cfg if cfg is not None else load_config(train_dir / "config.yaml"))
    queries = load_queries(train_dir / "eval" / f"{checkpoint}_test")
    slices = default_slices(queries, dataset.test["image_pids"], attribute_table(dataset))
    return slice_metrics(queries, slices, n_resamples=n_resamples, seed=seed, min_queries=min_queries)
