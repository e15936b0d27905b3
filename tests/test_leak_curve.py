"""Inflation against identities per batch (notebook 40): batch composition counts and the per-sample null."""
from __future__ import annotations

import pytest
import torch

from irra_core.config import load_config
from irra_core.data import prepare_dataset
from irra_core.evaluation.audit import identities_per_batch, inflation_curve
from irra_core.model import build_model


def test_identities_per_batch_counts_distinct_pids():
    pids = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert identities_per_batch(pids, 4) == pytest.approx((1 + 1 + 1) / 3)
    assert identities_per_batch(pids, 5) == pytest.approx((2 + 2) / 2)
    assert identities_per_batch(pids, 2, order=[0, 4, 8, 1, 5, 9, 2, 6, 3, 7]) == pytest.approx(2.0)
    assert identities_per_batch([], 4) == 0.0


@pytest.mark.parametrize("efp", ["tokens", "batch"])
def test_inflation_curve(tmp_path, efp):
    cfg = load_config("php-cpu", {"data.root": str(tmp_path), "model.efp_attention": efp,
                                  "data.synthetic_test_images_per_id": 4}, smoke=True)
    torch.manual_seed(0)
    ds = prepare_dataset(cfg)
    model = build_model(cfg, ds.num_classes).eval()
    curve = inflation_curve(model, cfg, ds.test, batch_sizes=(4, 16), device="cpu")
    assert list(curve["batch_size"]) == [4, 16]
    # 4 images per test identity: an identity-ordered gallery batch of 4 is one identity
    assert curve.loc[0, "gallery_ids_per_batch"] == pytest.approx(1.0)
    assert curve.loc[0, "shuffled_gallery_ids_per_batch"] > 1.5
    assert ((curve["inflation_R1_low"] <= curve["inflation_R1"]) & (curve["inflation_R1"] <= curve["inflation_R1_high"])).all()
    if efp == "tokens":  # a per-sample model: exactly the same ranking in any order
        assert (curve["inflation_R1"] == 0).all() and (curve["inflation_mAP"].abs() < 1e-3).all()
        assert (curve["inflation_R1_low"] == 0).all() and (curve["inflation_R1_high"] == 0).all()
    else:  # the batch-axis model's numbers move with the order (direction: only once trained)
        assert (curve["inflation_mAP"] != 0).any()


@pytest.mark.parametrize("preset,efp", [("php-cpu", "tokens"), ("php-cpu", "batch"), ("irra-cpu", None)])
def test_encode_arrangements_equals_encode_split(tmp_path, preset, efp):
    """Towers and CRFM once, EFP per arrangement: the same embeddings as encoding each arrangement in full."""
    from irra_core.evaluation import encode_split
    from irra_core.evaluation.audit import encode_arrangements

    overrides = {"data.root": str(tmp_path), "data.synthetic_test_images_per_id": 4}
    if efp:
        overrides["model.efp_attention"] = efp
    cfg = load_config(preset, overrides, smoke=True)
    torch.manual_seed(0)
    ds = prepare_dataset(cfg)
    model = build_model(cfg, ds.num_classes).eval()
    arrangements = [(4, False), (4, True), (3, True), (16, False)]
    fast = encode_arrangements(model, cfg, ds.test, arrangements, seed=5, device="cpu")
    assert set(fast) == set(arrangements)
    for (bs, shuffled), got in fast.items():
        full = encode_split(model, cfg, ds.test, device="cpu", batch_size=bs, shuffle=shuffled, seed=5)
        torch.testing.assert_close(got.q_feats, full.q_feats, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.g_feats, full.g_feats, rtol=1e-5, atol=1e-5)
        assert torch.equal(got.q_pids, full.q_pids) and torch.equal(got.g_pids, full.g_pids)
    with pytest.raises(ValueError, match="batch sizes must be >= 1"):
        encode_arrangements(model, cfg, ds.test, [(0, False)], device="cpu")
    if efp == "batch":  # the batch-mates matter: a different arrangement gives different embeddings
        assert not torch.allclose(fast[(4, False)].g_feats, fast[(4, True)].g_feats, atol=1e-4)
    elif efp == "tokens":  # per sample: the arrangement does not matter
        torch.testing.assert_close(fast[(4, False)].g_feats, fast[(3, True)].g_feats, rtol=1e-5, atol=1e-5)


def test_order_comparison_pairs_the_same_queries(tmp_path):
    """Ordered and shuffled metrics of the same queries, and a paired difference that is 0 for a per-sample model."""
    from irra_core.evaluation.audit import order_comparison, order_report

    for efp in ("tokens", "batch"):
        cfg = load_config("php-cpu", {"data.root": str(tmp_path), "model.efp_attention": efp,
                                      "data.synthetic_test_images_per_id": 4}, smoke=True)
        torch.manual_seed(0)
        ds = prepare_dataset(cfg)
        model = build_model(cfg, ds.num_classes).eval()
        result = order_comparison(model, cfg, ds.test, batch_size=4, seed=3, device="cpu", n_resamples=200,
                                  alone=True)
        paired = result["paired"]
        alone = result["paired_alone"]
        assert alone.loc["R1", "alone"] == pytest.approx(result["alone"]["t2i"]["R1"])
        assert alone.loc["mAP", "diff"] == pytest.approx(result["identity-ordered"]["t2i"]["mAP"]
                                                         - result["alone"]["t2i"]["mAP"])
        for metric in ("R1", "mAP"):
            ordered, shuffled = result["identity-ordered"]["t2i"][metric], result["shuffled"]["t2i"][metric]
            assert paired.loc[metric, "identity-ordered"] == pytest.approx(ordered)
            assert paired.loc[metric, "diff"] == pytest.approx(ordered - shuffled)
            assert paired.loc[metric, "low"] <= paired.loc[metric, "diff"] <= paired.loc[metric, "high"]
        assert "ci" in result["shuffled"]
        if efp == "tokens":  # batch size 1 gives the same embeddings as any batch
            assert (paired["diff"].abs() < 1e-6).all() and (paired["p_value"] == 1.0).all()
            assert (alone["diff"].abs() < 1e-6).all()
        else:
            assert paired.loc["mAP", "diff"] != 0 and alone.loc["mAP", "diff"] != 0
        table, sentences = order_report({efp: result}, 4)
        assert list(table.index) == [(efp, "R1"), (efp, "mAP"), (efp, "mINP")]
        assert table.loc[(efp, "mAP"), "diff"] == pytest.approx(paired.loc["mAP", "diff"])
        assert table.loc[(efp, "mAP"), "ordered_minus_alone"] == pytest.approx(alone.loc["mAP", "diff"])
        assert len(sentences) == 4 and sentences[1].startswith(f"{efp}: t2i mAP")
        assert "alone (batch size 1" in sentences[2] and sentences[3].startswith(f"{efp}: t2i mAP")
        if efp == "batch":
            assert "pp more" in sentences[3] or "pp less" in sentences[3]
        sentences = sentences[:2]
        if efp == "tokens":
            assert all("identical in both orders" in text for text in sentences)
        else:  # the mAP moved (above), so its sentence states a size and an interval
            assert "pp" in sentences[1] and "paired 95% interval" in sentences[1]
