"""Bootstrap intervals over identities and paired tests on hand-built per-query tables."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from irra_core.evaluation import rank_per_query, summarize
from irra_core.evaluation.bootstrap import (
    bootstrap_metrics,
    bootstrap_table,
    paired_seed_test,
    paired_test,
    query_values,
    resample_means,
    sign_flip_pvalues,
)

KEYS = ("R1", "R5", "R10", "mAP", "mINP")


def _table(first, ap, inp, pids):
    return pd.DataFrame({"query_index": range(len(pids)), "pid": pids, "first_hit_rank": first, "AP": ap, "INP": inp})


def test_query_values_means_are_the_metrics():
    torch.manual_seed(0)
    sim = torch.randn(30, 12)
    g_pids = torch.arange(12) // 3
    q_pids = torch.arange(30) % 4
    ranks = rank_per_query(sim, q_pids, g_pids)
    values, pids = query_values(ranks, q_pids)
    expected = summarize(ranks, 12)
    assert values.mean(axis=0) == pytest.approx([expected[k] for k in KEYS])
    assert pids.tolist() == q_pids.tolist()
    frame = _table(ranks.first_hit_rank.numpy(), ranks.ap.numpy(), ranks.inp.numpy(), q_pids.numpy())
    assert np.array_equal(query_values(frame)[0], values)
    with pytest.raises(ValueError, match="lacks columns"):
        query_values(frame.drop(columns="AP"))


def test_constant_table_has_zero_width():
    table = _table([3] * 40, [0.25] * 40, [0.1] * 40, np.arange(40) // 4)
    result = bootstrap_table(table, n_resamples=200, seed=3)
    for key, value in {"R1": 0.0, "R5": 100.0, "R10": 100.0, "mAP": 25.0, "mINP": 10.0}.items():
        assert result.estimate[key] == pytest.approx(value)
        assert result.low[key] == pytest.approx(value) and result.high[key] == pytest.approx(value)
    assert result.settings()["n_resamples"] == 200 and result.settings()["seed"] == 3
    assert result.settings()["unit"] == "identity" and result.num_units == 10


def test_identity_resampling_is_a_ratio_over_whole_identities():
    """Identity 0: one query, a hit; identity 1: three misses. Two draws: {0,0} -> 100, {1,1} -> 0,
    {0,1} -> 1 hit / 4 queries = 25, with probabilities 1/4, 1/4, 1/2."""
    values = np.array([[100.0], [0.0], [0.0], [0.0]])
    means = resample_means(values, np.array([7, 9, 9, 9]), n_resamples=4000, seed=0)[:, 0]
    assert set(np.round(means, 9)) == {0.0, 25.0, 100.0}
    assert np.mean(means == 25.0) == pytest.approx(0.5, abs=0.03)
    assert np.mean(means == 100.0) == pytest.approx(0.25, abs=0.03)
    # resampling queries instead: four independent draws, means in steps of 25
    per_query = resample_means(values, np.array([7, 9, 9, 9]), n_resamples=4000, seed=0, unit="query")[:, 0]
    assert set(np.round(per_query, 9)) == {0.0, 25.0, 50.0, 75.0, 100.0}


def test_identity_and_query_resampling_differ_when_identities_are_correlated():
    """20 identities x 10 captions, each identity all hits or all misses: the identity interval is ~sqrt(10)
    times wider than the (wrong) independent-query one."""
    pids = np.repeat(np.arange(20), 10)
    first = np.where(pids % 2 == 0, 1, 50)
    table = _table(first, 1.0 / first, 1.0 / first, pids)
    by_id = bootstrap_table(table, n_resamples=2000, seed=1)
    by_query = bootstrap_table(table, n_resamples=2000, seed=1, unit="query")
    assert by_id.estimate["R1"] == by_query.estimate["R1"] == 50.0
    assert by_id.std["R1"] == pytest.approx(np.sqrt(10) * by_query.std["R1"], rel=0.2)
    assert by_id.high["R1"] - by_id.low["R1"] > 2.5 * (by_query.high["R1"] - by_query.low["R1"])
    # analytic standard error of a mean of 20 Bernoulli(0.5) identities
    assert by_id.std["R1"] == pytest.approx(100 * np.sqrt(0.25 / 20), rel=0.1)


def test_bootstrap_is_deterministic_and_validates():
    rng = np.random.default_rng(0)
    values, pids = rng.random((50, 5)) * 100, np.arange(50) // 5
    a = bootstrap_metrics(values, pids, n_resamples=300, seed=5)
    b = bootstrap_metrics(values, pids, n_resamples=300, seed=5)
    c = bootstrap_metrics(values, pids, n_resamples=300, seed=6)
    assert a.low == b.low and a.high == b.high and a.low != c.low
    assert all(a.low[k] <= a.estimate[k] <= a.high[k] for k in KEYS)
    assert a.text()["R1"].count("[") == 1
    with pytest.raises(ValueError, match="unit"):
        bootstrap_metrics(values, pids, unit="caption")
    with pytest.raises(ValueError, match="level"):
        bootstrap_metrics(values, pids, level=95)


def test_paired_test_of_a_run_against_itself():
    rng = np.random.default_rng(1)
    pids = np.repeat(np.arange(30), 3)
    first = rng.integers(1, 20, size=90)
    table = _table(first, rng.random(90), rng.random(90), pids)
    frame = paired_test(table, table.copy(), n_resamples=500, names=("run", "same"))
    assert (frame["diff"] == 0).all() and (frame["low"] == 0).all() and (frame["high"] == 0).all()
    assert (frame["p_value"] == 1.0).all()
    assert frame.loc["R1", "run"] == pytest.approx(100 * np.mean(first <= 1))


def test_paired_test_detects_a_consistent_gain_and_not_noise():
    rng = np.random.default_rng(2)
    pids = np.repeat(np.arange(40), 4)
    ap = rng.random(160) * 0.5
    base = _table(np.full(160, 5), ap, ap, pids)
    better = _table(np.full(160, 1), ap + 0.1, ap + 0.1, pids)
    frame = paired_test(better, base, n_resamples=999)
    assert frame.loc["R1", "diff"] == pytest.approx(100.0) and frame.loc["mAP", "diff"] == pytest.approx(10.0)
    assert frame.loc["mAP", "p_value"] == pytest.approx(1 / 1000)  # no sign flip reaches the observed sum
    assert frame.loc["R5", "p_value"] == 1.0  # both always hit within 5
    # noise with no systematic difference: p-values spread out, not all tiny
    noisy = _table(np.full(160, 5), ap[rng.permutation(160)], ap, pids)
    assert paired_test(noisy, base, n_resamples=999).loc["mAP", "p_value"] > 0.01


def test_sign_flip_pvalue_matches_exhaustive_enumeration():
    """Four identities: the exact permutation p-value enumerates all 16 sign patterns."""
    diff = np.array([[3.0], [1.0], [-1.0], [2.0], [2.0]])
    pids = np.array([0, 1, 2, 3, 3])  # identity 3 flips both its queries together: sum 4
    sums = np.array([3.0, 1.0, -1.0, 4.0])
    patterns = np.array(np.meshgrid(*[[-1, 1]] * 4)).reshape(4, -1).T
    exact = np.mean(np.abs(patterns @ sums) >= abs(sums.sum()))
    p = sign_flip_pvalues(diff, pids, n_permutations=20000, seed=0)[0]
    assert p == pytest.approx(exact, abs=0.01)


def test_paired_test_rejects_different_queries():
    a = _table([1, 2], [1, 0.5], [1, 0.5], [0, 1])
    b = _table([1, 2], [1, 0.5], [1, 0.5], [1, 0])
    with pytest.raises(ValueError, match="same split"):
        paired_test(a, b)
    with pytest.raises(ValueError, match="same split"):
        paired_test(a, _table([1], [1], [1], [0]))


def test_paired_seed_test_averages_seeds_and_reports_their_spread():
    pids = np.repeat(np.arange(10), 2)
    seeds_a = [_table(np.full(20, 1), np.full(20, v), np.full(20, v), pids) for v in (0.5, 0.7)]
    seeds_b = [_table(np.full(20, 2), np.full(20, 0.4), np.full(20, 0.4), pids)]
    frame = paired_seed_test(seeds_a, seeds_b, n_resamples=200, names=("php", "irra"))
    assert frame.loc["mAP", "php"] == pytest.approx(60.0) and frame.loc["mAP", "diff"] == pytest.approx(20.0)
    assert frame.loc["mAP", "php_std"] == pytest.approx(np.std([50.0, 70.0], ddof=1))
    assert np.isnan(frame.loc["mAP", "irra_std"]) and frame.loc["R1", "seeds"] == "2/1"
    assert frame.loc["R1", "diff"] == 100.0
