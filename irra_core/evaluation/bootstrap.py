"""Uncertainty of retrieval metrics: bootstrap confidence intervals over identities and paired tests.

Every metric of :mod:`irra_core.evaluation.metrics` is a mean over queries of a per-query value: R@K of the
hit indicator ``first_hit_rank <= K``, mAP of the query's AP, mINP of its INP. So an interval needs only the
per-query table (``queries.csv``), never a new ranking.

Queries are not independent: a person's captions describe the same images, and a model that fails on one
person tends to fail on all of that person's captions. The **cluster (identity) bootstrap** therefore
resamples *identities* with replacement and keeps every query of a drawn identity (Davison & Hinkley 1997,
§3.8; Field & Welsh 2007, "Bootstrapping clustered data"); a metric of a resample is the ratio
``sum of the drawn identities' per-query values / number of their queries``. Resampling single queries
(``unit="query"``) treats them as independent and gives narrower intervals when identities differ.

Vectorised over resamples: the identities' sums ``S (C, M)`` and query counts ``n (C,)`` are computed once,
each resample is a row of draw counts ``W (B, C)``, and all resampled metrics are ``(W @ S) / (W @ n)``.
Intervals are percentile intervals.

Paired comparison of two runs on the same queries (:func:`paired_test`): the difference of the means, its
interval from the same identity bootstrap applied to the per-query differences, and a two-sided p-value from
a **sign-flip permutation test over identities** (under H0 the two runs' labels are exchangeable within each
identity, so each identity's summed difference flips sign with probability 1/2; Good 2005, §3.7).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from irra_core.evaluation.metrics import METRIC_KEYS

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95
#: resamples drawn at once (bounds the (B, C) count matrix: 256 x 20k identities = 40 MB of int64)
_BLOCK = 256


def query_values(table: Any, pids: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-query metric values (percent) and identities from a per-query table.

    Args:
        table: a ``queries.csv`` DataFrame (:func:`irra_core.evaluation.report.load_queries`; columns
            ``pid, first_hit_rank, AP, INP``), or a :class:`~irra_core.evaluation.metrics.PerQueryRanks`
            (then ``pids`` (Q,) gives the queries' identities), or a mapping with keys
            ``first_hit_rank, AP, INP, pid``.

    Returns:
        ``(values, pids)``: ``values`` (Q, 5) float64 with columns ``R1, R5, R10, mAP, mINP`` (100 or 0 for
        R@K, 100 * AP, 100 * INP), whose column means are the metrics; ``pids`` (Q,) int64.

    Raises:
        ValueError: a column is missing or lengths disagree.
    """
    if hasattr(table, "first_hit_rank") and hasattr(table, "ap") and hasattr(table, "inp"):
        first, ap, inp = (np.asarray(getattr(table, k).cpu() if hasattr(getattr(table, k), "cpu") else getattr(table, k))
                          for k in ("first_hit_rank", "ap", "inp"))
        if pids is None:
            raise ValueError("query_values(PerQueryRanks) needs the queries' pids")
    else:
        missing = [k for k in ("first_hit_rank", "AP", "INP") + (() if pids is not None else ("pid",))
                   if k not in table]
        if missing:
            raise ValueError(f"per-query table lacks columns {missing} (queries.csv from evaluate(out_dir=...) has them)")
        first, ap, inp = (np.asarray(table[k]) for k in ("first_hit_rank", "AP", "INP"))
        pids = table["pid"] if pids is None else pids
    pids = np.asarray(pids.cpu() if hasattr(pids, "cpu") else pids).astype(np.int64)
    first = first.astype(np.int64)
    if not (len(first) == len(ap) == len(inp) == len(pids)):
        raise ValueError(f"per-query columns differ in length: {len(first)}, {len(ap)}, {len(inp)}, pids {len(pids)}")
    values = np.stack([first <= 1, first <= 5, first <= 10, ap, inp], axis=1).astype(np.float64) * 100.0
    return values, pids


def _clusters(pids: np.ndarray, unit: str) -> np.ndarray:
    if unit == "identity":
        return np.unique(pids, return_inverse=True)[1].reshape(-1)
    if unit == "query":
        return np.arange(len(pids))
    raise ValueError(f"unit must be 'identity' or 'query', got {unit!r}")


def _cluster_sums(values: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    num = int(clusters.max()) + 1 if len(clusters) else 0
    sums = np.zeros((num, values.shape[1]))
    np.add.at(sums, clusters, values)
    return sums, np.bincount(clusters, minlength=num).astype(np.float64)


def _draw_counts(rng: np.random.Generator, num_clusters: int, size: int) -> np.ndarray:
    """(size, C) how often each cluster is drawn in each resample of C draws with replacement."""
    draws = rng.integers(0, num_clusters, size=(size, num_clusters))
    flat = draws + (np.arange(size) * num_clusters)[:, None]
    return np.bincount(flat.ravel(), minlength=size * num_clusters).reshape(size, num_clusters).astype(np.float64)


def resample_means(values: np.ndarray, pids: np.ndarray, *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                   unit: str = "identity") -> np.ndarray:
    """Column means of ``values`` (Q, M) over ``n_resamples`` cluster-bootstrap resamples: (B, M).

    ``unit="identity"`` draws identities (``pids`` (Q,)) with replacement and keeps all their queries;
    ``"query"`` draws queries. Deterministic for a ``seed``.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or len(values) != len(pids) or len(values) == 0:
        raise ValueError(f"values must be (Q, M) with Q = len(pids) > 0, got {values.shape} and {len(pids)} pids")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    sums, counts = _cluster_sums(values, _clusters(np.asarray(pids), unit))
    rng = np.random.default_rng([int(seed), 9011])
    out = np.empty((n_resamples, values.shape[1]))
    for start in range(0, n_resamples, _BLOCK):
        size = min(_BLOCK, n_resamples - start)
        weights = _draw_counts(rng, len(counts), size)
        out[start:start + size] = (weights @ sums) / (weights @ counts)[:, None]
    return out


@dataclass
class BootstrapResult:
    """Point estimates and percentile intervals of the five metrics (percent).

    ``estimate``, ``low``, ``high``, ``std``: ``{metric: float}``; ``n_resamples``, ``seed``, ``level``
    (e.g. 0.95), ``unit`` (``identity`` | ``query``), ``num_units`` (identities or queries resampled),
    ``num_queries``.
    """

    estimate: dict
    low: dict
    high: dict
    std: dict
    n_resamples: int
    seed: int
    level: float
    unit: str
    num_units: int
    num_queries: int

    def intervals(self) -> dict:
        """``{metric: [low, high]}`` (what ``metrics.json`` stores under ``"ci"``)."""
        return {k: [self.low[k], self.high[k]] for k in self.estimate}

    def settings(self) -> dict:
        """What ``metrics.json`` stores under ``"bootstrap"``: how the intervals were made."""
        return {"n_resamples": self.n_resamples, "seed": self.seed, "level": self.level, "unit": self.unit,
                "interval": "percentile", "num_units": self.num_units, "num_queries": self.num_queries}

    def text(self, decimals: int = 2) -> dict:
        """``{metric: "73.38 [72.10, 74.65]"}`` for tables."""
        return {k: f"{self.estimate[k]:.{decimals}f} [{self.low[k]:.{decimals}f}, {self.high[k]:.{decimals}f}]"
                for k in self.estimate}


def bootstrap_metrics(values: np.ndarray, pids: np.ndarray, *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                      level: float = DEFAULT_LEVEL, unit: str = "identity",
                      keys: Sequence[str] = METRIC_KEYS) -> BootstrapResult:
    """Bootstrap confidence intervals of per-query means.

    Args:
        values: (Q, M) per-query values (:func:`query_values`: R1, R5, R10, mAP, mINP in percent).
        pids: (Q,) identity of each query (the resampling cluster).
        n_resamples, seed: recorded in the result.
        level: two-sided coverage of the percentile interval.
        unit: ``identity`` (clusters, the default) | ``query``.
        keys: names of the M columns.

    Returns:
        :class:`BootstrapResult`. A constant table gives zero width.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    values = np.asarray(values, dtype=np.float64)
    pids = np.asarray(pids)
    means = resample_means(values, pids, n_resamples=n_resamples, seed=seed, unit=unit)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha], axis=0)
    estimate = values.mean(axis=0)
    keys = list(keys)
    return BootstrapResult(
        estimate={k: float(estimate[i]) for i, k in enumerate(keys)},
        low={k: float(low[i]) for i, k in enumerate(keys)},
        high={k: float(high[i]) for i, k in enumerate(keys)},
        std={k: float(means[:, i].std(ddof=1)) if n_resamples > 1 else 0.0 for i, k in enumerate(keys)},
        n_resamples=int(n_resamples), seed=int(seed), level=float(level), unit=unit,
        num_units=len(np.unique(pids)) if unit == "identity" else len(pids), num_queries=len(pids))


def bootstrap_table(table: Any, pids: Any = None, **kwargs) -> BootstrapResult:
    """:func:`bootstrap_metrics` of a per-query table (``queries.csv`` DataFrame or PerQueryRanks + pids)."""
    values, pids = query_values(table, pids)
    return bootstrap_metrics(values, pids, **kwargs)


# --------------------------------------------------------------------------------------------------
# paired comparison
# --------------------------------------------------------------------------------------------------
def sign_flip_pvalues(diff: np.ndarray, pids: np.ndarray, *, n_permutations: int = DEFAULT_RESAMPLES,
                      seed: int = 0) -> np.ndarray:
    """Two-sided p-values (M,) of "mean difference = 0" by flipping each identity's differences together.

    ``diff`` (Q, M) per-query differences, ``pids`` (Q,). ``p = (1 + #{|T*| >= |T|}) / (1 + n_permutations)``
    with ``T`` the observed mean difference and ``T*`` its sign-flipped copies (never 0; exactly 1 when
    every difference is 0).
    """
    diff = np.asarray(diff, dtype=np.float64)
    sums, _ = _cluster_sums(diff, _clusters(np.asarray(pids), "identity"))
    observed = np.abs(sums.sum(axis=0))
    tolerance = 1e-9 * (np.abs(sums).sum(axis=0) + 1.0)  # float-rounding ties count as ties
    rng = np.random.default_rng([int(seed), 9013])
    exceed = np.zeros(diff.shape[1])
    for start in range(0, n_permutations, _BLOCK):
        size = min(_BLOCK, n_permutations - start)
        signs = rng.integers(0, 2, size=(size, len(sums))) * 2.0 - 1.0
        exceed += (np.abs(signs @ sums) >= observed - tolerance).sum(axis=0)
    return (1.0 + exceed) / (1.0 + n_permutations)


def _aligned(table_a: Any, table_b: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    values_a, pids_a = query_values(table_a)
    values_b, pids_b = query_values(table_b)
    if len(pids_a) != len(pids_b) or not np.array_equal(pids_a, pids_b):
        raise ValueError(f"the two per-query tables do not hold the same queries ({len(pids_a)} vs {len(pids_b)} "
                         "rows, or other identities in some row): a paired test needs both runs evaluated on the "
                         "same split, in annotation order")
    for name, table in (("first", table_a), ("second", table_b)):
        if "query_index" in getattr(table, "columns", ()) and not np.array_equal(
                np.asarray(table["query_index"]), np.arange(len(pids_a))):
            raise ValueError(f"the {name} table's query_index is not 0..Q-1 in order; reload queries.csv unsorted")
    return values_a, values_b, pids_a


def paired_test(table_a: Any, table_b: Any, *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                level: float = DEFAULT_LEVEL, names: tuple[str, str] = ("A", "B")):
    """Paired comparison of two runs evaluated on the same queries: ``A - B`` per metric.

    Args:
        table_a, table_b: per-query tables (``queries.csv`` DataFrames, or mappings of columns
            ``pid, first_hit_rank, AP, INP``) of the same split in the same order.
        n_resamples: identity-bootstrap resamples (interval) and sign flips (p-value).
        names: labels of the two runs in the result.

    Returns:
        DataFrame indexed by metric with columns ``<A>, <B>, diff, low, high, p_value, n_resamples, seed``
        (percent, percentage points; ``low``/``high`` the percentile interval of the difference over identity
        resamples; ``p_value`` two-sided, sign-flip permutation over identities). A run against itself gives
        ``diff = low = high = 0`` and ``p_value = 1``.

    Raises:
        ValueError: the tables hold different queries.
    """
    values_a, values_b, pids = _aligned(table_a, table_b)
    return _paired_frame(values_a, values_b, pids, n_resamples=n_resamples, seed=seed, level=level, names=names)


def _paired_frame(values_a: np.ndarray, values_b: np.ndarray, pids: np.ndarray, *, n_resamples: int, seed: int,
                  level: float, names: tuple[str, str], extra: Mapping[str, Any] | None = None):
    import pandas as pd

    diff = values_a - values_b
    boot = bootstrap_metrics(diff, pids, n_resamples=n_resamples, seed=seed, level=level)
    pvalues = sign_flip_pvalues(diff, pids, n_permutations=n_resamples, seed=seed)
    rows = []
    for i, key in enumerate(METRIC_KEYS):
        row = {names[0]: float(values_a[:, i].mean()), names[1]: float(values_b[:, i].mean()),
               "diff": boot.estimate[key], "low": boot.low[key], "high": boot.high[key], "p_value": float(pvalues[i]),
               "n_resamples": int(n_resamples), "seed": int(seed)}
        row.update(extra or {})
        rows.append(row)
    return pd.DataFrame(rows, index=pd.Index(METRIC_KEYS, name="metric"))


def paired_seed_test(tables_a: Sequence[Any], tables_b: Sequence[Any], *, n_resamples: int = DEFAULT_RESAMPLES,
                     seed: int = 0, level: float = DEFAULT_LEVEL, names: tuple[str, str] = ("A", "B")):
    """Paired comparison of two models over seed sweeps.

    Each model's per-query values are averaged over its seeds (one table per seed, same queries), then
    compared as in :func:`paired_test`; the interval and p-value thus cover query sampling, while the seeds'
    own spread is reported as ``<A>_std`` / ``<B>_std`` (sample std of the per-seed metrics, NaN for one seed)
    and ``seeds`` (``"n_A/n_B"``).

    Returns:
        The :func:`paired_test` DataFrame plus ``<A>_std``, ``<B>_std``, ``seeds``.
    """
    if not tables_a or not tables_b:
        raise ValueError("paired_seed_test needs at least one per-query table per model")
    loaded_a = [query_values(t) for t in tables_a]
    loaded_b = [query_values(t) for t in tables_b]
    pids = loaded_a[0][1]
    for values, other in loaded_a + loaded_b:
        if not np.array_equal(other, pids):
            raise ValueError("the seeds' per-query tables hold different queries: every run must be evaluated on "
                             "the same split, in annotation order")
    stack_a = np.stack([v for v, _ in loaded_a])
    stack_b = np.stack([v for v, _ in loaded_b])
    frame = _paired_frame(stack_a.mean(axis=0), stack_b.mean(axis=0), pids, n_resamples=n_resamples, seed=seed,
                          level=level, names=names, extra={"seeds": f"{len(stack_a)}/{len(stack_b)}"})
    for name, stack in zip(names, (stack_a, stack_b)):
        per_seed = stack.mean(axis=1)  # (S, M) metrics of each seed
        frame[f"{name}_std"] = per_seed.std(axis=0, ddof=1) if len(per_seed) > 1 else np.nan
    return frame

