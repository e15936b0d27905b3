"""model.text_conv: a causal token convolution that starts as CLIP's text tower, sees only earlier tokens, travels
with the weights, and is refused with pretrained CLIP weights."""
from __future__ import annotations

import pytest
import torch

from irra_core.config import ConfigError, load_config
from irra_core.model import build_model
from irra_core.model.clip import CLIP, CLIPConfig
from irra_core.model.clip_state import clip_config_from_state_dict
from irra_core.model.stem import CausalTokenConv, text_conv_size

SIZES = dict(embed_dim=32, image_resolution=(32, 16), vision_layers=1, vision_width=32, vision_patch_size=16,
             stride_size=16, context_length=12, vocab_size=50, transformer_width=32, transformer_heads=2,
             transformer_layers=2, vision_heads=2)


def _towers(kernel: int) -> tuple[CLIP, CLIP]:
    torch.manual_seed(0)
    plain = CLIP(CLIPConfig(**SIZES)).eval()
    conv = CLIP(CLIPConfig(**SIZES, text_conv=kernel)).eval()
    missing, unexpected = conv.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["text_conv.conv.bias", "text_conv.conv.weight"] and not unexpected
    return plain, conv


def test_a_fresh_convolution_leaves_the_tower_unchanged():
    plain, conv = _towers(3)
    text = torch.randint(1, 50, (4, 12))
    assert torch.equal(plain.encode_text(text), conv.encode_text(text))


def test_each_position_sees_itself_and_the_k_minus_1_tokens_before_it():
    _, conv = _towers(3)
    with torch.no_grad():
        conv.text_conv.conv.weight.normal_(std=0.1)
        conv.text_conv.conv.bias.normal_(std=0.1)
    embeddings = torch.randn(2, 10, 32)
    changed = embeddings.clone()
    changed[:, 5] += 1.0
    moved = (conv.text_conv(changed) - conv.text_conv(embeddings)).abs().amax(dim=(0, 2))  # (L,)
    assert torch.all(moved[:5] == 0)  # earlier positions never see token 5
    assert torch.all(moved[5:8] > 1e-3)  # token 5 itself and the next k - 1 = 2 positions do
    assert torch.all(moved[8:] == 0)  # beyond the kernel: nothing
    # through the causal tower: the features before the changed token stay put, from it on they move
    text = torch.randint(1, 50, (2, 12))
    other = text.clone()
    other[:, 7] = (other[:, 7] % 49) + 1
    before, after = conv.encode_text(text), conv.encode_text(other)
    assert torch.allclose(before[:, :7], after[:, :7], atol=1e-6)
    assert not torch.allclose(before[:, 7:], after[:, 7:], atol=1e-3)


def test_the_kernel_is_read_back_from_the_weights():
    _, conv = _towers(4)
    state = conv.state_dict()
    assert text_conv_size(state) == 4
    assert clip_config_from_state_dict(state, image_resolution=(32, 16), stride_size=16).text_conv == 4
    plain_state = {k: v for k, v in state.items() if not k.startswith("text_conv.")}
    assert text_conv_size(plain_state) == 0


def test_presets_validation_and_pretrained():
    assert load_config("irra-cpu").model.text_conv == 3 and load_config("php-cpu").model.text_conv == 3
    assert load_config("irra").model.text_conv == 0 and load_config("php").model.text_conv == 0
    with pytest.raises(ConfigError, match="model.text_conv"):
        load_config("irra-cpu", {"model.text_conv": -1})
    with pytest.raises(ValueError, match="kernel of 0 tokens"):
        CausalTokenConv(8, 0)
    cfg = load_config("irra-cpu", {"model.pretrained": "ViT-B/16", "model.conv_stem": False}, smoke=True)
    with pytest.raises(ValueError, match=r"set model\.text_conv=0 to load"):
        build_model(cfg, 4)
    both = load_config("irra-cpu", {"model.pretrained": "ViT-B/16"}, smoke=True)  # one error names both fixes
    with pytest.raises(ValueError, match=r"set model\.conv_stem=false and model\.text_conv=0 to load"):
        build_model(both, 4)


def test_a_checkpoint_with_the_convolution_sets_its_kernel(tmp_path):
    from irra_core.model.load import init_from_checkpoint, resolve_init_config

    torch.manual_seed(0)
    trained = build_model(load_config("irra-cpu", {"model.text_conv": 2}, smoke=True), num_classes=4)
    with torch.no_grad():
        trained.base_model.text_conv.conv.weight.normal_(std=0.1)
    torch.save(trained.state_dict(), tmp_path / "model.pth")
    cfg = load_config("irra-cpu", {"model.init_from": str(tmp_path / "model.pth"), "model.text_conv": 0}, smoke=True)
    notes = resolve_init_config(cfg)
    assert cfg.model.text_conv == 2 and any("model.text_conv: 0 -> 2" in n for n in notes)
    model = build_model(cfg, num_classes=4)
    report = init_from_checkpoint(model, cfg.model.init_from)
    assert "base_model.text_conv.conv.weight" in report.loaded
    assert torch.equal(model.base_model.text_conv.conv.weight, trained.base_model.text_conv.conv.weight)
