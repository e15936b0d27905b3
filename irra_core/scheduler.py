"""IRRA's warm-up + decay learning-rate schedule (``solver/lr_scheduler.py``, SPEC §1.12).

The schedule is a function of the training time ``t`` measured in epochs. IRRA steps once per epoch after
the epoch, so epoch ``e`` (1-based) trains at ``t = e - 1``. The per-iteration mode steps after every
optimiser step with ``t = (optimiser steps so far) / steps_per_epoch``: it agrees with the per-epoch
schedule at every epoch boundary and moves smoothly in between.

With W warm-up epochs, T total epochs and r = (t - W) / (T - W):

* ``t < W``: factor = ``warmup_factor`` (constant) or ``warmup_factor (1 - t/W) + t/W`` (linear);
* ``step``: ``gamma ** bisect_right(milestones, t)``;  ``exp``: ``power ** r``;  ``linear``: ``1 - r``;
* ``cosine``: ``target_lr + (base_lr - target_lr) (1 + cos(pi r)) / 2``;
* ``poly``: ``target_lr + (base_lr - target_lr) power ** (1 - r)`` (IRRA's "poly" *rises* towards base_lr;
  kept as is for parity).

``target_lr`` is an absolute learning rate; every other mode multiplies each group's base lr.
"""
from __future__ import annotations

import math
from bisect import bisect_right
from typing import Sequence

import torch
from torch.optim.lr_scheduler import LRScheduler

from irra_core.config import OptimConfig

__all__ = ["lr_at", "WarmupDecayLR", "build_scheduler"]

MODES = ("cosine", "step", "exp", "poly", "linear")


def lr_at(t: float, base_lr: float, *, mode: str = "cosine", total_epochs: int = 60, warmup_epochs: int = 5,
          warmup_factor: float = 0.1, warmup_method: str = "linear", milestones: Sequence[int] = (20, 50),
          gamma: float = 0.1, power: float = 0.9, target_lr: float = 0.0) -> float:
    """Learning rate at training time ``t`` (in epochs; epoch e trains at t = e - 1) for one base lr."""
    if t < warmup_epochs:
        if warmup_method == "constant":
            factor = warmup_factor
        elif warmup_method == "linear":
            alpha = t / warmup_epochs
            factor = warmup_factor * (1 - alpha) + alpha
        else:
            raise ValueError(f"warmup_method {warmup_method!r}; choose 'linear' or 'constant'")
        return base_lr * factor
    if mode == "step":
        return base_lr * gamma ** bisect_right(list(milestones), t)
    # a run no longer than its warm-up has no decay phase (IRRA divides by zero here); treat it as over
    ratio = (t - warmup_epochs) / (total_epochs - warmup_epochs) if total_epochs > warmup_epochs else 1.0
    if mode == "exp":
        return base_lr * power ** ratio
    if mode == "linear":
        return base_lr * (1 - ratio)
    if mode == "cosine":
        return target_lr + (base_lr - target_lr) * 0.5 * (1 + math.cos(math.pi * ratio))
    if mode == "poly":
        return target_lr + (base_lr - target_lr) * power ** (1 - ratio)
    raise ValueError(f"lrscheduler {mode!r}; choose one of {list(MODES)}")


class WarmupDecayLR(LRScheduler):
    """:func:`lr_at` as a torch scheduler; ``step()`` after every epoch, or after every optimiser step
    when ``steps_per_epoch > 1`` (the per-iteration mode).

    Its ``state_dict`` holds ``last_epoch`` (scheduler steps taken) and the base lrs, so a resumed run
    continues the schedule exactly.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, mode: str = "cosine", total_epochs: int = 60,
                 warmup_epochs: int = 5, warmup_factor: float = 0.1, warmup_method: str = "linear",
                 milestones: Sequence[int] = (20, 50), gamma: float = 0.1, power: float = 0.9,
                 target_lr: float = 0.0, steps_per_epoch: int = 1, last_epoch: int = -1) -> None:
        if mode not in MODES:
            raise ValueError(f"lrscheduler {mode!r}; choose one of {list(MODES)}")
        if warmup_method not in ("linear", "constant"):
            raise ValueError(f"warmup_method {warmup_method!r}; choose 'linear' or 'constant'")
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones should be increasing, got {list(milestones)}")
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.options = dict(mode=mode, total_epochs=total_epochs, warmup_epochs=warmup_epochs,
                            warmup_factor=warmup_factor, warmup_method=warmup_method,
                            milestones=tuple(milestones), gamma=gamma, power=power, target_lr=target_lr)
        self.steps_per_epoch = steps_per_epoch
        super().__init__(optimizer, last_epoch)

    @property
    def epoch_time(self) -> float:
        """Training time t in epochs at the current scheduler position."""
        return self.last_epoch / self.steps_per_epoch

    def get_lr(self) -> list[float]:  # closed form: no dependence on the previous lr, so resume is exact
        return [lr_at(self.epoch_time, base_lr, **self.options) for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig, *, total_epochs: int,
                    steps_per_epoch: int = 1) -> WarmupDecayLR:
    """The config's schedule; ``optim.scheduler_step == "iteration"`` uses ``steps_per_epoch``.

    Args:
        optimizer: built by :func:`irra_core.optim.build_optimizer` (each group's lr is its base lr).
        optim: the optimiser section (``lrscheduler``, ``warmup_*``, ``milestones``...).
        total_epochs: the schedule's horizon (``train.num_epoch``).
        steps_per_epoch: optimiser steps per epoch; used only in the per-iteration mode.
    """
    per_iteration = optim.scheduler_step == "iteration"
    return WarmupDecayLR(optimizer, mode=optim.lrscheduler, total_epochs=total_epochs,
                         warmup_epochs=optim.warmup_epochs, warmup_factor=optim.warmup_factor,
                         warmup_method=optim.warmup_method, milestones=optim.milestones, gamma=optim.gamma,
                         power=optim.power, target_lr=optim.target_lr,
                         steps_per_epoch=steps_per_epoch if per_iteration else 1)
