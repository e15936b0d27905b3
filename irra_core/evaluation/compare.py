"""Paired comparison of trained models on the same test queries, over their seeds.

Reads each training run's per-query table of its *selected* checkpoint (``eval/<best|last>_test/queries.csv``,
written by :func:`irra_core.engine.fit`) and compares models pairwise with
:func:`irra_core.evaluation.bootstrap.paired_seed_test`: per-query values averaged over a model's seeds, the
difference with its identity-bootstrap interval and a sign-flip p-value, plus each model's spread over seeds.
"""
from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Mapping, Sequence

from irra_core.evaluation.bootstrap import DEFAULT_RESAMPLES, paired_seed_test
from irra_core.evaluation.report import load_queries
from irra_core.io_utils import read_json


def selected_queries_path(train_dir: str | Path) -> Path:
    """``queries.csv`` of the checkpoint a training run selected (``metrics.json`` ``selection``).

    Raises:
        FileNotFoundError: the run has no ``metrics.json`` or no per-query table (train / evaluate it first).
    """
    train_dir = Path(train_dir)
    metrics = read_json(train_dir / "metrics.json", "training metrics")
    policy = (metrics.get("selection") or {}).get("policy")
    which = "last" if policy == "last" or not metrics.get("best") else "best"
    path = train_dir / "eval" / f"{which}_test" / "queries.csv"
    same_epoch = which == "best" and (metrics.get("best") or {}).get("epoch") == (metrics.get("last") or {}).get("epoch")
    if not path.exists() and same_epoch:  # fit evaluates the last checkpoint only when it is also the best
        path = train_dir / "eval" / "last_test" / "queries.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the run's final evaluation writes it (re-run training to the end)")
    return path


def paired_model_table(runs: Mapping[str, Sequence[str | Path]], pairs: Sequence[tuple[str, str]] | None = None, *,
                       metrics: Sequence[str] = ("R1", "mAP"), n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0):
    """One row per (pair of models, metric): ``A, B, metric``, both means (percent, averaged over seeds),
    ``diff`` (A - B, pp), ``low``/``high`` (95% identity-bootstrap interval), ``p_value`` (sign flips over
    identities), ``A_std``/``B_std`` (spread over seeds) and ``seeds``.

    Args:
        runs: ``{model: [training run folders, one per seed]}``. Runs whose test queries differ from the first
            run's (another split) cannot be paired: they are left out and listed in ``attrs["left_out"]``.
        pairs: default every pair in the mapping's order.
    """
    import pandas as pd

    tables, left_out, reference = {}, [], None
    for model, folders in runs.items():
        for folder in folders:
            table = load_queries(selected_queries_path(folder))
            key = (tuple(table["pid"]), tuple(table["caption"]))
            reference = key if reference is None else reference
            if key != reference:  # another split (other data overrides): not comparable query by query
                left_out.append(str(folder))
                continue
            tables.setdefault(model, []).append(table)
    pairs = list(pairs) if pairs is not None else list(combinations(tables, 2))
    rows = []
    for a, b in pairs:
        if a not in tables or b not in tables:
            raise ValueError(f"no runs of {a if a not in tables else b!r} to compare (have {sorted(tables)})")
        frame = paired_seed_test(tables[a], tables[b], n_resamples=n_resamples, seed=seed, names=("A", "B"))
        for metric in metrics:
            row = frame.loc[metric]
            rows.append({"A": a, "B": b, "metric": metric, "mean A": row["A"], "mean B": row["B"],
                         "diff": row["diff"], "low": row["low"], "high": row["high"], "p_value": row["p_value"],
                         "std A (seeds)": row["A_std"], "std B (seeds)": row["B_std"], "seeds": row["seeds"]})
    out = pd.DataFrame(rows)
    out.attrs.update(n_resamples=n_resamples, seed=seed, left_out=left_out)
    return out


def load_eval_records(run_dir: str | Path, models: Sequence[str],
                      checkpoints: Sequence[str] | Mapping[str, Sequence[str]] = ("best", "last"), *,
                      folders: Mapping[str, str | Path] | None = None) -> dict:
    """``{(model, checkpoint): metrics.json record}`` of ``<folder>/eval/<checkpoint>_test/``.

    Args:
        run_dir: the workbook run; a model's folder is ``<run_dir>/<model>`` unless ``folders`` names it.
        models: the models to read.
        checkpoints: the checkpoints of every model, or ``{model: checkpoints}`` (a run without a validation
            split has only ``last``; an existing checkpoint evaluated by ``pipeline --checkpoint``, ``checkpoint``).
        folders: ``{model: folder}`` overriding ``<run_dir>/<model>``.

    Raises:
        FileNotFoundError: a record is missing (evaluate the checkpoint with ``out_dir`` first).
    """
    run_dir, folders = Path(run_dir), dict(folders or {})
    per_model = checkpoints if isinstance(checkpoints, Mapping) else {model: checkpoints for model in models}
    return {(model, which): read_json(Path(folders.get(model, run_dir / model)) / "eval" / f"{which}_test"
                                      / "metrics.json", "evaluation metrics")
            for model in models for which in per_model[model]}


def interval_table(records: Mapping, task: str = "t2i", decimals: int = 2):
    """Point estimates with their 95% intervals as text, ``"4.45 [3.12, 5.90]"``: one row per record key, one
    column per metric. Records without ``"ci"`` (written before intervals existed) show the estimate alone."""
    import pandas as pd

    from irra_core.evaluation.metrics import METRIC_KEYS

    rows = {}
    for key, record in records.items():
        ci = (record.get("ci") or {}).get(task, {})
        rows[key] = {k: (f"{record[task][k]:.{decimals}f} [{ci[k][0]:.{decimals}f}, {ci[k][1]:.{decimals}f}]"
                         if k in ci else f"{record[task][k]:.{decimals}f}") for k in METRIC_KEYS}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    if rows and all(isinstance(k, tuple) for k in rows):
        frame.index = pd.MultiIndex.from_tuples(list(rows))
    return frame


def attach_intervals(headline: Mapping, records: Mapping) -> dict:
    """The workbook's headline ``metrics.json`` with ``"ci"`` and ``"bootstrap"`` next to every point estimate.

    ``headline``: :func:`irra_core.workbook.headline_metrics`'s dict (``t2i``, ``i2t``, ``headline``,
    ``models``); ``records``: :func:`load_eval_records`. Existing keys are kept; each
    ``models[m][checkpoint]`` gains its record's ``ci`` / ``bootstrap``, and the top level those of the
    headline model's selected checkpoint.
    """
    out = {**headline, "models": {m: {**v} for m, v in headline.get("models", {}).items()}}
    for model, values in out["models"].items():
        for which in list(values):  # best, last (or checkpoint: pipeline --checkpoint)
            record = records.get((model, which))
            if record is not None and "ci" in record and isinstance(values.get(which), Mapping):
                values[which] = {**values[which], "ci": record["ci"], "bootstrap": record["bootstrap"]}
    name, _, rest = str(headline.get("headline", "")).partition(" (")
    chosen = out["models"].get(name, {}).get(rest.rstrip(")"), {})
    if "ci" in chosen:
        out["ci"], out["bootstrap"] = chosen["ci"], chosen["bootstrap"]
    return out
