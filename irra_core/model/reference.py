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

import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml
from torch import nn

from irra_core.config import Config, ModelConfig, LossConfig, config_from_reference_args, set_value, validate
from irra_core.model.clip_state import clip_config_from_state_dict
from irra_core.model.architectures import create_model
from irra_core.model.irra import IRRA
from irra_core.model.php import rename_release_keys
from irra_core.model.precision import apply_precision

__all__ = ["load_reference_run", "read_reference_options", "read_state_dict", "check_state_dict",
           "REFERENCE_BEHAVIOUR", "DROPPED_KEY_PATTERNS"]

#: per architecture, every model switch at the value of the released code (PHP); IRRA has no model-level switch
REFERENCE_BEHAVIOUR = {"php": {"efp_attention": "batch", "moe_gating": "shared", "crfm_attend_padding": True,
                               "itc_weight": 5.0, "mlm_weight": 0.5}}
#: checkpoint keys accepted and dropped (see the module docstring)
DROPPED_KEY_PATTERNS = (re.compile(r"(^|\.)expert_count_accum$"), re.compile(r"(^|\.)token_count_accum$"),
                        re.compile(r"^safl\.pos_embeding$"))


class _OptionsLoader(yaml.SafeLoader):
    """SafeLoader plus ``!!python/tuple`` (read as a tuple); nothing else beyond safe YAML."""


_OptionsLoader.add_constructor("tag:yaml.org,2002:python/tuple",
                               lambda loader, node: tuple(loader.construct_sequence(node)))


def read_reference_options(path: str | Path) -> dict:
    """Read an IRRA/PHP ``configs.yaml`` (the argument namespace) without unsafe YAML loading."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (an IRRA/PHP run folder holds configs.yaml and best.pth)")
    try:
        options = yaml.load(path.read_text(encoding="utf-8"), Loader=_OptionsLoader)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: cannot read it with a safe YAML loader (only !!python/tuple is accepted "
                         f"beyond plain YAML): {exc}") from exc
    if not isinstance(options, dict):
        raise ValueError(f"{path}: expected a mapping of options, got {type(options).__name__}")
    return options


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint's state dict with ``weights_only=True`` (``{"model": sd, ...}`` or a bare sd).

    A ``module.`` prefix (DistributedDataParallel) is removed.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: refused - reading it needs arbitrary unpickling (which can run code), and "
                         f"checkpoints are read with torch.load(weights_only=True). torch says: {reason}. If you "
                         f"trust the file, re-save its state dict with torch.save(model.state_dict(), ...).") from exc
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict or a dict with a 'model' state dict")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


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


def _count(state: Mapping[str, Any], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in state if (m := regex.match(k))})


def _apply_overrides(cfg: Config, overrides: Mapping[str, Any]) -> None:
    model_keys = {f for f in ModelConfig.__dataclass_fields__}
    loss_keys = {f for f in LossConfig.__dataclass_fields__}
    for key, value in overrides.items():
        if "." in key:
            set_value(cfg, key, value, source="load_reference_run")
        elif key in model_keys:
            set_value(cfg, f"model.{key}", value, source="load_reference_run")
        elif key in loss_keys or key.endswith("_weight"):  # itc_weight=1.0 sets loss.weights.itc
            set_value(cfg, f"loss.{key}", value, source="load_reference_run")
        else:
            raise ValueError(f"load_reference_run: unknown override {key!r}; use a field of cfg.model "
                             f"({sorted(model_keys)}) or cfg.loss ({sorted(loss_keys)})")


def load_reference_run(run_dir: str | Path, *, reference_behaviour: bool = False, checkpoint: str = "best.pth",
                       **overrides: Any) -> IRRA:
    """An IRRA or PHP log folder -> a model in eval mode (float32 unless ``precision`` is overridden).

    Args:
        run_dir: folder with ``configs.yaml`` and ``best.pth`` (IRRA's checkpointer layout).
        reference_behaviour: every switch at the release's value (:data:`REFERENCE_BEHAVIOUR`: batch-axis
            EFP attention, one shared gate, CRFM over text padding, ITC x5, MLM x0.5). Without it the model
            behaves as trained except EFP attention, which is per-sample (``efp_attention="tokens"``).
        checkpoint: file name inside ``run_dir``.
        **overrides: fields of ``cfg.model`` / ``cfg.loss`` (``efp_attention="tokens"``, ``itc_weight=1.0``)
            or dotted keys, applied last.

    Returns:
        :class:`IRRA` with ``reference_info = {"run_dir", "options", "dropped_keys", "notes"}``; its
        configuration is ``model.cfg``.
    """
    run_dir = Path(run_dir)
    options = read_reference_options(run_dir / "configs.yaml")
    cfg = config_from_reference_args(options)
    set_value(cfg, "model.pretrained", "")  # the weights are in the checkpoint, never downloaded
    set_value(cfg, "model.precision", "fp32")
    if reference_behaviour:
        _apply_overrides(cfg, REFERENCE_BEHAVIOUR.get(cfg.model.arch, {}))
    _apply_overrides(cfg, overrides)

    state = read_state_dict(run_dir / checkpoint)
    dropped = [k for k in state if any(p.search(k) for p in DROPPED_KEY_PATTERNS)]
    state = rename_release_keys({k: v for k, v in state.items() if k not in dropped})  # safl -> crfm ...
    base = {k[len("base_model."):]: v for k, v in state.items() if k.startswith("base_model.")}
    clip_config = clip_config_from_state_dict(base, image_resolution=tuple(cfg.data.img_size),
                                              stride_size=cfg.model.stride_size)
    notes: list[str] = []
    if "crfm.part_tokens" in state:
        dim = state["crfm.part_tokens"].shape[1]
        set_value(cfg, "model.cnum", int(state["crfm.part_tokens"].shape[0]))
        set_value(cfg, "model.moe_layers", _count(state, r"^efp\.resblocks\.(\d+)\."))
        set_value(cfg, "model.num_experts", _count(state, r"^efp\.resblocks\.0\.moe\.experts\.(\d+)\."))
        down = state.get("efp.resblocks.0.moe.experts.0.down.weight")
        if down is not None:
            set_value(cfg, "model.reduction", int(dim // down.shape[0]))
        has_text_gate = any(k.endswith("moe.task_gate_text.weight") for k in state)
        if cfg.model.moe_gating == "modality" and not has_text_gate:
            for k in [k for k in state if k.endswith("moe.task_gate.weight")]:
                state[k.replace("task_gate.weight", "task_gate_text.weight")] = state[k].clone()
            notes.append("moe_gating='modality' on a shared-gate checkpoint: task_gate_text starts as a copy "
                         "of task_gate (identical outputs until fine-tuned)")
        elif cfg.model.moe_gating == "shared" and has_text_gate:
            raise ValueError(f"{run_dir / checkpoint} has modality gates (task_gate_text); moe_gating='shared' "
                             f"would discard them - load it with moe_gating='modality'")
    if any(k.startswith("cross_modal_transformer.") for k in state):
        set_value(cfg, "model.cmt_depth", _count(state, r"^cross_modal_transformer\.resblocks\.(\d+)\."))
    validate(cfg)
    num_classes = int(state["classifier.weight"].shape[0]) if "classifier.weight" in state else 0
    grid_rows = base.get("visual.positional_embedding")
    model = create_model(cfg, clip_config, num_classes)
    if grid_rows is not None and grid_rows.shape[0] != model.base_model.visual.positional_embedding.shape[0]:
        raise ValueError(f"{run_dir / checkpoint}: the image positional embedding has {grid_rows.shape[0]} rows, "
                         f"but img_size {tuple(cfg.data.img_size)} with stride {cfg.model.stride_size} needs "
                         f"{model.base_model.visual.positional_embedding.shape[0]} (1 + patch grid)")
    check_state_dict(model, state, source=str(run_dir / checkpoint))
    expected = model.state_dict()
    # checkpoints hold IRRA's mixed fp16/fp32 tensors; upcasting fp16 to fp32 is exact
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    apply_precision(model, cfg.model.precision)
    model.reference_info = {"run_dir": str(run_dir), "options": options, "dropped_keys": dropped, "notes": notes}
    return model.eval()
