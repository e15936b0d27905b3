"""CLIP state dicts -> tower sizes, the positional-embedding resize IRRA applies when loading CLIP weights, the
tower sizes of a configuration, and the check that a state dict fits a module (every mismatch listed).

Used by every loader of CLIP weights (:mod:`irra_core.model.build`, :mod:`irra_core.model.pretrained`,
:mod:`irra_core.model.load`); the towers themselves are in :mod:`irra_core.model.clip`.
"""
from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from irra_core.model.clip import CLIPConfig
from irra_core.model.stem import stem_patch_size, text_conv_size

if TYPE_CHECKING:
    from irra_core.config import Config

__all__ = ["clip_config_from_state_dict", "clip_config_from_cfg", "interpolate_positional_embedding", "check_state_dict"]

_BLOCK_KEY = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.attn\.in_proj_weight$")


def clip_config_from_state_dict(state_dict: Mapping[str, torch.Tensor], *, image_resolution: tuple[int, int],
                                stride_size: int, vision_heads: int | None = None,
                                transformer_heads: int | None = None) -> CLIPConfig:
    """Infer every tower hyper-parameter from a CLIP state dict (keys without ``base_model.``).

    Widths come from ``visual.conv1.weight`` and ``ln_final.weight``, the embedding dimension from
    ``text_projection``, the patch size from the conv kernel, layer counts from the block keys, the
    context length and vocabulary from the embeddings. Head counts are not stored in a state dict; like
    OpenAI's ``build_model`` (and IRRA) they default to ``width // 64``.

    Raises:
        KeyError: a required key is missing (the message lists what was found).
    """
    required = ("visual.conv1.weight", "ln_final.weight", "text_projection", "positional_embedding",
                "token_embedding.weight")
    missing = [k for k in required if k not in state_dict]
    if missing:
        raise KeyError(f"not a CLIP state dict: missing {missing}; first keys found: {list(state_dict)[:8]}")
    vision_width = state_dict["visual.conv1.weight"].shape[0]
    text_width = state_dict["ln_final.weight"].shape[0]
    layers = {"visual": set(), "text": set()}
    for key in state_dict:
        match = _BLOCK_KEY.match(key)
        if match:
            layers["visual" if match.group(1) else "text"].add(int(match.group(2)))
    return CLIPConfig(
        embed_dim=state_dict["text_projection"].shape[1],
        image_resolution=tuple(int(v) for v in image_resolution),
        vision_layers=len(layers["visual"]),
        vision_width=vision_width,
        vision_patch_size=stem_patch_size(state_dict) or state_dict["visual.conv1.weight"].shape[-1],
        stride_size=int(stride_size),
        context_length=state_dict["positional_embedding"].shape[0],
        vocab_size=state_dict["token_embedding.weight"].shape[0],
        transformer_width=text_width,
        transformer_heads=transformer_heads or max(1, text_width // 64),
        transformer_layers=len(layers["text"]),
        vision_heads=vision_heads or max(1, vision_width // 64),
        vision_stem=stem_patch_size(state_dict) is not None,
        text_conv=text_conv_size(state_dict),
    )


def interpolate_positional_embedding(posemb: torch.Tensor, grid: tuple[int, int],
                                     old_grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Resize a ViT positional embedding (1 + P_old, D) to ``grid`` (IRRA's ``resize_pos_embed``).

    The CLS row is kept; the patch rows, laid out on ``old_grid`` (a square when not given, as in
    OpenAI's checkpoints), are resized with bilinear interpolation (``align_corners=False``).
    """
    cls, patches = posemb[:1], posemb[1:]
    if old_grid is None:
        side = math.isqrt(patches.shape[0])
        if side * side != patches.shape[0]:
            raise ValueError(f"cannot infer the patch grid of a positional embedding with {patches.shape[0]} "
                             f"patch rows (not a square); pass old_grid")
        old_grid = (side, side)
    if tuple(old_grid) == tuple(grid):
        return posemb
    dtype = posemb.dtype
    image = patches.float().reshape(1, old_grid[0], old_grid[1], -1).permute(0, 3, 1, 2)
    image = F.interpolate(image, size=tuple(grid), mode="bilinear", align_corners=False)
    patches = image.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
    return torch.cat([cls.float(), patches], dim=0).to(dtype)


def clip_config_from_cfg(cfg: Config) -> CLIPConfig:
    """Tower sizes of a randomly initialised model (``cfg.model`` sizes, context = ``cfg.data.text_length``)."""
    m = cfg.model
    return CLIPConfig(
        embed_dim=m.embed_dim, image_resolution=tuple(cfg.data.img_size), vision_layers=m.vision_layers,
        vision_width=m.vision_width, vision_patch_size=m.patch_size, stride_size=m.stride_size,
        context_length=cfg.data.text_length, vocab_size=m.vocab_size, transformer_width=m.text_width,
        transformer_heads=m.text_heads, transformer_layers=m.text_layers, vision_heads=m.vision_heads,
        vision_stem=m.conv_stem, text_conv=m.text_conv)


def check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Raise ValueError listing every missing, unexpected or mis-shaped key of ``state`` for ``module``."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        def block(title: str, items: list[str]) -> str:
            return f"\n  {title} ({len(items)}):\n    " + "\n    ".join(items) if items else ""
        raise ValueError(f"{source} does not fit the model:" + block("missing keys", missing)
                         + block("unexpected keys", unexpected) + block("shape mismatches", shapes))
