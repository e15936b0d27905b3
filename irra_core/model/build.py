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
from irra_core.model.architectures import create_model
from irra_core.model.clip import CLIPConfig
from irra_core.model.clip_state import clip_config_from_cfg, clip_config_from_state_dict
from irra_core.model.precision import apply_precision

__all__ = ["build_model", "clip_config_from_cfg"]


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """Build IRRA or PHP (``cfg.model.arch``) with the heads of ``cfg.loss.names``.

    Args:
        cfg: a :class:`irra_core.config.Config` (``load_config("php-cpu")`` ...).
        num_classes: training identities (size of the ID classifier; ignored without the ``id`` loss).

    Returns:
        An :class:`irra_core.model.irra.IRRA` (or its subclass :class:`~irra_core.model.php.PHP`, the class
        ``ARCHITECTURES[cfg.model.arch]`` of :mod:`irra_core.model.architectures`) in training mode, weights in ``cfg.model.precision``'s
        layout (``legacy_fp16``: IRRA's fp16 conversion; autocast modes keep float32 weights).
    """
    if cfg.model.pretrained and not cfg.model.init_from:  # init_from holds the towers (model/load.py)
        # the cpu presets' tower deviations (model/stem.py) have no weights in pretrained CLIP: name them all at once
        fixes = [fix for on, fix in ((cfg.model.conv_stem, "model.conv_stem=false"),
                                     (cfg.model.text_conv, "model.text_conv=0")) if on]
        if fixes:
            raise ValueError("pretrained CLIP weights have no conv stem or token convolution (the cpu presets' "
                             f"deviations); set {' and '.join(fixes)} to load pretrained weights")
        from irra_core.model.pretrained import load_clip_state_dict, load_clip_weights

        state = load_clip_state_dict(cfg.model.pretrained)
        clip_config = clip_config_from_state_dict(state, image_resolution=tuple(cfg.data.img_size),
                                                  stride_size=cfg.model.stride_size)
        model = create_model(cfg, clip_config, num_classes)
        load_clip_weights(model.base_model, state, source=str(cfg.model.pretrained))
    else:
        model = create_model(cfg, clip_config_from_cfg(cfg), num_classes)
    return apply_precision(model, cfg.model.precision)
