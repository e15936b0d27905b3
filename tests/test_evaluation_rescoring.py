"""Re-scoring methods against direct loop implementations, and the transductive audit."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from irra_core.evaluation.rescoring import rescoring_audit
from irra_core.evaluation.rescoring import (
    METHODS,
    dual_softmax,
    inverted_softmax,
    k_reciprocal,
    k_reciprocal_distance,
    qb_norm,
    rescore,
    rescoring_table,
)


def _features(num_q=14, num_g=9, dim=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    g_pids = torch.arange(num_g) // 3
    q_pids = torch.arange(num_q) % (num_g // 3)
    protos = torch.randn(num_g // 3, dim, generator=gen)
    q = torch.nn.functional.normalize(protos[q_pids] + 0.8 * torch.randn(num_q, dim, generator=gen), dim=1)
    g = torch.nn.functional.normalize(protos[g_pids] + 0.8 * torch.randn(num_g, dim, generator=gen), dim=1)
    return q.double(), g.double(), q_pids, g_pids


def _rank_order(scores):
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


def test_qb_norm_matches_a_direct_loop():
    q, g, _, _ = _features()
    bank = torch.nn.functional.normalize(torch.randn(4, q.shape[1], generator=torch.Generator().manual_seed(3)), dim=1)
    sim, bank_sim = q @ g.T, bank.double() @ g.T
    beta, k = 20.0, 1
    out = qb_norm(sim, bank_sim, beta=beta, k=k)
    active = set()
    for b in range(len(bank_sim)):  # gallery items in some bank query's top-k
        active.update(np.argsort(-bank_sim[b].numpy(), kind="stable")[:k].tolist())
    for i in range(len(sim)):
        top1 = int(np.argsort(-sim[i].numpy(), kind="stable")[0])
        for j in range(sim.shape[1]):
            if top1 in active:
                z = sum(math.exp(beta * float(bank_sim[b, j])) for b in range(len(bank_sim)))
                assert float(out[i, j]) == pytest.approx(math.log(math.exp(beta * float(sim[i, j])) / z), abs=1e-9)
            else:
                assert float(out[i, j]) == float(sim[i, j])
    # both branches are exercised on this case
    tops = {int(np.argsort(-sim[i].numpy(), kind="stable")[0]) for i in range(len(sim))}
    assert tops & active and tops - active


def test_inverted_and_dual_softmax_match_direct_loops():
    q, g, _, _ = _features()
    sim = q @ g.T
    inv, dual = inverted_softmax(sim, beta=10.0), dual_softmax(sim, temperature=0.05)
    for i in range(sim.shape[0]):
        for j in range(sim.shape[1]):
            column = [float(sim[r, j]) for r in range(sim.shape[0])]
            z_inv = sum(math.exp(10.0 * v) for v in column)
            z_dual = sum(math.exp(v / 0.05) for v in column)
            assert float(inv[i, j]) == pytest.approx(math.log(math.exp(10.0 * float(sim[i, j])) / z_inv), abs=1e-9)
            assert float(dual[i, j]) == pytest.approx(float(sim[i, j]) * math.exp(float(sim[i, j]) / 0.05) / z_dual,
                                                     rel=1e-9)
    assert not torch.equal(_rank_order(dual), _rank_order(sim))  # the prior changes some rankings


def _brute_force_k_reciprocal(dist, num_query, k1, k2, lambda_value):
    """Zhong et al.'s procedure item by item, with Python loops and sets."""
    dist = np.asarray(dist, dtype=np.float64)
    d = (dist / dist.max(axis=0)).T
    n = len(d)
    rank = np.argsort(d, axis=1, kind="stable")

    def mutual(i, k):
        forward = rank[i, :k + 1]
        return [int(j) for j in forward if i in rank[j, :k + 1]]

    v = np.zeros((n, n))
    for i in range(n):
        base = mutual(i, k1)
        expanded = list(base)
        for c in base:
            cand = mutual(c, int(round(k1 / 2.0)))
            if len(set(cand) & set(base)) > 2.0 / 3.0 * len(cand):
                expanded += cand
        expanded = sorted(set(expanded))
        w = np.exp(-d[i, expanded])
        v[i, expanded] = w / w.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    final = np.zeros((num_query, n - num_query))
    for i in range(num_query):
        for j in range(num_query, n):
            overlap = sum(min(v[i, k], v[j, k]) for k in range(n))
            jaccard = 1.0 - overlap / (2.0 - overlap)
            final[i, j - num_query] = (1 - lambda_value) * jaccard + lambda_value * d[i, j]
    return final


@pytest.mark.parametrize("k1,k2,lam", [(4, 3, 0.3), (5, 1, 0.5), (3, 2, 0.0)])
def test_k_reciprocal_matches_brute_force(k1, k2, lam):
    rng = np.random.default_rng(k1)
    x = rng.normal(size=(23, 4))
    dist = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)  # squared Euclidean, symmetric
    fast = k_reciprocal_distance(torch.from_numpy(dist), 8, k1=k1, k2=k2, lambda_value=lam)
    slow = _brute_force_k_reciprocal(dist, 8, k1, k2, lam)
    assert fast.shape == (8, 15)
    np.testing.assert_allclose(fast.numpy(), slow, atol=1e-12)


def test_k_reciprocal_on_features_and_bad_input():
    q, g, q_pids, g_pids = _features()
    sim = q @ g.T
    scores = k_reciprocal(sim, q, g, k1=4, k2=2)
    assert scores.shape == sim.shape and torch.isfinite(scores).all()
    with pytest.raises(ValueError, match="non-negative"):
        k_reciprocal_distance(-torch.ones(4, 4), 2)
    with pytest.raises(ValueError, match="do not match"):
        k_reciprocal(sim, q[:-1], g)


def test_rescore_switch_and_labels():
    q, g, _, _ = _features()
    sim = q @ g.T
    assert torch.equal(rescore("none", sim), sim)
    assert torch.allclose(rescore("dual_softmax", sim), dual_softmax(sim))
    with pytest.raises(ValueError, match="unknown re-scoring"):
        rescore("magic", sim)
    with pytest.raises(ValueError, match="bank_feats"):
        rescore("qb_norm", sim, g_feats=g)
    assert {m: METHODS[m].transductive for m in METHODS} == {
        "none": False, "qb_norm": False, "inverted_softmax": True, "dual_softmax": True, "k_reciprocal": True}


def test_rescoring_audit_measures_the_transductive_label():
    q, g, q_pids, g_pids = _features(num_q=40, num_g=12, seed=1)
    bank = torch.nn.functional.normalize(torch.randn(30, q.shape[1], generator=torch.Generator().manual_seed(5)), dim=1)
    frame = rescoring_audit(q, g, bank_feats=bank, params={"k_reciprocal": {"k1": 4, "k2": 2}}, num_probe=10, seed=0)
    assert list(frame.index) == list(METHODS)
    assert not frame.loc["none", "depends_on_other_queries"] and not frame.loc["qb_norm", "depends_on_other_queries"]
    for method in ("inverted_softmax", "dual_softmax", "k_reciprocal"):
        assert frame.loc[method, "depends_on_other_queries"], method
        assert frame.loc[method, "max_score_change"] > 0
    assert frame["label_matches"].all()


def test_rescoring_table_reports_intervals_and_paired_differences():
    q, g, q_pids, g_pids = _features(num_q=40, num_g=12, seed=2)
    bank = torch.randn(30, q.shape[1], generator=torch.Generator().manual_seed(6))
    frame = rescoring_table(q, g, q_pids, g_pids, bank_feats=bank, n_resamples=100,
                            params={"k_reciprocal": {"k1": 4, "k2": 2}})
    assert list(frame.index) == list(METHODS)
    none = frame.loc["none"]
    assert none["dR1"] == 0 and none["p_R1"] == 1.0 and none["dmAP_ci"] == [0.0, 0.0]
    for method, row in frame.iterrows():
        assert row["R1_ci"][0] <= row["R1"] + 1e-9 and row["R1"] <= row["R1_ci"][1] + 1e-9
        assert row["dR1"] == pytest.approx(row["R1"] - none["R1"])
    assert frame.loc["k_reciprocal", "transductive"] and not frame.loc["qb_norm", "transductive"]
