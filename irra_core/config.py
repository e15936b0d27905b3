"""One typed configuration schema for data, model, losses, optimisation and training.

A configuration is built in three layers, each overriding the previous one::

    defaults of the dataclasses  <-  preset YAML (by name, or a file path)  <-  dotted overrides

``load_config("php-cpu", {"optim.lr": 1e-4})`` returns a frozen-by-convention :class:`Config`.
Unknown keys and values of the wrong type are errors that name the key, so a misspelt override
never silently does nothing (IRRA's argparse accepted ``--log_period 50`` as a string and crashed
much later).

IRRA's and PHP's command-line option names map onto this schema through :data:`REFERENCE_OPTION_MAP`,
so their published commands parse verbatim (see :func:`config_from_reference_args`).
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from irra_core.datasets import DATASET_CHOICES, REAL_DATASETS
from irra_core.errors import UserError

PRESET_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(UserError, ValueError):
    """A configuration key or value is wrong; the message names the key and the fix."""


# --------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    dataset: str = "synthetic"  # one of datasets.DATASET_CHOICES: synthetic | CUHK-PEDES | ICFG-PEDES | RSTPReid
    root: str = "data"  # folder holding the dataset folder (or the dataset folder itself)
    # synthetic generator (used when dataset == "synthetic"); written in `synthetic_format`'s layout
    synthetic_format: str = "CUHK-PEDES"
    synthetic_identities: int = 400  # total identities over train/val/test
    synthetic_images_per_id: int = 4
    synthetic_test_images_per_id: int = 0  # images per test identity (0 = synthetic_images_per_id; ICFG ~20)
    synthetic_test_captions_per_image: int = 0  # captions per test image (0 = as training images, 2; ICFG has 1)
    synthetic_eval_identities: int = 0  # identities in each of val and test (0 = 20% each; the rest train)
    synthetic_seed: int = 0
    img_size: tuple = (384, 128)  # (H, W)
    img_aug: bool = False
    # IRRA erases *after* Normalize with the raw mean (~+1.7 sigma); "mean" fills with the mean colour
    random_erasing_fill: str = "mean"  # mean | irra_normalised_raw
    text_length: int = 77
    batch_size: int = 64
    test_batch_size: int = 64
    num_workers: int = 0
    sampler: str = "random"  # random | identity
    num_instance: int = 4
    mlm: bool = False  # build MLM inputs (mlm_ids / mlm_labels)
    # IRRA masks the caption tensor in place, so SDM/ID train on masked captions (IRRA#13)
    mlm_shared_caption_bug: bool = False
    val_split: str = "val"  # split used for model selection: val | test
    # hold out this many training identities as the val split (for datasets without one, e.g. ICFG-PEDES);
    # chosen with val_from_train_seed, listed in the run folder's val_from_train.json
    val_from_train: int = 0
    val_from_train_seed: int = 0
    max_identities: int = 0  # keep the first N identities of each split (0 = all); the smoke preset sets it
    skip_bad_images: bool = False  # only on request; skipped files are reported


@dataclass
class ModelConfig:
    arch: str = "irra"  # irra | php
    pretrained: str = ""  # "" = random init; an OpenAI name ("ViT-B/16") or a file path
    # fine-tune from a checkpoint (workbook run, IRRA/PHP log folder or .pth): towers and heads that fit are
    # loaded, the rest starts fresh; replaces `pretrained` (irra_core.model.load, init_report.json)
    init_from: str = ""
    embed_dim: int = 512
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    patch_size: int = 16
    stride_size: int = 16
    # a convolutional stem (3x3 stride-2 convs) instead of ViT-B/16's patchify conv: a deviation for
    # from-scratch training on a CPU (the *-cpu presets); off in the paper presets
    conv_stem: bool = False
    # a causal convolution over the text tower's token embeddings, this many tokens wide (0 = off): a deviation
    # for from-scratch training on a CPU, so a garment noun carries the colour word before it from the first step
    # (the *-cpu presets; irra_core.model.stem.CausalTokenConv); off in the paper presets
    text_conv: int = 0
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    vocab_size: int = 49408
    temperature: float = 0.02  # logit scale = 1 / temperature, a constant as in IRRA
    cmt_depth: int = 4  # cross-modal transformer depth (MLM branch)
    # MLM softmax over the whole 49,408-token vocabulary (IRRA) or only the tokens of the training captions
    # ("train": a deviation for from-scratch CPU training, where the full head is half of an IRRA step)
    mlm_vocab: str = "full"  # full | train
    # PHP: CRFM + EFP
    cnum: int = 9
    num_experts: int = 4
    topk: int = 2
    reduction: int = 8
    moe_layers: int = 4
    moe_heads: int = 8
    adapter_dropout: float = 0.1
    # PHP's release runs EFP attention across the samples of a batch (a test-set leak)
    efp_attention: str = "tokens"  # tokens | batch
    # the paper describes modality-aware gates; the release shares one gate for both towers
    moe_gating: str = "modality"  # modality | shared
    crfm_attend_padding: bool = False  # the release attends over text padding after EOT
    precision: str = "fp32"  # fp32 | bf16 | fp16 | legacy_fp16


#: loss name -> its weight unless a preset or override sets one (``loss.weights.itc: 5`` or the older
#: ``loss.itc_weight: 5``); a loss of ``irra_core.losses.LOSSES`` is usable once it has a weight here
DEFAULT_LOSS_WEIGHTS = {
    "sdm": 1.0, "itc": 1.0,  # PHP's release hard-codes ITC x5
    "id": 1.0, "mlm": 1.0,  # PHP's release hard-codes MLM x0.5
    "cmpm": 1.0, "aux": 0.5,  # PHP's aux_factor
}


@dataclass
class LossConfig:
    # '+'-separated: sdm itc id mlm cmpm aux. IRRA's default adds mlm, which needs data.mlm (--MLM): the
    # schema defaults must validate on their own, so mlm is opted into together with data.mlm (presets do)
    names: str = "sdm+id"
    weights: dict = field(default_factory=lambda: dict(DEFAULT_LOSS_WEIGHTS))  # name -> weight


@dataclass
class OptimConfig:
    optimizer: str = "Adam"  # Adam | AdamW | SGD
    lr: float = 1e-5
    adam_eps: float = 1e-3  # IRRA's Adam uses eps 1e-3 (AdamW keeps 1e-8)
    bias_lr_factor: float = 2.0
    lr_factor: float = 5.0
    momentum: float = 0.9
    weight_decay: float = 4e-5
    weight_decay_bias: float = 0.0
    alpha: float = 0.9  # Adam beta1
    beta: float = 0.999  # Adam beta2
    # "irra" = IRRA's rules (also PHP's release); "php_prerelease" adds transformer/moe factors
    lr_groups: str = "irra"  # irra | php_prerelease
    transformer_lr_factor: float = 1.0
    moe_lr_factor: float = 2.0
    lrscheduler: str = "cosine"  # cosine | step | exp | poly | linear
    milestones: tuple = (20, 50)
    gamma: float = 0.1
    warmup_factor: float = 0.1
    warmup_epochs: float = 5  # may be fractional (a share of a short run; per-iteration schedules)
    warmup_method: str = "linear"  # linear | constant
    target_lr: float = 0.0
    power: float = 0.9
    scheduler_step: str = "epoch"  # epoch (IRRA) | iteration
    fused: bool = True  # fused/foreach optimiser kernels where torch offers them
    # token embedding with row-sparse gradients, stepped by optim.RowSparseAdamW: same result as AdamW, faster
    # steps on the cpu presets; applies to single-process AdamW runs without grad_clip (else dense, with a note)
    sparse_embedding: bool = False


@dataclass
class TrainConfig:
    num_epoch: int = 60
    grad_accum: int = 1
    grad_clip: float = 0.0  # 0 = off
    eval_period: int = 1
    # val | test | last (IRRA selects on test); "val" on a dataset without a val split selects the last epoch
    select_on: str = "val"
    log_period: int = 100
    seed: int = 1
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_steps: int = 0  # stop after this many optimiser steps (0 = no limit); for smoke runs
    progress: str = "auto"  # auto | bar | lines | none


@dataclass
class Config:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        """Plain nested dict (tuples become lists), ready for YAML/JSON."""
        return _to_plain(dataclasses.asdict(self))

    def loss_names(self) -> list[str]:
        return [n for n in self.loss.names.split("+") if n]

    def loss_weights(self) -> dict[str, float]:
        """``{name: weight}`` of the losses in ``loss.names``, in that order (for ``losses.total_loss``)."""
        return {name: self.loss.weights[name] for name in self.loss_names()}


SECTIONS = {"data": DataConfig, "model": ModelConfig, "loss": LossConfig, "optim": OptimConfig, "train": TrainConfig}

#: losses that only some architectures can compute, because only their model returns what the loss needs:
#: ``{loss: (architectures,)}``. The rest work with every architecture. The table lives here, not in the model
#: layer, so that :func:`validate` needs no model import; ``tests/test_config.py`` checks it against the
#: architectures of :mod:`irra_core.model.architectures` (a new architecture that computes ``aux`` is added here).
ARCH_ONLY_LOSSES: dict[str, tuple[str, ...]] = {"aux": ("php",)}
ARCH_ONLY_LOSS_NOTES = {"aux": "MoE load balancing over the expert router's statistics"}

CHOICES: dict[str, tuple] = {
    "data.dataset": DATASET_CHOICES,  # derived from the registry, irra_core/datasets.py
    "data.synthetic_format": REAL_DATASETS,
    "data.random_erasing_fill": ("mean", "irra_normalised_raw"),
    "data.sampler": ("random", "identity"),
    "data.val_split": ("val", "test"),
    "model.arch": ("irra", "php"),
    "model.efp_attention": ("tokens", "batch"),
    "model.mlm_vocab": ("full", "train"),
    "model.moe_gating": ("modality", "shared"),
    "model.precision": ("fp32", "bf16", "fp16", "legacy_fp16"),
    "optim.optimizer": ("Adam", "AdamW", "SGD"),
    "optim.lr_groups": ("irra", "php_prerelease"),
    "optim.lrscheduler": ("cosine", "step", "exp", "poly", "linear"),
    "optim.warmup_method": ("linear", "constant"),
    "optim.scheduler_step": ("epoch", "iteration"),
    "train.select_on": ("val", "test", "last"),
    "train.progress": ("auto", "bar", "lines", "none"),
}


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------
def list_presets() -> list[str]:
    """Names of the presets shipped in ``irra_core/configs`` (``irra``, ``php``, ``irra-cpu``...)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(name_or_path: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                *, smoke: bool = False) -> Config:
    """Build a :class:`Config` from a preset name or YAML file plus dotted overrides.

    Args:
        name_or_path: a preset name (see :func:`list_presets`), a path to a YAML file, or None for
            the schema defaults. YAML files are nested (``model: {cnum: 9}``) and may name a
            ``base`` preset they extend.
        overrides: ``{"optim.lr": 3e-6, "model.efp_attention": "batch"}``; nested dicts are
            accepted too. Applied last.
        smoke: shrink everything to the ``smoke`` preset's sizes (tiny towers, the first few identities
            of the dataset named, or a tiny synthetic set when none is, one short epoch, CPU) while
            keeping the architecture, switches and dataset chosen.

    Raises:
        ConfigError: unknown preset, unknown key, wrong type or a value outside its choices.
    """
    cfg = Config()
    if name_or_path:
        for layer in _preset_chain(name_or_path):
            _apply(cfg, layer, source=str(name_or_path))
    if smoke:
        _apply(cfg, _read_yaml(PRESET_DIR / "smoke.yaml"), source="smoke preset")
    if overrides:
        _apply(cfg, dict(overrides), source="overrides")
    validate(cfg)
    return cfg


def _preset_chain(name_or_path: str | Path) -> list[dict]:
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = PRESET_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ConfigError(f"unknown preset {str(name_or_path)!r}; choose one of {list_presets()} "
                              f"or pass the path of a YAML file")
    elif not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    layer = _read_yaml(path)
    base = layer.pop("base", None)
    return (_preset_chain(base) if base else []) + [layer]


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and dotted in SECTIONS:
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _apply(cfg: Config, values: Mapping[str, Any], *, source: str) -> None:
    for dotted, value in _flatten(values).items():
        set_value(cfg, dotted, value, source=source)


def set_value(cfg: Config, dotted: str, value: Any, *, source: str = "override") -> None:
    """Set one dotted key (``"optim.lr"``), checking the key exists and the type fits.

    Loss weights: ``loss.weights.<name>`` sets one, a mapping under ``loss.weights`` sets those it names
    (the others keep their values), and the older ``loss.<name>_weight`` keys still set ``loss.weights.<name>``.
    """
    parts = dotted.split(".")
    if parts[0] == "loss" and len(parts) > 1:
        legacy = parts[1].removesuffix("_weight") if len(parts) == 2 and parts[1].endswith("_weight") else None
        if legacy in cfg.loss.weights or (len(parts) == 3 and parts[1] == "weights"):
            _set_loss_weight(cfg, legacy or parts[2], value, dotted, source)
            return
        if parts[1:] == ["weights"]:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: 'loss.weights' expects a mapping name -> weight, got {value!r}")
            for name, weight in value.items():
                _set_loss_weight(cfg, str(name), weight, f"loss.weights.{name}", source)
            return
    if len(parts) == 1 and parts[0] == "name":
        target, attr, hint = cfg, "name", str
    elif len(parts) == 2 and parts[0] in SECTIONS:
        target = getattr(cfg, parts[0])
        attr = parts[1]
        hints = typing.get_type_hints(type(target))
        if attr not in hints:
            raise ConfigError(f"{source}: unknown key {dotted!r}; {parts[0]} has "
                              f"{sorted(f.name for f in dataclasses.fields(target))}")
        hint = hints[attr]
    else:
        raise ConfigError(f"{source}: unknown key {dotted!r}; keys look like 'section.key' with section in "
                          f"{sorted(SECTIONS)} (or the top-level 'name')")
    setattr(target, attr, _coerce(value, hint, dotted, source))


def _set_loss_weight(cfg: Config, name: str, value: Any, dotted: str, source: str) -> None:
    cfg.loss.weights = {**cfg.loss.weights, name: _coerce(value, float, dotted, source)}


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    bad = ConfigError(f"{source}: {key!r} expects {getattr(hint, '__name__', hint)}, got {value!r} "
                      f"({type(value).__name__})")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if hint is str:
        if isinstance(value, str):
            return value
        raise bad
    if hint is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(value)
        raise bad
    return value


def validate(cfg: Config) -> None:
    """Check choices and cross-field rules; raise :class:`ConfigError` naming the key."""
    for dotted, allowed in CHOICES.items():
        section, attr = dotted.split(".")
        value = getattr(getattr(cfg, section), attr)
        if value not in allowed:
            raise ConfigError(f"{dotted!r} = {value!r} is not one of {list(allowed)}")
    for loss in cfg.loss_names():
        if loss not in cfg.loss.weights:
            raise ConfigError(f"'loss.names' contains unknown loss {loss!r}: it has no weight in 'loss.weights' "
                              f"(known: {sorted(cfg.loss.weights)}); set loss.weights.{loss} to add one")
    names = cfg.loss_names()
    if "mlm" in names and not cfg.data.mlm:
        raise ConfigError("'loss.names' includes 'mlm' but 'data.mlm' is false; set data.mlm=true (IRRA's --MLM)")
    for loss in names:
        providers = ARCH_ONLY_LOSSES.get(loss)
        if providers is not None and cfg.model.arch not in providers:
            raise ConfigError(f"'loss.names' includes {loss!r} ({ARCH_ONLY_LOSS_NOTES[loss]}) but 'model.arch' is "
                              f"{cfg.model.arch!r}; only {' / '.join(providers)} provide(s) it")
    if len(cfg.data.img_size) != 2:
        raise ConfigError(f"'data.img_size' must be (H, W), got {cfg.data.img_size!r}")
    if cfg.model.topk > cfg.model.num_experts:
        raise ConfigError(f"'model.topk' ({cfg.model.topk}) exceeds 'model.num_experts' ({cfg.model.num_experts})")
    for key in ("val_from_train", "max_identities"):
        if getattr(cfg.data, key) < 0:
            raise ConfigError(f"'data.{key}' must be >= 0 (0 = off), got {getattr(cfg.data, key)}")
    for key in ("synthetic_test_images_per_id", "synthetic_test_captions_per_image", "synthetic_eval_identities"):
        if getattr(cfg.data, key) < 0:
            raise ConfigError(f"'data.{key}' must be >= 0 (0 = the generator's default), got {getattr(cfg.data, key)}")
    if cfg.model.text_conv < 0:
        raise ConfigError(f"'model.text_conv' is a kernel width in tokens, >= 0 (0 = off), got {cfg.model.text_conv}")
    if cfg.model.temperature <= 0:
        raise ConfigError("'model.temperature' must be > 0 (the logit scale is 1 / temperature)")
    if cfg.model.vision_width % cfg.model.vision_heads or cfg.model.text_width % cfg.model.text_heads:
        raise ConfigError("'model.vision_width'/'model.text_width' must be divisible by their head counts")


def config_from_dict(values: Mapping[str, Any], *, source: str = "config") -> Config:
    """Rebuild a :class:`Config` from :meth:`Config.to_dict` output (a run's ``config.yaml``)."""
    cfg = Config()
    _apply(cfg, values, source=source)
    validate(cfg)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from irra_core.io_utils import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------------
# IRRA / PHP command-line option names
# --------------------------------------------------------------------------------------------------
#: reference option -> dotted key here. Options with no effect on a run map to None (accepted, ignored).
REFERENCE_OPTION_MAP: dict[str, str | None] = {
    "name": "name", "output_dir": None, "log_period": "train.log_period", "eval_period": "train.eval_period",
    "val_dataset": "data.val_split", "resume": None, "resume_ckpt_file": None, "local_rank": None,
    "pretrain_choice": "model.pretrained", "temperature": "model.temperature", "img_aug": "data.img_aug",
    "cmt_depth": "model.cmt_depth", "masked_token_rate": None, "masked_token_unchanged_rate": None,
    "lr_factor": "optim.lr_factor", "MLM": "data.mlm", "loss_names": "loss.names",
    "mlm_loss_weight": "loss.weights.mlm", "id_loss_weight": "loss.weights.id", "img_size": "data.img_size",
    "stride_size": "model.stride_size", "text_length": "data.text_length", "vocab_size": "model.vocab_size",
    "optimizer": "optim.optimizer", "lr": "optim.lr", "bias_lr_factor": "optim.bias_lr_factor",
    "momentum": "optim.momentum", "weight_decay": "optim.weight_decay",
    "weight_decay_bias": "optim.weight_decay_bias", "alpha": "optim.alpha", "beta": "optim.beta",
    "num_epoch": "train.num_epoch", "milestones": "optim.milestones", "gamma": "optim.gamma",
    "warmup_factor": "optim.warmup_factor", "warmup_epochs": "optim.warmup_epochs",
    "warmup_method": "optim.warmup_method", "lrscheduler": "optim.lrscheduler", "target_lr": "optim.target_lr",
    "power": "optim.power", "dataset_name": "data.dataset", "sampler": "data.sampler",
    "num_instance": "data.num_instance", "root_dir": "data.root", "batch_size": "data.batch_size",
    "test_batch_size": "data.test_batch_size", "num_workers": "data.num_workers", "test": None,
    "training": None, "distributed": None,
    # PHP additions
    "cnum": "model.cnum", "num_experts": "model.num_experts", "topk": "model.topk",
    "reduction": "model.reduction", "moe_layers": "model.moe_layers", "moe_heads": "model.moe_heads",
    "aux_factor": "loss.weights.aux", "transformer_lr_factor": "optim.transformer_lr_factor",
    "moe_lr_factor": "optim.moe_lr_factor",
}
#: reference options that are flags (store_true) on the command line
REFERENCE_FLAGS = ("img_aug", "MLM", "resume")


def config_from_reference_args(args: Mapping[str, Any], *, base: str | None = None) -> Config:
    """Map an IRRA/PHP option namespace (``configs.yaml`` or parsed CLI) onto a :class:`Config`.

    The architecture follows the options: PHP options (``cnum`` ...) or an ``aux`` loss select
    ``arch="php"``; without a ``base`` preset also PHP's released loss weights (ITC x5, MLM x0.5) and
    switches (shared gate, CRFM over padding), while a ``base`` preset keeps its own (correct) switches.
    Unknown option names are errors.
    """
    args = dict(args)
    is_php = "cnum" in args or "aux" in str(args.get("loss_names", ""))
    cfg = load_config(base) if base else Config()
    overrides: dict[str, Any] = {}
    if is_php:
        overrides["model.arch"] = "php"
        if not base:  # a reference configs.yaml: the release's behaviour; with a base preset, the preset's
            overrides.update({"loss.weights.itc": 5.0, "loss.weights.mlm": 0.5,
                              "model.moe_gating": "shared", "model.crfm_attend_padding": True})
    for option, value in args.items():
        if option not in REFERENCE_OPTION_MAP:
            raise ConfigError(f"unknown IRRA/PHP option {option!r}; known options: {sorted(REFERENCE_OPTION_MAP)}")
        key = REFERENCE_OPTION_MAP[option]
        if key is None:
            continue
        if key == "model.pretrained":
            value = value or ""
        if key == "data.root":
            value = str(value)
        overrides[key] = value
    _apply(cfg, overrides, source="reference options")
    validate(cfg)
    return cfg


def copy_config(cfg: Config) -> Config:
    return copy.deepcopy(cfg)


#: size families of the workbook: the pipeline's ``--preset`` picks one, each notebook the model's preset in it
PRESET_FAMILIES = {"cpu": {"irra": "irra-cpu", "php": "php-cpu"}, "paper": {"irra": "irra", "php": "php"}}


def preset_for(arch: str, family: str) -> str:
    """Preset name for a model (``"irra"``/``"php"``) in a size family (``"cpu"``/``"paper"``)."""
    if family not in PRESET_FAMILIES:
        raise ConfigError(f"unknown preset family {family!r}; choose one of {sorted(PRESET_FAMILIES)}")
    if arch not in PRESET_FAMILIES[family]:
        raise ConfigError(f"unknown model {arch!r}; choose one of {sorted(PRESET_FAMILIES[family])}")
    return PRESET_FAMILIES[family][arch]
