"""IRRA image transforms: test path equals the reference fixture; erasing fill modes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from irra_core.data.transforms import CLIP_MEAN, build_transforms


@pytest.mark.parity
def test_test_transform_matches_reference_within_1e6(fixtures_dir):
    data = torch.load(fixtures_dir / "transforms_cases.pt", weights_only=True)
    tf = build_transforms(data["img_size"], is_train=False)
    for arr, expected in zip(data["images_uint8_hwc"], data["outputs"]):
        out = tf(Image.fromarray(arr.numpy()))
        assert out.shape == expected.shape
        assert (out - expected).abs().max().item() <= 1e-6


def _grey(h=64, w=24):
    return Image.fromarray(np.full((h, w, 3), 128, np.uint8))


@pytest.mark.parametrize("fill,value", [("mean", (0.0, 0.0, 0.0)), ("irra_normalised_raw", CLIP_MEAN)])
def test_random_erasing_fill_modes(fill, value):
    torch.manual_seed(0)
    tf = build_transforms((64, 24), is_train=True, img_aug=True, erasing_fill=fill)
    erasing = tf.transforms[-1]
    assert type(erasing).__name__ == "RandomErasing"
    x = torch.full((3, 64, 24), 5.0)
    erasing.p = 1.0
    out = erasing(x)
    changed = (out != 5.0).any(0)
    assert changed.any()
    for c in range(3):
        assert torch.allclose(out[c][changed], torch.tensor(value[c]))


def test_train_transform_shapes_and_unknown_fill():
    for aug in (False, True):
        out = build_transforms((32, 16), is_train=True, img_aug=aug)(_grey())
        assert out.shape == (3, 32, 16) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="random_erasing_fill"):
        build_transforms((32, 16), True, True, erasing_fill="zero")
