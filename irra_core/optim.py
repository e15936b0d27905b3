"""Optimiser parameter groups and optimiser construction (IRRA's ``solver/build.py`` rules, SPEC §1.11, §2.8).

IRRA gives every parameter its own learning rate and weight decay from substring tests on its name,
applied in order so that later rules override earlier ones:

1. default: ``lr``, ``weight_decay``;
2. ``"cross"`` in the name (IRRA's cross-modal MLM branch): lr x ``lr_factor``;
3. ``"bias"``: lr x ``bias_lr_factor`` and weight decay ``weight_decay_bias``;
4. ``"classifier"`` or ``"mlm_head"``: lr x ``lr_factor`` (the weight decay of rule 3 stays).

PHP's release uses exactly these rules. Its pre-release (``lr_groups: php_prerelease``) inserts two more
after rule 2: ``"efp."`` (the EFP blocks; the release's ``"shared_transformer"``) -> x ``transformer_lr_factor``
and the experts and gates (``"moe.experts"``, ``"moe.input_gate"``, ``"moe.task_gate"``; the release's
``feed_forward.*``) -> x ``moe_lr_factor``. Names in the release's spelling are mapped first
(:func:`irra_core.model.php.rename_release_key`), so both spellings get the same settings.

Parameters sharing the same (lr, weight decay) are merged into one group: the update of Adam/AdamW/SGD is
element-wise, so this is mathematically the same as IRRA's one-group-per-tensor, and it lets torch's fused
and multi-tensor (foreach) kernels work on whole groups.
"""
from __future__ import annotations

import warnings
from typing import Iterable

import torch
from torch import nn

from irra_core.config import OptimConfig
from irra_core.model.php import rename_release_key

__all__ = ["param_lr_and_weight_decay", "build_param_groups", "build_optimizer"]

_EFP_KEY = "efp."
_MOE_KEYS = ("moe.experts", "moe.input_gate", "moe.task_gate")


def param_lr_and_weight_decay(name: str, optim: OptimConfig) -> tuple[float, float]:
    """Learning rate and weight decay of one parameter under IRRA's (or PHP pre-release) rules.

    Args:
        name: the parameter's name in ``model.named_parameters()`` (``"cross_attn.in_proj_bias"``), ours or
            the release's (``"shared_transformer.resblocks.0.feed_forward.experts.0.up.bias"``).
        optim: the optimiser section of the config (``lr``, factors, ``lr_groups``).

    Returns:
        ``(lr, weight_decay)`` for that parameter, before any scheduler factor.
    """
    name = rename_release_key(name)
    lr, weight_decay = optim.lr, optim.weight_decay
    if "cross" in name:
        lr = optim.lr * optim.lr_factor
    if optim.lr_groups == "php_prerelease":
        if _EFP_KEY in name:
            lr = optim.lr * optim.transformer_lr_factor
        if any(key in name for key in _MOE_KEYS):
            lr = optim.lr * optim.moe_lr_factor
    elif optim.lr_groups != "irra":
        raise ValueError(f"optim.lr_groups = {optim.lr_groups!r}; choose 'irra' or 'php_prerelease'")
    if "bias" in name:
        lr = optim.lr * optim.bias_lr_factor
        weight_decay = optim.weight_decay_bias
    if "classifier" in name or "mlm_head" in name:
        lr = optim.lr * optim.lr_factor
    return lr, weight_decay


def build_param_groups(named_parameters: Iterable[tuple[str, nn.Parameter]], optim: OptimConfig) -> list[dict]:
    """Group trainable parameters by their (lr, weight decay).

    Args:
        named_parameters: ``model.named_parameters()``; frozen parameters (``requires_grad=False``) are
            left out, as in IRRA.
        optim: the optimiser section of the config.

    Returns:
        Optimiser param groups ``{"params", "lr", "weight_decay", "names"}`` in first-appearance order;
        ``names`` lists the parameter names of each group (for logs and tests).
    """
    groups: dict[tuple[float, float], dict] = {}
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        lr, weight_decay = param_lr_and_weight_decay(name, optim)
        group = groups.setdefault((lr, weight_decay), {"params": [], "lr": lr, "weight_decay": weight_decay,
                                                      "names": []})
        group["params"].append(param)
        group["names"].append(name)
    if not groups:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    return list(groups.values())


def _kernel_options(groups: list[dict], optim: OptimConfig, kind: str) -> dict:
    """``fused=True`` where torch has a fused kernel for these tensors, else ``foreach=True``."""
    if not optim.fused:
        return {}
    params = [p for g in groups for p in g["params"]]
    devices = {p.device.type for p in params}
    float_ok = all(p.is_floating_point() for p in params)
    # fused Adam/AdamW/SGD exist for CUDA and (torch >= 2.4) CPU; they need one device type per optimiser
    if float_ok and len(devices) == 1 and devices <= {"cuda", "cpu"}:
        return {"fused": True}
    return {"foreach": True}


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """IRRA's optimisers over :func:`build_param_groups`.

    ``Adam`` uses IRRA's ``eps = optim.adam_eps`` (1e-3) with coupled L2 weight decay, ``AdamW`` eps 1e-8
    with decoupled decay, ``SGD`` momentum ``optim.momentum``. Betas are ``(optim.alpha, optim.beta)``.

    Args:
        model: the model whose ``named_parameters()`` are optimised (unwrap DDP first or not: the
            ``module.`` prefix does not change any rule).
        optim: the optimiser section of the config.
    """
    groups = build_param_groups(model.named_parameters(), optim)
    betas = (optim.alpha, optim.beta)
    kinds = {"Adam": lambda **kw: torch.optim.Adam(groups, lr=optim.lr, betas=betas, eps=optim.adam_eps, **kw),
             "AdamW": lambda **kw: torch.optim.AdamW(groups, lr=optim.lr, betas=betas, eps=1e-8, **kw),
             "SGD": lambda **kw: torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, **kw)}
    if optim.optimizer not in kinds:
        raise ValueError(f"optim.optimizer = {optim.optimizer!r}; choose one of {sorted(kinds)}")
    options = _kernel_options(groups, optim, optim.optimizer)
    try:
        return kinds[optim.optimizer](**options)
    except (RuntimeError, TypeError, ValueError) as exc:
        if not options.get("fused"):
            raise
        # e.g. a dtype the fused kernel does not cover on this device: the multi-tensor path is exact too
        warnings.warn(f"fused {optim.optimizer} unavailable here ({exc}); using foreach", stacklevel=2)
        return kinds[optim.optimizer](foreach=True)
