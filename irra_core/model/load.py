"""One checkpoint reader for every entry point: evaluation, inspection, search and fine-tuning.

A *checkpoint source* is any of

* a workbook training run folder (``config.yaml`` + ``checkpoints/{best,last}.pt``, written by ``fit``);
* an IRRA / PHP log folder (``configs.yaml`` + ``best.pth``, the releases' layout, SPEC §1.15);
* a bare ``.pth`` / ``.pt`` file: a workbook checkpoint (it carries its config), an IRRA/PHP ``best.pth``
  (its ``configs.yaml`` is used when it lies next to it), a plain state dict, or CLIP tower weights.

The weights may sit under a ``model`` (or ``state_dict``) wrapper or not, carry DataParallel's ``module.``
prefix, be fp16, fp32 or IRRA's mix, and hold the whole model or only the backbone (``base_model.*`` keys,
or OpenAI's CLIP key layout). Tower sizes (widths, depths, patch, context length, vocabulary), PHP's head
sizes (cnum, experts, EFP depth, reduction), the cross-modal depth and the class count are read from the
weights; a configuration (when found) supplies the behaviour (switches, losses, image size). Nothing the
checkpoint holds is ever downloaded (``model.pretrained`` is cleared).

Every load returns a :class:`LoadReport`: what was loaded, what was initialised fresh, what was dropped, and
notes (a classifier of another class count re-initialised, heads left out of an evaluation model ...).

* :func:`load_model` - a model for evaluation / inspection (strict: every weight it uses comes from the file).
* :func:`resolve_init_config` + :func:`init_from_checkpoint` - fine-tuning (``model.init_from``): the run's
  config gets the checkpoint's sizes, the model loads what fits, missing heads start fresh.
"""
from __future__ import annotations

import math
import pickle
import re
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml
from torch import nn

from irra_core.config import (Config, ConfigError, LossConfig, ModelConfig, config_from_dict,
                              config_from_reference_args, set_value, validate)
from irra_core.model.php import rename_release_keys
from irra_core.model.pretrained import _NON_TOWER_KEYS
from irra_core.model.stem import stem_patch_size

__all__ = ["CheckpointError", "CheckpointSource", "LoadReport", "read_checkpoint", "load_model", "resolve_init_config",
           "init_from_checkpoint", "checkpoint_identity", "HEAD_PREFIXES"]

#: checkpoint keys accepted and dropped everywhere: PHP's routing counters (persistent buffers that never affect
#: an output, SPEC §2.9) and PHP's dead ``safl.pos_embeding`` parameter (never used in a forward pass, SPEC §2.4)
DROPPED_KEY_PATTERNS = (re.compile(r"(^|\.)expert_count_accum$"), re.compile(r"(^|\.)token_count_accum$"),
                        re.compile(r"^safl\.pos_embeding$"))
#: the heads outside the CLIP backbone, by the loss (or architecture) that needs them
HEAD_PREFIXES = {"id": ("classifier.",),
                 "mlm": ("cross_attn.", "cross_modal_transformer.", "ln_pre_t.", "ln_pre_i.", "ln_post.", "mlm_head."),
                 "php": ("crfm.", "efp.")}
#: per architecture, the heads it adds to IRRA's (their checkpoint prefixes); PHP's are CRFM and EFP
ARCH_HEADS = {"irra": (), "php": HEAD_PREFIXES["php"]}
#: the loss set a checkpoint is evaluated with when no configuration came with it (else the schema default)
DEFAULT_LOSS_NAMES = {"php": "sdm+itc+aux"}


class CheckpointError(ConfigError):
    """A checkpoint cannot be read or used as asked; the message names the file and the fix (a ConfigError, hence
    a ValueError, so the command-line tools print it as one paragraph)."""


#: per architecture, every model switch at the value of the released code (PHP); IRRA has no model-level switch
REFERENCE_BEHAVIOUR = {"php": {"efp_attention": "batch", "moe_gating": "shared", "crfm_attend_padding": True,
                               "itc_weight": 5.0, "mlm_weight": 0.5}}


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
        raise CheckpointError(f"{path}: cannot read it with a safe YAML loader (only !!python/tuple is accepted "
                         f"beyond plain YAML): {exc}") from exc
    if not isinstance(options, dict):
        raise CheckpointError(f"{path}: expected a mapping of options, got {type(options).__name__}")
    return options


@dataclass
class LoadReport:
    """What a load did, written as ``init_report.json`` by fine-tuning and kept as ``model.load_report``.

    Attributes:
        source: the path given; file: the weights file read; kind: ``workbook-run`` | ``reference-run`` | ``file``.
        purpose: ``evaluate`` | ``finetune``.
        loaded: model keys whose values came from the checkpoint.
        initialised: model keys left at their fresh initialisation (not in the checkpoint, or re-initialised).
        dropped: checkpoint keys not used, with the reason per group in ``notes``.
        notes: human sentences (one per decision).
        checkpoint_dtypes: dtypes found in the file (``float16``, ``float32`` ...).
    """

    source: str
    file: str
    kind: str
    purpose: str
    loaded: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checkpoint_dtypes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """A few lines: counts, then the notes."""
        lines = [f"{self.file} ({self.kind}, {'/'.join(self.checkpoint_dtypes)}): loaded {len(self.loaded)} tensors, "
                 f"initialised {len(self.initialised)} fresh, dropped {len(self.dropped)}"]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])

    def write(self, path: str | Path) -> Path:
        from irra_core.io_utils import atomic_write_json

        return atomic_write_json(Path(path), self.to_dict())


@dataclass
class CheckpointSource:
    """A checkpoint found and read: normalised state dict (model key layout) plus whatever config came with it."""

    path: Path
    file: Path
    kind: str
    state: dict[str, torch.Tensor]
    config: Config | None = None
    options: dict | None = None
    notes: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def dtypes(self) -> list[str]:
        return sorted({str(v.dtype).replace("torch.", "") for v in self.state.values()})

    def has(self, *prefixes: str) -> bool:
        return any(k.startswith(prefixes) for k in self.state)

    @property
    def arch(self) -> str:
        return next((arch for arch, heads in ARCH_HEADS.items() if heads and self.has(*heads)), "irra")

    def backbone(self) -> dict[str, torch.Tensor]:
        return {k[len("base_model."):]: v for k, v in self.state.items() if k.startswith("base_model.")}


# --------------------------------------------------------------------------------------------------
# Finding and reading
# --------------------------------------------------------------------------------------------------
def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``; OpenAI TorchScript archives through ``torch.jit``."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(n.split("/", 1)[-1].startswith("code/") for n in archive.namelist()):
                from irra_core.model.pretrained import load_clip_state_dict

                return load_clip_state_dict(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: refused - reading it needs arbitrary unpickling (which can run code), and "
                         f"checkpoints are read with torch.load(weights_only=True). torch says: {reason}. If you "
                         f"trust the file, re-save its state dict with torch.save(model.state_dict(), ...).") from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot be read as a PyTorch checkpoint ({type(exc).__name__}: {exc}); "
                               f"the file is truncated or not a .pth/.pt file") from exc


def normalise_state_dict(raw: Any, *, source: str) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """A loaded checkpoint -> (state dict in this model's key layout, notes, dropped keys).

    Unwraps ``{"model": sd}`` / ``{"state_dict": sd}``, strips ``module.`` prefixes, puts OpenAI-layout CLIP keys
    under ``base_model.``, and drops the keys of :data:`DROPPED_KEY_PATTERNS` and OpenAI's non-tower keys.

    Raises:
        ValueError: no state dict inside (the message names what the file holds).
    """
    notes: list[str] = []
    state = raw
    for wrapper in ("model", "state_dict", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            notes.append(f"weights read from the checkpoint's {wrapper!r} entry")
            break
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        held = sorted(raw)[:10] if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(f"{source}: expected a state dict or a dict with a 'model' state dict; it holds {held}")
    if any(k.startswith("module.") for k in state):
        notes.append("'module.' prefix (DataParallel / DistributedDataParallel) removed")
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    if "visual.conv1.weight" in state and not any(k.startswith("base_model.") for k in state):
        notes.append("CLIP tower weights in OpenAI's key layout: read as the backbone (base_model.*)")
        state = {k if k.startswith(_all_head_prefixes()) else f"base_model.{k}": v for k, v in state.items()
                 if k not in _NON_TOWER_KEYS}
    dropped = [k for k in state if any(p.search(k) for p in DROPPED_KEY_PATTERNS)]
    if dropped:
        notes.append(f"{len(dropped)} key(s) dropped that never affect an output (PHP's routing counters / "
                     f"unused safl.pos_embeding)")
    kept = {k: v for k, v in state.items() if k not in dropped}
    renamed = rename_release_keys(kept)  # the release's safl / shared_transformer / feed_forward -> crfm / efp / moe
    if list(renamed) != list(kept):
        notes.append("PHP release module names (safl, shared_transformer, feed_forward) read as crfm, efp, moe")
    return renamed, notes, dropped


def _all_head_prefixes() -> tuple[str, ...]:
    return tuple(p for prefixes in HEAD_PREFIXES.values() for p in prefixes)


def read_checkpoint(path: str | Path, checkpoint: str = "best") -> CheckpointSource:
    """Find and read the weights of a run folder, an IRRA/PHP log folder or a file.

    Args:
        path: the folder or file.
        checkpoint: in a workbook run ``best`` | ``last`` (``best`` falls back to ``last.pt`` when the run never
            evaluated); in an IRRA/PHP folder ``best`` -> ``best.pth`` or a file name inside it.

    Raises:
        FileNotFoundError: nothing at ``path``, or the folder lacks the checkpoint (the message says what it holds).
        ValueError: the file holds no state dict, or would need arbitrary unpickling.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist: pass a workbook run folder (config.yaml + "
                                f"checkpoints/), an IRRA/PHP log folder (configs.yaml + best.pth) or a .pth/.pt file")
    kind, config, options, notes = "file", None, None, []
    if path.is_dir():
        if (path / "config.yaml").exists() and (path / "checkpoints").is_dir():
            kind = "workbook-run"
            file = path / "checkpoints" / f"{checkpoint}.pt"
            if checkpoint == "best" and not file.exists() and (path / "checkpoints" / "last.pt").exists():
                file = path / "checkpoints" / "last.pt"
                notes.append("the run has no best.pt (it selected its last epoch, see its metrics.json 'selection'): "
                             "last.pt is used")
            config = _read_workbook_config(path / "config.yaml")
        elif (path / "configs.yaml").exists():
            kind = "reference-run"
            name = {"best": "best.pth", "last": "last.pth"}.get(checkpoint, checkpoint)
            file = path / name
            options = read_reference_options(path / "configs.yaml")
        else:
            held = sorted(p.name for p in path.iterdir())[:12]
            raise FileNotFoundError(f"{path} is a folder but neither a workbook run (config.yaml + checkpoints/) nor "
                                    f"an IRRA/PHP log folder (configs.yaml + best.pth); it holds {held}. Pass the "
                                    f"checkpoint file itself if it is a bare .pth/.pt")
        if not file.exists():
            held = sorted(p.name for p in file.parent.iterdir())[:12] if file.parent.exists() else []
            raise FileNotFoundError(f"{file} does not exist ({path} holds {held}); train the run first or name "
                                    f"another checkpoint")
    else:
        file = path
    raw = _torch_load(file)
    if kind == "file":
        if isinstance(raw, dict) and isinstance(raw.get("config"), dict) and "format" in raw:
            kind, config = "workbook-run", config_from_dict(raw["config"], source=f"{file} (saved config)")
            notes.append("configuration read from the checkpoint itself")
        elif (file.parent / "configs.yaml").exists():
            options = read_reference_options(file.parent / "configs.yaml")
            notes.append(f"IRRA/PHP options read from {file.parent / 'configs.yaml'}")
        elif file.parent.name == "checkpoints" and (file.parent.parent / "config.yaml").exists():
            config = _read_workbook_config(file.parent.parent / "config.yaml")
            notes.append(f"configuration read from {file.parent.parent / 'config.yaml'}")
    state, more_notes, dropped = normalise_state_dict(raw, source=str(file))
    if not any(k.startswith("base_model.") for k in state):
        raise CheckpointError(f"{file}: no CLIP backbone in it (no 'base_model.*' or 'visual.*' keys; first keys "
                               f"{list(state)[:6]}); it is not an IRRA/PHP/CLIP checkpoint")
    return CheckpointSource(path=path, file=file, kind=kind, state=state, config=config, options=options,
                            notes=notes + more_notes, dropped=dropped)


def _read_workbook_config(path: Path) -> Config:
    import yaml

    return config_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, source=str(path))


def checkpoint_identity(path: str | Path, checkpoint: str = "best") -> dict:
    """What identifies a checkpoint's weights cheaply (for caches): the weights file, its size and mtime."""
    path = Path(path).expanduser().resolve()
    file = path
    if path.is_dir():
        candidates = [path / "checkpoints" / f"{checkpoint}.pt", path / "checkpoints" / "last.pt",
                      path / {"best": "best.pth", "last": "last.pth"}.get(checkpoint, checkpoint)]
        file = next((c for c in candidates if c.exists()), path)
    stat = file.stat()
    return {"file": str(file), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


# --------------------------------------------------------------------------------------------------
# Sizes from the weights
# --------------------------------------------------------------------------------------------------
def _count(state: Mapping[str, Any], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in state if (m := regex.match(k))})


def _grid(img_size: tuple[int, int], patch: int, stride: int) -> tuple[int, int]:
    return (img_size[0] - patch) // stride + 1, (img_size[1] - patch) // stride + 1


def fit_sizes_to_weights(cfg: Config, source: CheckpointSource, *, keep_img_size: bool) -> list[str]:
    """Set ``cfg``'s tower and head sizes to those of the checkpoint's weights; returns notes on what changed.

    Head counts are not stored in weights: the config's are kept where its width matches the checkpoint's,
    else CLIP's ``width // 64``. With ``keep_img_size=False`` (evaluation) the image size must give the
    checkpoint's patch grid: without a config, a square (OpenAI CLIP) or 3:1 grid (person crop) is assumed and noted.

    Raises:
        ValueError: the image size does not match the checkpoint's positional embedding (evaluation).
    """
    from irra_core.model.clip_state import clip_config_from_state_dict

    base = source.backbone()
    before = cfg.to_dict()
    try:
        clip = clip_config_from_state_dict(base, image_resolution=tuple(cfg.data.img_size),
                                           stride_size=cfg.model.stride_size)
    except KeyError as exc:
        raise CheckpointError(f"{source.file}: the backbone is incomplete ({exc.args[0]})") from exc
    m = cfg.model
    vision_heads = m.vision_heads if m.vision_width == clip.vision_width else clip.vision_heads
    text_heads = m.text_heads if m.text_width == clip.transformer_width else clip.transformer_heads
    sizes = {"model.embed_dim": clip.embed_dim, "model.vision_width": clip.vision_width,
             "model.vision_layers": clip.vision_layers, "model.vision_heads": vision_heads,
             "model.patch_size": clip.vision_patch_size, "model.conv_stem": clip.vision_stem,
             "model.text_conv": clip.text_conv,
             "model.text_width": clip.transformer_width,
             "model.text_layers": clip.transformer_layers, "model.text_heads": text_heads,
             "model.vocab_size": clip.vocab_size, "data.text_length": clip.context_length}
    sizes.update(_head_sizes(cfg, source))
    for key, value in sizes.items():
        set_value(cfg, key, value, source=str(source.file))
    _fit_img_size(cfg, source, int(base["visual.positional_embedding"].shape[0]) - 1, keep_img_size)
    after = cfg.to_dict()
    changed = [f"{s}.{k}: {before[s][k]!r} -> {after[s][k]!r}" for s in ("data", "model")
               for k in after[s] if before[s][k] != after[s][k]]
    return [f"sizes from the weights: {', '.join(changed)}"] if changed else []


def _head_sizes(cfg: Config, source: CheckpointSource) -> dict[str, int]:
    """Sizes of the heads found in the weights: CRFM part tokens, EFP layers and experts (PHP), the MLM
    cross-modal transformer's depth."""
    state, sizes = source.state, {}
    if "crfm.part_tokens" in state and ARCH_HEADS[cfg.model.arch]:
        dim = int(state["crfm.part_tokens"].shape[1])
        sizes["model.cnum"] = int(state["crfm.part_tokens"].shape[0])
        sizes["model.moe_layers"] = _count(state, r"^efp\.resblocks\.(\d+)\.")
        sizes["model.num_experts"] = _count(state, r"^efp\.resblocks\.0\.moe\.experts\.(\d+)\.")
        down = state.get("efp.resblocks.0.moe.experts.0.down.weight")
        if down is not None:
            sizes["model.reduction"] = int(dim // down.shape[0])
        if dim % cfg.model.moe_heads:
            sizes["model.moe_heads"] = max(1, dim // 64)
    if source.has("cross_modal_transformer.") and "mlm" in cfg.loss_names():
        sizes["model.cmt_depth"] = _count(state, r"^cross_modal_transformer\.resblocks\.(\d+)\.")
    return sizes


def _fit_img_size(cfg: Config, source: CheckpointSource, rows: int, keep_img_size: bool) -> None:
    """Check (or, without a saved config, infer) the image size from the ``rows`` patch rows of the checkpoint's
    image positional embedding; ``keep_img_size`` (fine-tuning) keeps the config's size (resized later)."""
    grid = _grid(tuple(cfg.data.img_size), cfg.model.patch_size, cfg.model.stride_size)
    if keep_img_size or grid[0] * grid[1] == rows:
        return
    if source.config is not None or source.options is not None:
        raise CheckpointError(f"{source.file}: the image positional embedding has {rows + 1} rows, but img_size "
                               f"{tuple(cfg.data.img_size)} with stride {cfg.model.stride_size} needs "
                               f"{grid[0] * grid[1] + 1} (1 + patch grid); pass the checkpoint's img_size")
    inferred = _source_grid(source)
    if inferred is None:
        raise CheckpointError(f"{source.file}: the image positional embedding has {rows} patch rows, which "
                               f"is neither a square nor a 3:1 grid; put its configs.yaml next to it or load it with "
                               f"load_model(path, img_size=(H, W))")
    p, st = cfg.model.patch_size, cfg.model.stride_size
    set_value(cfg, "data.img_size", ((inferred[0] - 1) * st + p, (inferred[1] - 1) * st + p), source=str(source.file))


def _source_grid(source: CheckpointSource) -> tuple[int, int] | None:
    """The patch grid the checkpoint was trained on: from its config or options, else a square (OpenAI's CLIP)
    or a 3:1 person crop; ``None`` when none fits (the resize then names the problem)."""
    rows = int(source.state["base_model.visual.positional_embedding"].shape[0]) - 1
    patch = stem_patch_size(source.backbone()) or int(source.state["base_model.visual.conv1.weight"].shape[-1])
    img, stride = None, patch
    if source.config is not None:
        img, stride = tuple(source.config.data.img_size), source.config.model.stride_size
    elif source.options is not None and source.options.get("img_size"):
        img, stride = tuple(source.options["img_size"]), int(source.options.get("stride_size", patch))
    if img is not None:
        grid = _grid(img, patch, stride)
        if grid[0] * grid[1] == rows:
            return grid
    side = math.isqrt(rows)
    if side * side == rows:
        return side, side
    gw = math.isqrt(rows // 3)
    return (3 * gw, gw) if 3 * gw * gw == rows else None


def _apply_overrides(cfg: Config, overrides: Mapping[str, Any], source: str) -> None:
    model_keys, loss_keys = set(ModelConfig.__dataclass_fields__), set(LossConfig.__dataclass_fields__)
    for key, value in overrides.items():
        if "." in key:
            set_value(cfg, key, value, source=source)
        elif key in model_keys:
            set_value(cfg, f"model.{key}", value, source=source)
        elif key in loss_keys or key.endswith("_weight"):  # itc_weight=5.0 sets loss.weights.itc
            set_value(cfg, f"loss.{key}", value, source=source)
        elif key == "img_size":
            set_value(cfg, "data.img_size", value, source=source)
        else:
            raise CheckpointError(f"{source}: unknown override {key!r}; use a field of cfg.model ({sorted(model_keys)}) "
                             f"or cfg.loss ({sorted(loss_keys)}), img_size, or a dotted key")


# --------------------------------------------------------------------------------------------------
# Evaluation / inspection
# --------------------------------------------------------------------------------------------------
def evaluation_config(source: CheckpointSource, *, reference_behaviour: bool = False,
                      overrides: Mapping[str, Any] | None = None) -> tuple[Config, list[str]]:
    """The configuration a checkpoint is evaluated with, and notes: its own (or the release options'), sizes
    from the weights, heads the checkpoint lacks left out of the loss names (they only serve training)."""
    notes: list[str] = []
    if source.config is not None:
        cfg = source.config
    elif source.options is not None:
        cfg = config_from_reference_args(source.options)
        set_value(cfg, "model.precision", "fp32")
    else:
        cfg = Config()
        set_value(cfg, "model.arch", source.arch)
        if source.arch in DEFAULT_LOSS_NAMES:
            set_value(cfg, "loss.names", DEFAULT_LOSS_NAMES[source.arch])
        if ARCH_HEADS[source.arch]:  # PHP
            notes.append(f"EFP head count is not stored in weights: moe_heads={cfg.model.moe_heads} (PHP's default) "
                         f"assumed; pass moe_heads=N if the model was trained with another")
        notes.append("no configuration found with the checkpoint: behaviour switches at the workbook's (correct) "
                     "defaults, sizes from the weights")
    if cfg.model.pretrained:
        notes.append(f"model.pretrained={cfg.model.pretrained!r} ignored: the checkpoint holds the towers")
    set_value(cfg, "model.pretrained", "")
    set_value(cfg, "model.init_from", "")
    if reference_behaviour:
        _apply_overrides(cfg, REFERENCE_BEHAVIOUR.get(cfg.model.arch, {}), "reference behaviour")
    arch_heads = ARCH_HEADS.get(cfg.model.arch, ())
    if arch_heads and not source.has(*arch_heads):
        raise CheckpointError(f"{source.file} holds no PHP heads (crfm.* / safl.*, efp.* / shared_transformer.*) but its "
                               f"configuration says model.arch='php': evaluating it would use random heads. "
                               f"Fine-tune it first (python -m irra_core.train --finetune {source.path} ...), or "
                               f"evaluate it as IRRA (model.arch=irra).")
    names = cfg.loss_names()
    kept = [n for n in names if not (n in ("id", "mlm") and not source.has(*HEAD_PREFIXES[n]))]
    kept += [n for n in ("id", "mlm") if n not in kept and source.has(*HEAD_PREFIXES[n])]
    if kept != names:
        left = [n for n in names if n not in kept]
        if left:
            notes.append(f"the checkpoint has no {' / '.join(left)} head: left out of loss.names (evaluation needs "
                         f"only the towers{' and the PHP heads' if arch_heads else ''})")
        set_value(cfg, "loss.names", "+".join(kept or ["sdm"]))
        set_value(cfg, "data.mlm", "mlm" in kept)
    notes += fit_sizes_to_weights(cfg, source, keep_img_size=False)
    if arch_heads:
        has_text_gate = source.has("efp.") and any(k.endswith("moe.task_gate_text.weight") for k in source.state)
        if cfg.model.moe_gating == "shared" and has_text_gate:
            raise CheckpointError(f"{source.file} has modality gates (task_gate_text); moe_gating='shared' would "
                                   f"discard them - load it with moe_gating='modality'")
    _apply_overrides(cfg, overrides or {}, f"load_model({source.path})")
    validate(cfg)
    return cfg, notes


def load_model(path: str | Path, *, checkpoint: str = "best", reference_behaviour: bool = False,
               device: str | torch.device | None = None, **overrides: Any) -> nn.Module:
    """Any checkpoint source -> an IRRA / PHP model in eval mode, every weight it uses from the file.

    Args:
        path: a workbook run folder, an IRRA/PHP log folder or a ``.pth``/``.pt`` file (see the module docstring).
        checkpoint: ``best`` | ``last`` (or a file name inside an IRRA/PHP folder).
        reference_behaviour: PHP switches at the release's values (batch-axis EFP attention, one shared gate,
            CRFM over text padding, ITC x5, MLM x0.5), as :func:`irra_core.model.load_reference_run` documents.
        device: where to put the model (default: stays on the CPU).
        **overrides: fields of ``cfg.model`` / ``cfg.loss``, ``img_size`` or dotted keys, applied last.

    Returns:
        The model (``model.cfg`` its configuration, ``model.load_report`` a :class:`LoadReport`).

    Raises:
        FileNotFoundError, ValueError: see :func:`read_checkpoint`; ConfigError subclasses for a checkpoint that
        cannot be evaluated as configured (PHP config, backbone-only weights); ValueError listing every missing,
        unexpected or mis-shaped key otherwise.
    """
    from irra_core.model.architectures import create_model
    from irra_core.model.clip_state import check_state_dict, clip_config_from_cfg
    from irra_core.model.precision import apply_precision

    source = read_checkpoint(path, checkpoint)
    cfg, notes = evaluation_config(source, reference_behaviour=reference_behaviour, overrides=overrides)
    state = dict(source.state)
    num_classes = int(state["classifier.weight"].shape[0]) if "classifier.weight" in state else 0
    model = create_model(cfg, clip_config_from_cfg(cfg), num_classes)
    derived = _copy_shared_gates(cfg, state)
    if derived:
        notes.append("moe_gating='modality' on a shared-gate checkpoint: task_gate_text starts as a copy of "
                     "task_gate (identical outputs until fine-tuned)")
    check_state_dict(model, state, source=str(source.file))
    expected = model.state_dict()
    # IRRA's checkpoints mix fp16 and fp32 tensors; upcasting fp16 to fp32 is exact
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    apply_precision(model, cfg.model.precision)
    report = LoadReport(source=str(source.path), file=str(source.file), kind=source.kind, purpose="evaluate",
                        loaded=sorted(set(state) - set(derived)), initialised=[], dropped=list(source.dropped),
                        notes=source.notes + notes, checkpoint_dtypes=source.dtypes)
    model.load_report = report
    model.reference_info = {"run_dir": str(source.path), "options": source.options, "dropped_keys": source.dropped,
                            "notes": report.notes}
    if device is not None:
        model.to(device)
    return model.eval()


def _copy_shared_gates(cfg: Config, state: dict) -> list[str]:
    """A shared-gate PHP checkpoint loaded with modality gates: each text gate starts as the shared gate."""
    if not ARCH_HEADS.get(cfg.model.arch) or cfg.model.moe_gating != "modality":
        return []
    if any(k.endswith("moe.task_gate_text.weight") for k in state):
        return []
    added = []
    for k in [k for k in state if k.endswith("moe.task_gate.weight")]:
        new = k.replace("task_gate.weight", "task_gate_text.weight")
        state[new] = state[k].clone()
        added.append(new)
    return added


# --------------------------------------------------------------------------------------------------
# Fine-tuning
# --------------------------------------------------------------------------------------------------
def resolve_init_config(cfg: Config, *, saved: Config | None = None) -> list[str]:
    """Give a fine-tuning config (``cfg.model.init_from`` set) the checkpoint's tower and head sizes, in place.

    ``model.pretrained`` is cleared (the checkpoint holds the towers; nothing is downloaded). The image size stays
    the config's (the positional embedding is resized on load). When the checkpoint file is gone but ``saved``
    (the run's own config.yaml, on resume) is given, its sizes are used: resuming never needs the init file.

    Returns:
        Notes on what changed.

    Raises:
        FileNotFoundError / ValueError: the checkpoint cannot be read (see :func:`read_checkpoint`).
    """
    if not cfg.model.init_from:
        return []
    notes = []
    if cfg.model.pretrained:
        notes.append(f"model.pretrained={cfg.model.pretrained!r} not loaded: model.init_from holds the towers")
        set_value(cfg, "model.pretrained", "")
    if saved is not None and not Path(cfg.model.init_from).expanduser().exists():
        for key in ("embed_dim", "vision_width", "vision_layers", "vision_heads", "patch_size", "text_width",
                    "text_layers", "text_heads", "vocab_size", "cnum", "moe_layers", "num_experts", "reduction",
                    "moe_heads", "cmt_depth"):
            set_value(cfg, f"model.{key}", getattr(saved.model, key))
        set_value(cfg, "data.text_length", saved.data.text_length)
        return notes + ["model.init_from is gone; sizes from the run's saved config.yaml (resume)"]
    source = read_checkpoint(cfg.model.init_from)
    notes += fit_sizes_to_weights(cfg, source, keep_img_size=True)
    validate(cfg)
    return notes


def init_from_checkpoint(model: nn.Module, path: str | Path, *, notes: list[str] | None = None) -> LoadReport:
    """Load what fits of a checkpoint into a freshly built model (fine-tuning); the rest stays fresh.

    The model must have the checkpoint's tower sizes (:func:`resolve_init_config`). The image positional embedding
    is resized to the model's patch grid when the image size differs. Heads the model has and the checkpoint lacks
    start fresh; checkpoint heads the model does not have (another loss set or architecture) are dropped; a
    classifier of another class count is re-initialised. Every decision is in the returned report.

    Raises:
        ValueError: a backbone tensor does not fit (the model was not sized from the checkpoint).
    """
    from irra_core.model.clip_state import interpolate_positional_embedding

    source = read_checkpoint(path)
    state = dict(source.state)
    expected = model.state_dict()
    report = LoadReport(source=str(source.path), file=str(source.file), kind=source.kind, purpose="finetune",
                        dropped=list(source.dropped), notes=source.notes + list(notes or []),
                        checkpoint_dtypes=source.dtypes)
    key = "base_model.visual.positional_embedding"
    if key in state and key in expected and state[key].shape != expected[key].shape:
        grid = model.base_model.visual.grid
        state[key] = interpolate_positional_embedding(state[key].float(), grid, old_grid=_source_grid(source))
        report.notes.append(f"image positional embedding resized to the patch grid {tuple(grid)}")
    derived = _copy_shared_gates(model.cfg, state) if hasattr(model, "cfg") else []
    if derived:
        report.notes.append("shared-gate checkpoint, modality gates: task_gate_text starts as a copy of task_gate")
    bad_backbone = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}" for k, v in state.items()
                    if k.startswith("base_model.") and k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if bad_backbone:
        raise CheckpointError(f"{source.file}: backbone tensors do not fit the model (size it with resolve_init_config):"
                         f"\n  " + "\n  ".join(bad_backbone))
    usable, mismatched = {}, []
    for k, v in state.items():
        if k not in expected:
            report.dropped.append(k)
        elif tuple(v.shape) != tuple(expected[k].shape):
            mismatched.append(k)
        else:
            usable[k] = v.to(expected[k].dtype)
    report.dropped += mismatched
    model.load_state_dict(usable, strict=False)
    report.loaded = sorted(k for k in usable if k not in derived)
    report.initialised = sorted(k for k in expected if k not in usable or k in derived)
    if "classifier.weight" in mismatched:
        report.notes.append(f"classifier re-initialised: the checkpoint's has {state['classifier.weight'].shape[0]} "
                            f"classes, this dataset {expected['classifier.weight'].shape[0]}")
    other = sorted({k.rsplit('.', 1)[0] for k in mismatched if not k.startswith("classifier.")})
    if other:
        report.notes.append(f"re-initialised (shape differs from the checkpoint): {other}")
    unused = [k for k in report.dropped if k not in source.dropped and k not in mismatched]
    if unused:
        heads = sorted({k.split(".", 1)[0] for k in unused})
        report.notes.append(f"checkpoint modules this model does not have, dropped: {heads}")
    fresh = sorted({k.split(".", 1)[0] for k in report.initialised if k not in derived})
    if fresh:
        report.notes.append(f"modules that start fresh: {fresh}")
    return report


def write_report(report: LoadReport, run_dir: str | Path) -> Path:
    """``<run_dir>/init_report.json`` (what fine-tuning loaded, initialised and dropped)."""
    return report.write(Path(run_dir) / "init_report.json")
