"""Readable views of metrics: IRRA's log table, DataFrames for notebooks, the per-query table."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Mapping

from irra_core.evaluation.metrics import METRIC_KEYS
from irra_core.io_utils import atomic_write_text

QUERY_COLUMNS = ("query_index", "pid", "caption", "first_hit_rank", "AP", "INP", "top10_indices", "top10_scores")


def format_metrics_table(metrics: Mapping[str, Mapping[str, float]], decimals: int = 3) -> str:
    """IRRA's evaluation table (one row per task, percent with 3 decimals), for logs.

    ``metrics``: ``{"t2i": {"R1", "R5", "R10", "mAP", "mINP"}, "i2t": {...}}`` (missing tasks skipped).
    """
    header = ["task", *METRIC_KEYS]
    rows = [[task, *(f"{float(vals[k]):.{decimals}f}" for k in METRIC_KEYS)]
            for task, vals in metrics.items() if isinstance(vals, Mapping) and all(k in vals for k in METRIC_KEYS)]
    widths = [max(len(str(r[i])) for r in [header, *rows]) + 2 for i in range(len(header))]
    line = "+" + "+".join("-" * w for w in widths) + "+"
    fmt = lambda r: "|" + "|".join(str(c).center(w) for c, w in zip(r, widths)) + "|"  # noqa: E731
    return "\n".join([line, fmt(header), line, *(fmt(r) for r in rows), line])


def metrics_dataframe(metrics: Mapping, name: str | None = None):
    """Long DataFrame ``run, task, metric, value`` from one metrics dict, or ``{run_name: metrics}``."""
    import pandas as pd

    runs = {name or "run": metrics} if any(k in metrics for k in ("t2i", "i2t")) else metrics
    rows = [
        {"run": run, "task": task, "metric": key, "value": float(result[task][key])}
        for run, result in runs.items()
        for task in ("t2i", "i2t")
        if isinstance(result.get(task), Mapping)
        for key in METRIC_KEYS
        if key in result[task]
    ]
    return pd.DataFrame(rows, columns=["run", "task", "metric", "value"])


def write_queries_csv(path: str | Path, rows: list[dict]) -> Path:
    """Write the per-query table atomically; list columns are JSON arrays."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=QUERY_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, tuple)) else v for k, v in row.items()})
    return atomic_write_text(path, buffer.getvalue())


def load_queries(path: str | Path):
    """``queries.csv`` (or the folder holding it) as a DataFrame; top-10 columns become lists.

    Columns: ``query_index, pid, caption, first_hit_rank`` (1-based), ``AP, INP`` (fractions in [0, 1]),
    ``top10_indices`` (gallery indices), ``top10_scores`` (cosine similarities).
    """
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        path = path / "queries.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run evaluate(..., out_dir=...) first")
    frame = pd.read_csv(path, keep_default_na=False)
    missing = set(QUERY_COLUMNS) - set(frame.columns)
    if missing:
        raise ValueError(f"{path} lacks columns {sorted(missing)}; re-run evaluate() to rewrite it")
    for column in ("top10_indices", "top10_scores"):
        frame[column] = frame[column].map(json.loads)
    return frame
