"""model.conv_stem: same token grid as the patchify conv, per-sample in eval, refused with pretrained weights."""
from __future__ import annotations

import pytest
import torch

from irra_core.config import load_config
from irra_core.model import build_model
from irra_core.model.clip import VisionTransformer
from irra_core.model.stem import conv_stem


def test_stem_gives_the_patch_grid_and_is_per_sample_in_eval():
    torch.manual_seed(0)
    plain = VisionTransformer((128, 48), 16, 16, 64, 1, 2, 32)
    stem = VisionTransformer((128, 48), 16, 16, 64, 1, 2, 32, stem=True)
    x = torch.randn(6, 3, 128, 48)
    assert plain(x).shape == stem(x).shape == (6, 1 + 8 * 3, 32)
    stem.train()
    stem(x)  # BatchNorm statistics move in training
    stem.eval()
    together = stem(x)
    alone = torch.cat([stem(x[i:i + 1]) for i in range(6)])
    assert torch.allclose(together, alone, atol=1e-5)  # running statistics in eval: no batch-mates


def test_stem_needs_a_power_of_two_patch_without_overlap():
    with pytest.raises(ValueError, match="stride_size == patch_size"):
        conv_stem(16, 12, 64)
    with pytest.raises(ValueError, match="power-of-two"):
        conv_stem(12, 12, 64)


def test_presets_and_pretrained():
    assert load_config("php-cpu").model.conv_stem and not load_config("php").model.conv_stem
    cfg = load_config("irra-cpu", {"model.pretrained": "ViT-B/16"}, smoke=True)
    with pytest.raises(ValueError, match="conv_stem"):
        build_model(cfg, 4)
