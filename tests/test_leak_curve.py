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
    if efp == "tokens":  # a per-sample model: exactly the same ranking in any order
        assert (curve["inflation_R1"] == 0).all() and (curve["inflation_mAP"].abs() < 1e-3).all()
    else:  # the batch-axis model's numbers move with the order (direction: only once trained)
        assert (curve["inflation_mAP"] != 0).any()
