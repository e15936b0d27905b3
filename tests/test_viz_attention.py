"""Attention maps on synthetic attention tensors of the capture format."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from irra_core.viz import attention as A


def _softmax(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).softmax(-1)


def test_rollout_identity_layers_follow_cls_row():
    # one layer whose CLS row attends only to patch 2: rollout = 0.5 I + 0.5 A -> all patch mass on patch 2
    n = 1 + 6
    a = torch.zeros(1, 2, n, n)
    a[..., :, :] = torch.eye(n)
    a[:, :, 0] = 0
    a[:, :, 0, 3] = 1.0
    r = A.attention_rollout([a])
    assert r.shape == (1, 6)
    assert torch.allclose(r.sum(-1), torch.ones(1))
    assert r[0].argmax().item() == 2 and r[0, 2].item() == pytest.approx(1.0)


def test_rollout_matches_manual_product():
    maps = [_softmax((2, 3, 5, 5), s) for s in range(3)]
    r = A.attention_rollout(maps)
    eye = torch.eye(5)
    prod = None
    for m in maps:
        x = 0.5 * m.mean(1) + 0.5 * eye
        x = x / x.sum(-1, keepdim=True)
        prod = x if prod is None else x @ prod
    expected = prod[:, 0, 1:] / prod[:, 0, 1:].sum(-1, keepdim=True)
    assert torch.allclose(r, expected, atol=1e-6)
    with pytest.raises(ValueError, match="capture_attention"):
        A.attention_rollout([])


def test_plot_rollout_shapes():
    images = [np.random.rand(32, 16, 3) for _ in range(3)]
    r = A.attention_rollout([_softmax((3, 2, 9, 9))])
    fig = A.plot_rollout(images, r, (4, 2))
    assert len(fig.axes) == 6
    overlay = fig.axes[3].get_images()
    assert len(overlay) == 2 and overlay[1].get_array().shape == (32, 16)
    with pytest.raises(ValueError, match="grid"):
        A.patches_to_grid(r, (3, 3))


def test_text_to_patch_and_plot():
    cross = _softmax((2, 4, 7, 9))
    t2p = A.text_to_patch(cross)
    assert t2p.shape == (2, 7, 8)
    assert torch.allclose(t2p.sum(-1), torch.ones(2, 7))
    tokens = ["<|startoftext|>", "a", "man", "in", "red", "<|endoftext|>"]
    fig = A.plot_text_to_patch(np.random.rand(32, 16, 3), t2p[0], tokens, (4, 2))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["image", "a", "man", "in", "red"]


def test_crfm_maps_panel_per_token():
    crfm = _softmax((3, 8))
    fig = A.plot_crfm_maps(np.random.rand(32, 16, 3), crfm, (4, 2))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["image"] + [f"unified token {c}" for c in range(3)]
    # the strongest patch of token 1 is the brightest area of its overlay
    heat = fig.axes[2].get_images()[1].get_array()
    gh, gw = np.unravel_index(int(crfm[1].argmax()), (4, 2))
    assert heat[gh * 8 + 4, gw * 8 + 4] == pytest.approx(heat.max(), abs=0.15)
