"""Training checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint is a plain dict (loadable with ``torch.load(..., weights_only=True)``)::

    {"format": "irra-workbook/checkpoint-1", "epoch": int, "iteration": int,
     "model": state_dict, "optimizer": state_dict, "scheduler": state_dict, "scaler": state_dict | None,
     "rng": {"torch", "cuda", "numpy", "python"}, "config": Config.to_dict(), "extra": dict}

``epoch`` is the last *finished* epoch and ``iteration`` the optimiser steps taken so far. IRRA's
``best.pth`` stored the model under ``"model"`` too, but its resume re-ran the saved epoch; here a resumed
run starts at ``epoch + 1`` with the RNG streams as they were, so it retraces the uninterrupted run.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from irra_core.io_utils import atomic_torch_save

__all__ = ["FORMAT", "save_checkpoint", "load_checkpoint", "restore_training_state", "rng_state",
           "set_rng_state", "unwrap_model"]

FORMAT = "irra-workbook/checkpoint-1"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers (their keys lack ``module.``)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def rng_state() -> dict:
    """The torch, CUDA, numpy and Python RNG states, as tensors and plain values (weights_only-safe)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": _python_state_to_plain(random.getstate()),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def _python_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, torch.tensor(internal, dtype=torch.int64), gauss]


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only where devices exist)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in internal.tolist()), gauss))
    if state.get("cuda") and torch.cuda.is_available():
        cuda_states = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda_states)


def save_checkpoint(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    scheduler: Any | None, scaler: Any | None, epoch: int, iteration: int, config: dict,
                    extra: dict | None = None) -> Path:
    """Write a checkpoint atomically (temporary file in the same folder, then rename).

    Args:
        path: target file, e.g. ``<run>/checkpoints/last.pt``.
        model: the (possibly DDP-wrapped) model; the unwrapped state dict is saved.
        optimizer, scheduler, scaler: their ``state_dict()`` is saved (``None`` allowed).
        epoch: the last finished epoch (1-based; 0 = none).
        iteration: optimiser steps taken so far.
        config: the resolved config as a plain dict (``Config.to_dict()``).
        extra: small plain values to carry (best metric so far, selection state).
    """
    state = {
        "format": FORMAT, "epoch": int(epoch), "iteration": int(iteration),
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_state(), "config": config, "extra": dict(extra or {}),
    }
    return atomic_torch_save(state, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (weights-only unpickling).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not such a checkpoint (the message names it and what it holds).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt or foreign pickle: say which file
        raise ValueError(f"{path}: cannot be read as a checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        keys = sorted(state)[:10] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path}: not an irra-workbook training checkpoint (format "
                         f"{state.get('format') if isinstance(state, dict) else None!r}, holds {keys}); "
                         f"IRRA/PHP .pth files and other layouts load with irra_core.model.load_model")
    return state


def restore_training_state(state: dict, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                           scheduler: Any | None = None, scaler: Any | None = None, rng: bool = True) -> None:
    """Load a checkpoint's model (strictly), optimiser, scheduler, scaler and RNG states in place."""
    unwrap_model(model).load_state_dict(state["model"], strict=True)
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    if rng:
        set_rng_state(state["rng"])
