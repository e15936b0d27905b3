"""Import of IRRA / PHP log folders (``configs.yaml`` + ``best.pth``, SPEC §1.15) as models.

* ``configs.yaml`` is read with a *safe* YAML loader that only adds Python tuples (IRRA writes
  ``img_size`` and ``milestones`` as ``!!python/tuple``); any other Python tag is refused.
* checkpoints are read with ``torch.load(..., weights_only=True)``; one that needs arbitrary unpickling
  is refused with the reason.
* dimensions come from the state dict (tower sizes, cnum, experts, reduction, EFP depth, classes,
  cross-modal depth), head counts and losses from the options (towers: CLIP's ``width // 64``).
* keys are matched exactly: missing, unexpected and mis-shaped keys are an error listing each one
  (IRRA's suffix matching silently keeps random values for missing keys). Two kinds of keys are
  accepted and dropped, and listed in ``model.reference_info["dropped_keys"]``: PHP's routing counters
  (``*.expert_count_accum``, ``*.token_count_accum``: persistent buffers that never affect an output
  and leak between passes, SPEC §2.9) and PHP's dead ``safl.pos_embeding`` parameter (never used in a
  forward pass, SPEC §2.4).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
import yaml
from torch import nn

from irra_core.model.clip_state import check_state_dict
from irra_core.model.irra import IRRA
from irra_core.model.load import (DROPPED_KEY_PATTERNS, REFERENCE_BEHAVIOUR, CheckpointError,  # noqa: F401 - re-exported
                                  read_reference_options)

__all__ = ["load_reference_run", "read_reference_options", "read_state_dict", "check_state_dict",
           "REFERENCE_BEHAVIOUR", "DROPPED_KEY_PATTERNS"]

def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint's state dict with ``weights_only=True`` (``{"model": sd, ...}`` or a bare sd).

    A ``module.`` prefix (DistributedDataParallel) is removed; see :func:`irra_core.model.load.read_checkpoint`
    for everything else a checkpoint may look like.
    """
    from irra_core.model.load import _torch_load, normalise_state_dict

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    state, _, dropped = normalise_state_dict(_torch_load(path), source=str(path))
    return state


def load_reference_run(run_dir: str | Path, *, reference_behaviour: bool = False, checkpoint: str = "best.pth",
                       **overrides: Any) -> IRRA:
    """An IRRA or PHP log folder -> a model in eval mode (float32 unless ``precision`` is overridden).

    A thin name for :func:`irra_core.model.load.load_model` on a log folder (which reads every other layout too).

    Args:
        run_dir: folder with ``configs.yaml`` and ``best.pth`` (IRRA's checkpointer layout).
        reference_behaviour: every switch at the release's value (:data:`REFERENCE_BEHAVIOUR`: batch-axis
            EFP attention, one shared gate, CRFM over text padding, ITC x5, MLM x0.5). Without it the model
            behaves as trained except EFP attention, which is per-sample (``efp_attention="tokens"``).
        checkpoint: file name inside ``run_dir``.
        **overrides: fields of ``cfg.model`` / ``cfg.loss`` (``efp_attention="tokens"``, ``itc_weight=1.0``)
            or dotted keys, applied last.

    Returns:
        :class:`IRRA` with ``reference_info = {"run_dir", "options", "dropped_keys", "notes"}`` and
        ``load_report``; its configuration is ``model.cfg``.

    Raises:
        FileNotFoundError: no ``configs.yaml`` or checkpoint in ``run_dir``.
        ValueError: the checkpoint does not fit (every missing, unexpected, mis-shaped key listed).
    """
    from irra_core.model.load import load_model

    run_dir = Path(run_dir)
    if not (run_dir / "configs.yaml").exists():
        raise FileNotFoundError(f"{run_dir / 'configs.yaml'} does not exist (an IRRA/PHP run folder holds "
                                f"configs.yaml and best.pth)")
    return load_model(run_dir, checkpoint=checkpoint, reference_behaviour=reference_behaviour, **overrides)
