"""Evaluation: exact retrieval metrics, encoding, evaluation runs, leak audit, seed sweeps.

    rank_metrics(similarity | q_feats/g_feats, q_pids, g_pids)   exact IRRA metrics, bounded memory
    encode_split(model, cfg, split)                               embeddings in annotation order
    evaluate(model, cfg, split, out_dir=..., cache_dir=...)       t2i + i2t, metrics.json, queries.csv
    leak_audit(model, cfg, split)                                 batch-size / order invariance
    aggregate_runs(run_dirs)                                      mean ± std over seeds
"""
from irra_core.evaluation.audit import LeakAuditReport, leak_audit, subset_split
from irra_core.evaluation.encode import EncodedSplit, encode_split
from irra_core.evaluation.evaluate import evaluate, load_or_encode, metrics_from_embeddings, model_fingerprint
from irra_core.evaluation.metrics import (
    METRIC_KEYS,
    PerQueryRanks,
    rank_metrics,
    rank_metrics_full_sort,
    rank_per_query,
    summarize,
)
from irra_core.evaluation.report import format_metrics_table, load_queries, metrics_dataframe
from irra_core.evaluation.sweeps import aggregate_runs

__all__ = [
    "METRIC_KEYS", "EncodedSplit", "LeakAuditReport", "PerQueryRanks", "aggregate_runs", "encode_split",
    "evaluate", "format_metrics_table", "leak_audit", "load_or_encode", "load_queries", "metrics_dataframe",
    "metrics_from_embeddings", "model_fingerprint", "rank_metrics", "rank_metrics_full_sort", "rank_per_query",
    "subset_split", "summarize",
]
