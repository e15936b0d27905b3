"""CLIP towers: open_clip parity, hyper-parameters from a state dict, non-square input, stride, interpolation."""
from __future__ import annotations

import pytest
import torch

from irra_core.model.clip import CLIP, CLIPConfig
from irra_core.model.clip_state import clip_config_from_state_dict, interpolate_positional_embedding
from irra_core.model.pretrained import load_clip_state_dict
from test_model_presets import single_thread  # noqa: F401  (module-scoped, autouse)


def small_config(**changes) -> CLIPConfig:
    values = dict(embed_dim=32, image_resolution=(64, 32), vision_layers=3, vision_width=128, vision_patch_size=8,
                  stride_size=8, context_length=20, vocab_size=49408, transformer_width=64, transformer_heads=1,
                  transformer_layers=2, vision_heads=2)
    values.update(changes)
    return CLIPConfig(**values)


def _perturb_vectors(state: dict, seed: int = 0) -> dict:
    """Random LayerNorm weights (1 + 0.1 N) and every other vector 0.05 N (open_clip leaves LayerNorms at 1/0
    and attention biases at 0); matrices keep open_clip's random initialisation."""
    gen = torch.Generator().manual_seed(seed)
    out = dict(state)
    for key, value in state.items():
        if value.dim() == 1:
            noise = torch.randn(value.shape, generator=gen)
            is_ln_weight = (".ln_" in key or key.startswith("ln_")) and key.endswith("weight")
            out[key] = 1 + 0.1 * noise if is_ln_weight else 0.05 * noise
    return out


@pytest.mark.slow
def test_parity_with_open_clip_vit_b16_quickgelu_on_a_random_state_dict():
    open_clip = pytest.importorskip("open_clip")
    reference = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).eval()
    state = _perturb_vectors({k: v for k, v in reference.state_dict().items() if k != "logit_scale"})
    reference.load_state_dict(state, strict=False)
    with torch.device("meta"):  # skip the initialisation: every tensor is assigned from the state dict
        ours = CLIP(clip_config_from_state_dict(state, image_resolution=(224, 224), stride_size=16))
    ours.load_state_dict(state, strict=True, assign=True)
    ours.eval()
    assert ours.config.vision_heads == 12 and ours.config.transformer_heads == 8
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(1, 3, 224, 224, generator=gen)  # ViT-B on shared CPUs: one image is enough
    ids = torch.randint(1, 49405, (2, 77), generator=gen)
    ids[0, 30], ids[0, 31:] = 49407, 0
    ids[1, 76] = 49407
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images)[:, 0], reference.encode_image(images), atol=1e-5, rtol=0)
        text = ours.encode_text(ids)[torch.arange(2), ids.argmax(dim=-1)]
        torch.testing.assert_close(text, reference.encode_text(ids), atol=1e-5, rtol=0)


def test_every_hyper_parameter_is_inferred_from_a_state_dict():
    config = small_config()
    state = CLIP(config).state_dict()
    inferred = clip_config_from_state_dict(state, image_resolution=(64, 32), stride_size=8, vision_heads=2)
    assert inferred == config  # text heads follow CLIP's width // 64 = 1


def test_non_square_input_and_overlapping_stride():
    model = CLIP(small_config(image_resolution=(64, 32), vision_patch_size=16, stride_size=12)).eval()
    assert model.visual.grid == ((64 - 16) // 12 + 1, (32 - 16) // 12 + 1) == (5, 2)
    tokens = model.encode_image(torch.randn(2, 3, 64, 32))
    assert tokens.shape == (2, 1 + 10, 32)
    with pytest.raises(ValueError, match="patch grid"):
        model.encode_image(torch.randn(1, 3, 32, 64))


def test_text_tokens_do_not_depend_on_padding_length():
    model = CLIP(small_config()).eval()
    ids = torch.zeros(2, 20, dtype=torch.long)
    ids[:, 0], ids[:, 1:6], ids[:, 6] = 49406, 320, 49407
    with torch.no_grad():
        full = model.encode_text(ids)
        short = model.encode_text(ids[:, :8])
    torch.testing.assert_close(short, full[:, :8], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="context length"):
        model.encode_text(torch.zeros(1, 21, dtype=torch.long))


def test_positional_embedding_interpolation_keeps_cls_and_orientation():
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    grid = torch.stack([rows.flatten(), cols.flatten()], dim=1)  # channel 0 = row, channel 1 = column
    posemb = torch.cat([torch.tensor([[7.0, -7.0]]), grid])
    resized = interpolate_positional_embedding(posemb, (8, 2))
    assert resized.shape == (1 + 16, 2) and torch.equal(resized[0], posemb[0])
    patches = resized[1:].reshape(8, 2, 2)
    assert torch.all(patches[1:, :, 0] >= patches[:-1, :, 0]) and torch.all(patches[:, 0, 0] == patches[:, 1, 0])
    assert torch.all(patches[:, 1, 1] > patches[:, 0, 1]) and torch.all(patches[0, :, 1] == patches[7, :, 1])
    torch.testing.assert_close(interpolate_positional_embedding(posemb, (4, 4)), posemb)


def test_pretrained_square_grid_is_resized_to_irra_input(tmp_path):
    from irra_core.model.pretrained import load_pretrained_clip

    state = CLIP(small_config(image_resolution=(32, 32))).state_dict()  # a 4 x 4 grid, like OpenAI's square
    torch.save(state, tmp_path / "weights.pt")
    model = load_pretrained_clip(tmp_path / "weights.pt", image_resolution=(64, 32), stride_size=8)
    assert model.visual.positional_embedding.shape == (1 + 8 * 4, 128)
    torch.testing.assert_close(model.visual.positional_embedding.detach(),
                               interpolate_positional_embedding(state["visual.positional_embedding"], (8, 4)))
    assert set(load_clip_state_dict(tmp_path / "weights.pt")) == set(state)


@pytest.mark.parametrize("keys", [9, 200])  # the explicit CPU path (short) and SDPA (long)
@pytest.mark.parametrize("causal", [False, True])
def test_attend_matches_sdpa_on_both_cpu_paths(keys, causal):
    import torch.nn.functional as F

    from irra_core.model.fast import CPU_EXPLICIT_ATTENTION_MAX_KEYS, attend

    assert (keys <= CPU_EXPLICIT_ATTENTION_MAX_KEYS) == (keys == 9)
    gen = torch.Generator().manual_seed(keys)
    q, k, v = (torch.randn(2, 3, keys, 8, generator=gen, requires_grad=True) for _ in range(3))
    torch.testing.assert_close(attend(q, k, v, causal), F.scaled_dot_product_attention(q, k, v, is_causal=causal),
                               atol=1e-5, rtol=0)
    mask = torch.rand(2, 1, 1, keys, generator=gen) > 0.3
    mask[..., 0] = True  # every query keeps at least one key
    out = attend(q, k, v, mask=mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-5, rtol=0)
    out.sum().backward()  # differentiable on either path
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_quickgelu_is_x_times_sigmoid_1702x():
    from irra_core.model.clip import QuickGELU

    x = torch.linspace(-12, 12, 2001)
    torch.testing.assert_close(QuickGELU()(x), x * torch.sigmoid(1.702 * x), atol=2e-6, rtol=1e-6)
