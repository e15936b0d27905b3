"""``build_model(cfg, num_classes)``: the entry point from a configuration to a model.

Tower sizes come from ``cfg.model`` for random initialisation (the ``*-cpu`` presets train from scratch),
or - when ``cfg.model.pretrained`` names OpenAI weights or a file - from the weights themselves, as
OpenAI's ``build_model`` infers them (any width and depth loads; head counts follow CLIP's
``width // 64``). Image size and patch stride always come from the configuration; a pretrained
positional embedding is resized to the patch grid with IRRA's bilinear interpolation.
"""
from __future__ import annotations

from torch import nn

from irra_core.config import Config
from irra_core.model.clip import CLIPConfig, clip_config_from_state_dict, interpolate_positional_embedding
from irra_core.model.irra import IRRA
from irra_core.model.precision import apply_precision

__all__ = ["build_model", "clip_config_from_cfg"]


def clip_config_from_cfg(cfg: Config) -> CLIPConfig:
    """Tower sizes of a randomly initialised model (``cfg.model`` sizes, context = ``cfg.data.text_length``)."""
    m = cfg.model
    return CLIPConfig(
        embed_dim=m.embed_dim, image_resolution=tuple(cfg.data.img_size), vision_layers=m.vision_layers,
        vision_width=m.vision_width, vision_patch_size=m.patch_size, stride_size=m.stride_size,
        context_length=cfg.data.text_length, vocab_size=m.vocab_size, transformer_width=m.text_width,
        transformer_heads=m.text_heads, transformer_layers=m.text_layers, vision_heads=m.vision_heads,
        vision_stem=m.conv_stem)


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """Build IRRA or PHP (``cfg.model.arch``) with the heads of ``cfg.loss.names``.

    Args:
        cfg: a :class:`irra_core.config.Config` (``load_config("php-cpu")`` ...).
        num_classes: training identities (size of the ID classifier; ignored without the ``id`` loss).

    Returns:
        An :class:`irra_core.model.irra.IRRA` in training mode, weights in ``cfg.model.precision``'s
        layout (``legacy_fp16``: IRRA's fp16 conversion; autocast modes keep float32 weights).
    """
    if cfg.model.pretrained:
        if cfg.model.conv_stem:
            raise ValueError("model.conv_stem builds a new image stem that pretrained CLIP weights do not have; "
                             "set model.conv_stem=false to load pretrained weights")
        from irra_core.model.pretrained import load_clip_state_dict

        state = load_clip_state_dict(cfg.model.pretrained)
        clip_config = clip_config_from_state_dict(state, image_resolution=tuple(cfg.data.img_size),
                                                  stride_size=cfg.model.stride_size)
        model = IRRA(cfg, clip_config, num_classes)
        load_clip_weights(model.base_model, state, source=str(cfg.model.pretrained))
    else:
        model = IRRA(cfg, clip_config_from_cfg(cfg), num_classes)
    return apply_precision(model, cfg.model.precision)


def load_clip_weights(clip: nn.Module, state: dict, *, source: str) -> None:
    """Load a CLIP state dict into ``clip``: resize the image positional embedding, then a strict load.

    Raises:
        ValueError: keys missing, unexpected or of the wrong shape (every one is listed).
    """
    from irra_core.model.reference import check_state_dict

    state = dict(state)
    grid = clip.visual.grid
    state["visual.positional_embedding"] = interpolate_positional_embedding(state["visual.positional_embedding"], grid)
    check_state_dict(clip, state, source=source)
    clip.load_state_dict(state, strict=True)
