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

``optim.sparse_embedding`` (the ``cpu`` presets) gives the token embedding row-sparse gradients and steps it with
:class:`RowSparseAdamW`, which equals ``torch.optim.AdamW`` but does not read and write the 49,408-row table's
moments every step (see the class).
"""
from __future__ import annotations

import math
import warnings
from typing import Iterable

import torch
from torch import nn

from irra_core.config import OptimConfig
from irra_core.model.php import rename_release_key

__all__ = ["param_lr_and_weight_decay", "build_param_groups", "build_optimizer", "RowSparseAdamW",
           "set_sparse_embeddings", "sparse_embedding_blockers"]

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


class RowSparseAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` that also steps parameters with row-sparse gradients (``nn.Embedding(sparse=True)``),
    with the same result as AdamW on the dense gradient.

    Why: a caption batch touches a few hundred of the token embedding's 49,408 rows, yet a dense gradient makes
    autograd fill a (49,408, D) zero tensor per text pass and AdamW read and write every row's moments. For a
    row that has never had a non-zero gradient, AdamW's moments are exactly zero, so its update
    ``m / (sqrt(v) + eps)`` is exactly zero and only the decoupled decay ``p <- p (1 - lr wd)`` changes it.
    Here the decay runs on the whole table, and AdamW's moment and parameter update (Loshchilov & Hutter 2019,
    Algorithm 2, as in ``torch.optim.AdamW``) runs on the gathered rows that have ever had a gradient (their
    moments keep evolving when the current batch does not use them, exactly as in AdamW). Dense-gradient
    parameters take AdamW's own (fused or foreach) step.

    The state is AdamW's (``step``, full-size ``exp_avg``/``exp_avg_sq``), so checkpoints move between the two
    optimisers; results agree with AdamW to float rounding (``tests/test_optim.py``). On the ``cpu`` presets
    it saves ~25 ms, 5-10%, of an IRRA or PHP step (``benchmarks/README.md``, "Third pass").

    Raises:
        ValueError: a sparse-gradient parameter in a group with ``amsgrad``, ``maximize``, ``capturable`` or
            ``differentiable`` (not supported here), or a sparse gradient on a parameter that is not 2-D.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._touched: dict[torch.Tensor, torch.Tensor] = {}  # param -> (rows,) bool: ever had a gradient

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._touched.clear()  # rebuilt from the loaded second moments

    @torch.no_grad()
    def _sparse_step(self, p: torch.Tensor, group: dict) -> None:
        if group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"]:
            raise ValueError("RowSparseAdamW: amsgrad, maximize, capturable and differentiable are not supported "
                             "for sparse gradients; turn optim.sparse_embedding off")
        if p.dim() != 2:
            raise ValueError(f"RowSparseAdamW: sparse gradient on a {p.dim()}-D parameter (expected a (rows, D) table)")
        grad = p.grad.coalesce()
        state = self.state[p]
        if not state:  # AdamW's layout: the step count on the parameter's device when fused
            state["step"] = (torch.zeros((), dtype=torch.float32, device=p.device) if group["fused"]
                             else torch.tensor(0.0, dtype=torch.float32))
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        touched = self._touched.get(p)
        if touched is None:  # first step or after a load: a row with v != 0 has had a non-zero gradient
            touched = self._touched[p] = state["exp_avg_sq"].ne(0).any(dim=1)
        index, values = grad.indices()[0], grad.values()
        touched[index] = True
        rows = touched.nonzero().squeeze(1)
        state["step"] += 1
        step = float(state["step"])
        lr, weight_decay, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        p.mul_(1.0 - lr * weight_decay)
        g = torch.zeros(rows.numel(), p.shape[1], dtype=values.dtype, device=p.device)
        g.index_add_(0, torch.searchsorted(rows, index), values)
        exp_avg, exp_avg_sq = state["exp_avg"][rows], state["exp_avg_sq"][rows]
        exp_avg.lerp_(g, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        denom = (exp_avg_sq.sqrt() / math.sqrt(1.0 - beta2 ** step)).add_(eps)
        p_rows = p[rows]
        p_rows.addcdiv_(exp_avg, denom, value=-lr / (1.0 - beta1 ** step))
        p[rows], state["exp_avg"][rows], state["exp_avg_sq"][rows] = p_rows, exp_avg, exp_avg_sq

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        held = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    self._sparse_step(p, group)
                    held.append((p, p.grad))
                    p.grad = None  # AdamW's own step skips parameters without a gradient
        try:
            super().step()
        finally:
            for p, grad in held:
                p.grad = grad
        return loss


def set_sparse_embeddings(model: nn.Module, sparse: bool = True) -> int:
    """Give every ``nn.Embedding`` of ``model`` row-sparse (``sparse=True``) or dense gradients; the weights are
    unchanged. Returns how many. Only :class:`RowSparseAdamW` (``optim.sparse_embedding``) steps sparse ones."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            module.sparse = sparse
            count += 1
    return count


def sparse_embedding_blockers(cfg, distributed: bool = False) -> list[str]:
    """Why ``optim.sparse_embedding`` must keep dense gradients in this run (empty: it applies): DDP, gradient
    clipping, fp16 loss scaling, or an optimiser other than AdamW. ``cfg`` is the run's :class:`Config`."""
    return [reason for reason, on in (("DDP", distributed), ("train.grad_clip", cfg.train.grad_clip > 0),
                                      ("fp16 loss scaling", cfg.model.precision == "fp16"),
                                      (f"optim.optimizer {cfg.optim.optimizer}", cfg.optim.optimizer != "AdamW"))
            if on]


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
    adamw = RowSparseAdamW if optim.sparse_embedding else torch.optim.AdamW
    kinds = {"Adam": lambda **kw: torch.optim.Adam(groups, lr=optim.lr, betas=betas, eps=optim.adam_eps, **kw),
             "AdamW": lambda **kw: adamw(groups, lr=optim.lr, betas=betas, eps=1e-8, **kw),
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
