"""Reading runs for paired comparisons and intervals: selected checkpoints, left-out splits, headline intervals."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from irra_core.evaluation.compare import (
    attach_intervals,
    interval_table,
    load_eval_records,
    paired_model_table,
    selected_queries_path,
)
from irra_core.evaluation.report import write_queries_csv

KEYS = ("R1", "R5", "R10", "mAP", "mINP")


def _train_dir(root, name, first_hits, *, policy="val", pids=None, captions=None):
    folder = root / name
    which = "last" if policy == "last" else "best"
    pids = pids or [i // 2 for i in range(len(first_hits))]
    rows = [{"query_index": i, "pid": pid, "caption": (captions or [f"c{i}" for i in range(len(pids))])[i],
             "first_hit_rank": r, "AP": 1.0 / r, "INP": 1.0 / r, "top10_indices": [0], "top10_scores": [0.5]}
            for i, (pid, r) in enumerate(zip(pids, first_hits))]
    write_queries_csv(folder / "eval" / f"{which}_test" / "queries.csv", rows)
    (folder / "metrics.json").write_text(json.dumps({"selection": {"policy": policy}, "best": None if policy == "last"
                                                     else {"epoch": 1}}))
    return folder


def test_selected_queries_path_follows_the_selection(tmp_path):
    best = _train_dir(tmp_path, "a", [1, 2])
    last = _train_dir(tmp_path, "b", [1, 2], policy="last")
    assert selected_queries_path(best).parent.name == "best_test"
    assert selected_queries_path(last).parent.name == "last_test"
    (best / "eval" / "best_test" / "queries.csv").unlink()
    with pytest.raises(FileNotFoundError, match="queries.csv is missing"):
        selected_queries_path(best)
    # best epoch == last epoch: fit evaluated the last checkpoint only
    same = _train_dir(tmp_path, "c", [1, 2], policy="last")
    (same / "metrics.json").write_text(json.dumps({"selection": {"policy": "val"}, "best": {"epoch": 2},
                                                   "last": {"epoch": 2}}))
    assert selected_queries_path(same).parent.name == "last_test"


def test_paired_model_table_pairs_models_and_leaves_out_other_splits(tmp_path):
    irra = [_train_dir(tmp_path, f"irra{s}", [2] * 8) for s in range(2)]
    php = [_train_dir(tmp_path, "php1", [1] * 8), _train_dir(tmp_path, "php2", [1] * 4 + [2] * 4)]
    other = _train_dir(tmp_path, "php-other", [1] * 8, captions=[f"x{i}" for i in range(8)])
    table = paired_model_table({"irra": irra, "php": php + [other]}, n_resamples=200)
    assert table.attrs["left_out"] == [str(other)]
    r1 = table[table["metric"] == "R1"].iloc[0]
    assert (r1["A"], r1["B"]) == ("irra", "php")
    assert r1["mean A"] == 0.0 and r1["mean B"] == pytest.approx(75.0) and r1["diff"] == pytest.approx(-75.0)
    assert r1["std B (seeds)"] == pytest.approx(np.std([100.0, 50.0], ddof=1)) and r1["std A (seeds)"] == 0.0
    assert r1["seeds"] == "2/2" and r1["low"] <= r1["diff"] <= r1["high"]


def test_intervals_in_tables_and_the_headline(tmp_path):
    record = {"t2i": dict(zip(KEYS, [10.0, 20, 30, 40, 50])), "i2t": dict(zip(KEYS, [1.0, 2, 3, 4, 5])),
              "ci": {"t2i": {k: [v - 1, v + 1] for k, v in zip(KEYS, [10.0, 20, 30, 40, 50])},
                     "i2t": {k: [v - 1, v + 1] for k, v in zip(KEYS, [1.0, 2, 3, 4, 5])}},
              "bootstrap": {"n_resamples": 1000, "seed": 0}}
    for which in ("best", "last"):
        path = tmp_path / "php" / "eval" / f"{which}_test" / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(record))
    records = load_eval_records(tmp_path, ["php"])
    table = interval_table(records, "t2i")
    assert table.loc[("php", "best"), "R1"] == "10.00 [9.00, 11.00]"
    assert isinstance(table.index, pd.MultiIndex)
    plain = interval_table({"old": {"t2i": record["t2i"]}})
    assert plain.loc["old", "mAP"] == "40.00"
    headline = {"t2i": record["t2i"], "i2t": record["i2t"], "headline": "php (best)",
                "models": {"php": {"best": {"t2i": record["t2i"], "i2t": record["i2t"]},
                                   "last": {"t2i": record["t2i"], "i2t": record["i2t"]}, "selected": "best"}}}
    out = attach_intervals(headline, records)
    assert out["ci"] == record["ci"] and out["bootstrap"]["n_resamples"] == 1000
    assert out["models"]["php"]["last"]["ci"]["i2t"]["R1"] == [0.0, 2.0]
    assert out["t2i"] == headline["t2i"] and "ci" not in headline["models"]["php"]["best"]  # input untouched
    with pytest.raises(FileNotFoundError):
        load_eval_records(tmp_path, ["irra"])
