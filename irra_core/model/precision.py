"""Numeric precision of the model: IRRA's ``convert_weights`` fp16 layout (``legacy_fp16``).

``fp32`` keeps every parameter in float32; ``bf16`` / ``fp16`` are autocast modes the engine enters
around the forward pass (the model is autocast-safe: LayerNorms and softmaxes run in float32, features are
returned as float32). ``legacy_fp16`` reproduces IRRA's (and PHP's) pure-fp16 model (SPEC §1.9): the
weights and biases of every Linear / Conv, attention ``in_proj_weight`` / ``in_proj_bias`` and the
parameters named ``text_projection`` / ``proj`` become float16, while LayerNorms, embeddings, positional
and class embeddings stay float32 (LayerNorm computes in float32 and casts back). PHP's extra float32
parameters (``comb_param``, ``moe.alpha``) stay float32, as in its checkpoints.
"""
from __future__ import annotations

import torch
from torch import nn

from irra_core.model.clip import Attention

__all__ = ["PRECISIONS", "AUTOCAST_DTYPES", "convert_weights_legacy_fp16", "apply_precision"]

PRECISIONS = ("fp32", "bf16", "fp16", "legacy_fp16")
#: precision -> dtype the engine autocasts to (None: no autocast)
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "legacy_fp16": None}
_HALF_ATTRIBUTES = ("text_projection", "proj")


def convert_weights_legacy_fp16(model: nn.Module) -> nn.Module:
    """Cast ``model`` in place to IRRA's fp16 layout (``convert_weights``) and return it."""
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            module.weight.data = module.weight.data.half()
            if module.bias is not None:
                module.bias.data = module.bias.data.half()
        if isinstance(module, Attention):
            module.in_proj_weight.data = module.in_proj_weight.data.half()
            module.in_proj_bias.data = module.in_proj_bias.data.half()
        for name in _HALF_ATTRIBUTES:
            param = getattr(module, name, None)
            if isinstance(param, nn.Parameter):
                param.data = param.data.half()
    return model


def apply_precision(model: nn.Module, precision: str) -> nn.Module:
    """Apply the weight layout of ``precision`` (only ``legacy_fp16`` changes weights)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    if precision == "legacy_fp16":
        convert_weights_legacy_fp16(model)
    return model
