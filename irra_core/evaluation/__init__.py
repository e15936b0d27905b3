"""Evaluation: exact retrieval metrics, encoding, evaluation runs, leak audit, seed sweeps."""
from irra_core.evaluation.metrics import (
    METRIC_KEYS,
    PerQueryRanks,
    rank_metrics,
    rank_metrics_full_sort,
    rank_per_query,
    summarize,
)

__all__ = [
    "METRIC_KEYS",
    "PerQueryRanks",
    "rank_metrics",
    "rank_metrics_full_sort",
    "rank_per_query",
    "summarize",
]
