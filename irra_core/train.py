"""``python -m irra_core.train``: train with IRRA's / PHP's command-line options, or a preset.

IRRA's and PHP's option names are accepted as they are (``--batch_size 64 --loss_names 'sdm+itc+aux'
--moe_lr_factor 2.0`` ...), so their published commands run verbatim; they are applied on top of a preset
(``--preset``, default ``php`` when the options are PHP's, else ``irra``) or a YAML file (``--config``).
Then ``--smoke`` shrinks everything (sizes only: the dataset named with ``--dataset_name``/``--root_dir``
is kept and cut to its first identities; the synthetic set is used when none is named), and ``--set
key=value`` (dotted keys, repeatable) comes last. Unknown options and keys are errors that name them;
expected errors print one ``error: ...`` paragraph and exit 2 (``--debug`` shows the traceback).

The run folder is ``<--output_dir>/<YYYYmmdd-HHMMSS>_<name>_s<seed>`` (default output dir:
``outputs/runs``), or exactly ``--run_dir``. ``--resume`` continues ``--run_dir`` (or the run holding
``--resume_ckpt_file``) from its last checkpoint. Multi-GPU: ``torchrun --nproc_per_node N -m
irra_core.train ...``.
"""
from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml

from irra_core.config import (REFERENCE_FLAGS, REFERENCE_OPTION_MAP, SECTIONS, Config, ConfigError,
                              config_from_reference_args, set_value, validate)
from irra_core.paths import runs_dir

__all__ = ["build_parser", "config_from_argv", "main"]

#: options the reference scripts define but whose value is not part of a run's config
_UNMAPPED_TYPES = {"local_rank": int, "output_dir": str, "resume_ckpt_file": str, "masked_token_rate": float,
                   "masked_token_unchanged_rate": float}


def _field_type(dotted: str) -> Any:
    if dotted == "name":
        return str
    if dotted.startswith("loss.weights."):
        return float
    section, attr = dotted.split(".")
    return typing.get_type_hints(SECTIONS[section])[attr]


def build_parser() -> argparse.ArgumentParser:
    """The parser: every IRRA/PHP option (defaults suppressed, so only given ones override) plus ours."""
    parser = argparse.ArgumentParser(
        prog="python -m irra_core.train", allow_abbrev=False,
        description="Train IRRA or PHP. IRRA/PHP option names are accepted; --preset / --config / --set "
                    "select and override the workbook configuration.")
    ours = parser.add_argument_group("workbook options")
    ours.add_argument("--preset", help="preset name (irra, php, irra-cpu, php-cpu); default from the options")
    ours.add_argument("--config", help="a YAML config file (a run's config.yaml, or nested sections)")
    ours.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="dotted override applied last, e.g. --set optim.lr=1e-4 (repeatable)")
    ours.add_argument("--smoke", action="store_true",
                      help="tiny sizes (towers, images, steps) on the first identities of the dataset named, "
                           "or on a tiny synthetic set when none is named")
    ours.add_argument("--finetune", metavar="PATH",
                      help="start from a checkpoint (workbook run folder, IRRA/PHP log folder with configs.yaml + "
                           "best.pth, or a .pth/.pt file): model.init_from; the load report goes to init_report.json")
    ours.add_argument("--debug", action="store_true", help="show the traceback of expected errors too")
    ours.add_argument("--run_dir", help="exact run folder (default: <output_dir>/<time>_<name>_s<seed>)")
    ours.add_argument("--dry_run", action="store_true", help="print the resolved config as YAML and exit")
    ref = parser.add_argument_group("IRRA / PHP options")
    for option, key in REFERENCE_OPTION_MAP.items():
        flags = [f"--{option}"] + ([f"--{option.replace('_', '-')}"] if "_" in option else [])
        if option in REFERENCE_FLAGS or option in ("test", "training", "distributed"):
            ref.add_argument(*flags, dest=option, action="store_true", default=argparse.SUPPRESS)
            continue
        kind = _field_type(key) if key else _UNMAPPED_TYPES.get(option, str)
        if kind is tuple:
            ref.add_argument(*flags, dest=option, nargs="+", type=int, default=argparse.SUPPRESS)
        elif kind is bool:
            ref.add_argument(*flags, dest=option, type=_parse_bool, default=argparse.SUPPRESS)
        else:
            ref.add_argument(*flags, dest=option, type=kind, default=argparse.SUPPRESS)
    return parser


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.lr=1e-4")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def config_from_argv(argv: Sequence[str] | None = None) -> tuple[Config, argparse.Namespace]:
    """Parse a command line into a validated :class:`Config` (and the parsed namespace).

    Raises:
        SystemExit: an unknown option (argparse names it).
        ConfigError: an unknown key or a bad value (the message names it).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    ours = {"preset", "config", "overrides", "smoke", "run_dir", "dry_run", "debug", "finetune"}
    reference = {k: v for k, v in vars(args).items() if k not in ours}
    if args.preset and args.config:
        raise ConfigError("--preset and --config both given; choose one (a YAML file may name its 'base' preset)")
    is_php = "cnum" in reference or "aux" in str(reference.get("loss_names", ""))
    base = args.config or args.preset or ("php" if is_php else "irra")
    if args.config and Path(args.config).name == "configs.yaml" and "dataset_name" in _read_mapping(args.config):
        raise ConfigError(f"{args.config} is an IRRA/PHP configs.yaml; pass its options on the command line "
                          f"or evaluate it with python -m irra_core.test --config_file {args.config}")
    mapped = {k: v for k, v in reference.items() if k in REFERENCE_OPTION_MAP}
    cfg = config_from_reference_args(mapped, base=base)
    if args.smoke:
        smoke = yaml.safe_load((Path(__file__).parent / "configs" / "smoke.yaml").read_text())
        for section, values in smoke.items():
            for attr, value in values.items():
                set_value(cfg, f"{section}.{attr}", value, source="smoke preset")
    if args.finetune:
        if not Path(args.finetune).expanduser().exists():
            raise ConfigError(f"--finetune {args.finetune}: no such file or folder; pass a workbook run folder, an "
                              f"IRRA/PHP log folder (configs.yaml + best.pth) or a .pth/.pt file")
        set_value(cfg, "model.init_from", str(Path(args.finetune).expanduser().resolve()), source="--finetune")
    for item in args.overrides:
        key, value = _parse_override(item)
        set_value(cfg, key, value, source=f"--set {item}")
    validate(cfg)
    return cfg, args


def _read_mapping(path: str) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _run_dir(cfg: Config, args: argparse.Namespace) -> tuple[Path, bool]:
    """The run folder and whether to resume it."""
    from irra_core.runs import new_run_name

    resume = bool(getattr(args, "resume", False))
    ckpt = getattr(args, "resume_ckpt_file", "")
    if args.run_dir:
        return Path(args.run_dir), resume
    if resume and ckpt:
        return Path(ckpt).resolve().parent.parent, True  # <run>/checkpoints/last.pt
    if resume:
        raise ConfigError("--resume needs --run_dir (or --resume_ckpt_file <run>/checkpoints/last.pt)")
    root = Path(getattr(args, "output_dir", None) or runs_dir())
    return root / new_run_name(cfg), False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m irra_core.train``; returns the exit status (2: an expected error, printed
    as one ``error: ...`` paragraph by :func:`irra_core.cli.run_cli`)."""
    from irra_core.cli import run_cli

    return run_cli(_main, argv)


def smoke_schedule(cfg) -> str:
    """The smoke preset's non-size settings as they ended up in ``cfg`` (batch, optimiser, schedule, device), for
    the line that says what ``--smoke`` changed besides sizes."""
    from irra_core.config import PRESET_DIR

    smoke = yaml.safe_load((PRESET_DIR / "smoke.yaml").read_text(encoding="utf-8"))
    keys = ["data.batch_size"] + [f"{section}.{key}" for section in ("optim", "train") for key in smoke.get(section, {})]
    values = []
    for key in keys:
        section, field = key.split(".")
        values.append(f"{key}={getattr(getattr(cfg, section), field)}")
    return ", ".join(values)


def _main(argv: Sequence[str] | None = None) -> int:
    cfg, args = config_from_argv(argv)
    if args.dry_run:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    import torch

    from irra_core.distributed import DistInfo, cleanup_distributed, init_distributed
    from irra_core.engine import fit
    from irra_core.runtime import device_type

    dist_info: DistInfo = init_distributed(device_type(cfg.train.device))
    try:
        run_dir, resume = _run_dir(cfg, args)
        if args.smoke and dist_info.is_main:
            where = ("the synthetic set" if cfg.data.dataset == "synthetic" else
                     f"{cfg.data.dataset} from {cfg.data.root}, its first {cfg.data.max_identities} identities per split")
            print(f"smoke: tiny sizes on {where}; a smoke run also sets {smoke_schedule(cfg)} "
                  f"(irra_core/configs/smoke.yaml): the run without --smoke uses your values", flush=True)
        if dist_info.enabled:  # every rank must use rank 0's folder (names carry a timestamp)
            holder = [str(run_dir)]
            torch.distributed.broadcast_object_list(holder, src=0)
            run_dir = Path(holder[0])
        result = fit(cfg, run_dir, resume=resume)
        if dist_info.is_main:
            print(f"run folder: {result.run_dir}")
            print(json.dumps({k: result.metrics.get(k) for k in ("t2i", "i2t", "selection")}, indent=2))
    finally:
        if dist_info.enabled:
            cleanup_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
