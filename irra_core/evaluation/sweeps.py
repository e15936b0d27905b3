"""Seed sweeps: mean ± std of every metric over several runs' ``metrics.json``."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping

from irra_core.evaluation.metrics import METRIC_KEYS
from irra_core.io_utils import read_json


def _load(run) -> tuple[str, Mapping]:
    if isinstance(run, Mapping):
        return str(run.get("name", "")), run
    path = Path(run)
    file = path / "metrics.json" if path.is_dir() else path
    return str(path), read_json(file, "metrics file")


def aggregate_runs(runs: Iterable) -> "pandas.DataFrame":  # noqa: F821
    """Mean ± sample std (ddof=1) per task and metric over ``runs``.

    ``runs``: run folders (holding ``metrics.json``), metrics.json paths, or metrics dicts
    ``{"t2i": {...}, "i2t": {...}}``. Returns a DataFrame with rows ``(task, metric)`` and columns
    ``mean, std, n, min, max, text`` (``text`` = ``"73.38 ± 0.21"``). Every run must hold every metric
    present in the first one; a run missing one is an error naming the run.
    """
    import pandas as pd

    loaded = [_load(run) for run in runs]
    if not loaded:
        raise ValueError("aggregate_runs needs at least one run")
    tasks = [t for t in ("t2i", "i2t") if isinstance(loaded[0][1].get(t), Mapping)]
    rows = []
    for task in tasks:
        for key in METRIC_KEYS:
            values = []
            for where, metrics in loaded:
                try:
                    values.append(float(metrics[task][key]))
                except (KeyError, TypeError):
                    raise ValueError(f"run {where or '<dict>'} has no {task} {key} in its metrics") from None
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else float("nan")
            rows.append({"task": task, "metric": key, "mean": mean, "std": std, "n": len(values),
                         "min": min(values), "max": max(values),
                         "text": f"{mean:.2f} ± {std:.2f}" if len(values) > 1 else f"{mean:.2f}"})
    return pd.DataFrame(rows).set_index(["task", "metric"])
