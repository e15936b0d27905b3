"""rank_metrics: IRRA fixture parity, a hand-computed case, and the chunked path vs a full argsort."""
from __future__ import annotations

import pytest
import torch

from irra_core.evaluation import metrics as M
from irra_core.evaluation import rank_metrics, rank_metrics_full_sort, rank_per_query

KEYS = ("R1", "R5", "R10", "mAP", "mINP")


@pytest.fixture(autouse=True)
def _one_thread():
    # Many small chunks: on a shared 2-core machine, intra-op thread hand-offs dominate; one thread
    # keeps these tests fast and changes no result.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _load_cases(folder, name="rank_cases_subset.pt"):
    return torch.load(folder / name, weights_only=True)["cases"]


def _assert_matches_fixture(result: dict, expected: dict, num_queries: int) -> None:
    assert result["mAP"] == pytest.approx(expected["mAP"], abs=1e-3)
    assert result["mINP"] == pytest.approx(expected["mINP"], abs=1e-3)
    exp_cmc = expected["cmc"].double()
    assert len(result["cmc"]) == len(exp_cmc)
    # CMC entries are multiples of 100/Q: compare the hit counts exactly
    got_hits = torch.tensor(result["cmc"], dtype=torch.float64) * num_queries / 100
    exp_hits = exp_cmc * num_queries / 100
    assert torch.equal(got_hits.round().long(), exp_hits.round().long())
    assert result["R1"] == pytest.approx(float(exp_cmc[0]), abs=1e-3)


def _check_case(case: dict, direction: str, use_features: bool) -> None:
    sim, q_pids, g_pids = case["similarity"], case["q_pids"], case["g_pids"]
    expected = case.get(f"{direction}_stable_index_order", case[direction])  # `ties`: stable rule
    if use_features and "q_feats" not in case:
        return
    if direction == "i2t":
        sim, q_pids, g_pids = sim.t(), g_pids, q_pids
    if use_features:
        qf, gf = case["q_feats"], case["g_feats"]
        if direction == "i2t":
            qf, gf = gf, qf
        result = rank_metrics(q_pids=q_pids, g_pids=g_pids, q_feats=qf, g_feats=gf, chunk_size=37)
    else:
        result = rank_metrics(sim, q_pids, g_pids, chunk_size=53)
    _assert_matches_fixture(result, expected, len(q_pids))
    if direction == "t2i" and not use_features:
        assert rank_metrics_full_sort(sim, q_pids, g_pids)["mAP"] == pytest.approx(expected["mAP"], abs=1e-3)


@pytest.mark.parity
@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("use_features", [False, True])
def test_fixture_parity(fixtures_dir, direction, use_features):
    cases = _load_cases(fixtures_dir)
    assert len(cases) == 4
    for case in cases:
        _check_case(case, direction, use_features)


@pytest.mark.parity
@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_large_reference_case_parity(reference_dir, direction):
    # the 1000 x 1000 case (4 MB) left out of tests/fixtures/rank_cases_subset.pt (see make_rank_subset.py)
    (case,) = [c for c in _load_cases(reference_dir, "rank_cases.pt") if c["name"] == "icfg_like_1000x1000"]
    _check_case(case, direction, use_features=False)


@pytest.mark.parity
def test_fixture_ties_reference_differs_only_by_tie_order(fixtures_dir):
    (case,) = [c for c in _load_cases(fixtures_dir) if c["name"] == "ties"]
    result = rank_metrics(case["similarity"], case["q_pids"], case["g_pids"])
    # IRRA's unstable argsort gives another order among ties: close, not equal
    assert result["R1"] != pytest.approx(float(case["t2i"]["cmc"][0]), abs=1e-3)
    assert result["mAP"] == pytest.approx(case["t2i"]["mAP"], abs=1.0)


def test_hand_computed_tiny_case():
    # 2 queries x 4 gallery items.
    # q0 (pid 0): scores [.9, .1, .5, .7], gallery pids [0, 1, 0, 1] -> order 0,3,2,1 -> hits at ranks 1, 3
    #   AP = (1/1 + 2/3) / 2 = 5/6, INP = 2/3, first hit 1
    # q1 (pid 1): scores [.8, .6, .2, .6] -> order 0, then the tie 1 and 3 (lower index first), 2
    #   hits (pid 1 = items 1, 3) at ranks 2, 3 -> AP = (1/2 + 2/3) / 2 = 7/12, INP = 2/3, first hit 2
    sim = torch.tensor([[0.9, 0.1, 0.5, 0.7], [0.8, 0.6, 0.2, 0.6]])
    q_pids, g_pids = torch.tensor([0, 1]), torch.tensor([0, 1, 0, 1])
    out = rank_metrics(sim, q_pids, g_pids, max_rank=10)
    assert out["cmc"] == pytest.approx([50.0, 100.0, 100.0, 100.0])  # gallery of 4: 4 entries
    assert out["R1"] == pytest.approx(50.0)
    assert out["R5"] == out["R10"] == pytest.approx(100.0)
    assert out["mAP"] == pytest.approx(100 * (5 / 6 + 7 / 12) / 2)
    assert out["mINP"] == pytest.approx(100 * 2 / 3)
    per = rank_per_query(sim, q_pids, g_pids, topk=3)
    assert per.first_hit_rank.tolist() == [1, 2]
    assert per.topk_indices.tolist() == [[0, 3, 2], [0, 1, 3]]


def _random_case(gen, num_q, num_g, num_ids, quantise):
    g_pids = torch.randint(0, num_ids, (num_g,), generator=gen)
    q_pids = g_pids[torch.randint(0, num_g, (num_q,), generator=gen)]
    sim = torch.randn(num_q, num_g, generator=gen)
    if quantise:
        sim = (sim * quantise).round() / quantise  # many exact ties
    return sim, q_pids, g_pids


@pytest.mark.parametrize("quantise", [0, 4, 1])
def test_chunked_equals_full_argsort_random(quantise):
    gen = torch.Generator().manual_seed(7 + quantise)
    for trial in range(12):
        num_q = int(torch.randint(1, 50, (), generator=gen))
        num_g = int(torch.randint(1, 300, (), generator=gen))
        num_ids = int(torch.randint(1, num_g + 1, (), generator=gen))
        sim, q_pids, g_pids = _random_case(gen, num_q, num_g, num_ids, quantise)
        if trial % 3 == 0:
            sim = -sim  # negative scores and -0.0 exercise the float ordering keys
        expected = rank_metrics_full_sort(sim, q_pids, g_pids)
        for chunk in (1, 5, None):
            got = rank_metrics(sim, q_pids, g_pids, chunk_size=chunk)
            for key in KEYS:
                assert got[key] == pytest.approx(expected[key], abs=1e-9), (trial, chunk, key)
            assert got["cmc"] == pytest.approx(expected["cmc"], abs=1e-9)


@pytest.fixture
def ieee_subnormals():
    """IEEE gradual underflow for one test: the suite runs with flush-to-zero (conftest, runtime.tune_cpu), under
    which 1e-45 reads as 0.0."""
    from irra_core import runtime

    if not runtime.flush_denormals(False):
        pytest.skip("flush-to-zero cannot be switched off on every thread here")
    yield
    runtime.flush_denormals(True)


def test_order_keys_follow_float_order(ieee_subnormals):
    values = torch.tensor([-float("inf"), -3.5, -1.0, -1e-38, -1e-45, -0.0, 0.0, 1e-45, 1e-38, 0.5, 1.0, 2.0, 3e38,
                           float("inf")])
    keys = M._order_keys(values)
    assert bool((keys[1:] >= keys[:-1]).all())
    assert int(keys[5]) == int(keys[6])  # -0.0 == +0.0
    assert int((keys[1:] > keys[:-1]).sum()) == len(values) - 2  # all others strictly ordered
    assert bool((keys >= 0).all()) and bool((keys < 2**32).all())


def test_topk_follows_the_stable_order():
    gen = torch.Generator().manual_seed(3)
    sim, q_pids, g_pids = _random_case(gen, 40, 200, 20, quantise=2)
    per = rank_per_query(sim, q_pids, g_pids, topk=10, chunk_size=16)
    order = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :10]
    assert torch.equal(per.topk_indices, order)
    assert torch.equal(per.topk_scores, sim.gather(1, order))


def test_features_path_equals_matrix_path():
    gen = torch.Generator().manual_seed(1)
    qf = torch.nn.functional.normalize(torch.randn(90, 16, generator=gen), dim=1)
    gf = torch.nn.functional.normalize(torch.randn(60, 16, generator=gen), dim=1)
    g_pids = torch.arange(60) // 3
    q_pids = torch.arange(90) // 4.5
    q_pids = q_pids.long()
    a = rank_metrics(qf @ gf.T, q_pids, g_pids)
    b = rank_metrics(q_pids=q_pids, g_pids=g_pids, q_feats=qf, g_feats=gf, chunk_size=7)
    for key in KEYS:
        assert a[key] == pytest.approx(b[key], abs=1e-9)
    assert a["cmc"] == pytest.approx(b["cmc"])


def test_errors_name_the_problem():
    sim = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="no correct gallery item"):
        rank_metrics(sim, torch.tensor([0, 9]), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="do not match"):
        rank_metrics(sim, torch.tensor([0]), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="NaN"):
        rank_metrics(torch.full((2, 3), float("nan")), torch.tensor([0, 1]), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="either"):
        rank_metrics(sim, torch.tensor([0, 1]), torch.tensor([0, 1, 2]), q_feats=torch.zeros(2, 4))
