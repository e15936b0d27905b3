"""``python -m irra_core.test --checkpoint PATH``: evaluate any checkpoint, as IRRA's ``test.py`` does.

``PATH`` is a workbook run folder, an IRRA / PHP log folder (``configs.yaml`` + ``best.pth``) or a bare
``.pth``/``.pt`` file, read by :func:`irra_core.model.load.load_model` (sizes from the weights, nothing
downloaded). IRRA's form ``--config_file RUN/config.yaml`` (or ``.../configs.yaml``) still works, with
``--checkpoint best|last``. ``--dataset_name`` / ``--root_dir`` evaluate on another dataset or location.
Results go to ``<run>/eval/<split>_<checkpoint>/`` (``metrics.json``, ``queries.csv``, ``command.json`` with
the load report) and are printed as a table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from irra_core.cli import UserError, run_cli
from irra_core.io_utils import atomic_write_json
from irra_core.runtime import resolve_device

__all__ = ["main", "format_table"]


def format_table(metrics: dict) -> str:
    """IRRA's result table: one row per direction, R1 R5 R10 mAP mINP with three decimals."""
    keys = ("R1", "R5", "R10", "mAP", "mINP")
    lines = ["task  " + "".join(f"{k:>9}" for k in keys)]
    for task in ("t2i", "i2t"):
        if metrics.get(task):
            lines.append(f"{task:<6}" + "".join(f"{metrics[task].get(k, float('nan')):9.3f}" for k in keys))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m irra_core.test``; returns the exit status (expected errors: 2, via run_cli)."""
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m irra_core.test", allow_abbrev=False,
                                     description="Evaluate a checkpoint (IRRA test.py style): a workbook run, an "
                                                 "IRRA/PHP log folder or a .pth/.pt file.")
    parser.add_argument("--config_file", help="RUN/config.yaml, or an IRRA/PHP configs.yaml (its folder is loaded)")
    parser.add_argument("--checkpoint", help="best | last (with --config_file), or a checkpoint: run folder, "
                                             "IRRA/PHP log folder or .pth/.pt file")
    parser.add_argument("--split", default="test", choices=("test", "val"))
    parser.add_argument("--dataset_name", help="evaluate on this dataset instead of the checkpoint's own")
    parser.add_argument("--root_dir", help="dataset root, if it moved since training")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--test_batch_size", type=int)
    parser.add_argument("--num_workers", type=int, help="loader workers (IRRA's configs.yaml says 8)")
    parser.add_argument("--out_dir", help="where to write metrics.json / queries.csv")
    parser.add_argument("--debug", action="store_true", help="show the traceback of expected errors too")
    args = parser.parse_args(argv)
    if args.config_file:
        source, which = Path(args.config_file).resolve().parent, args.checkpoint or "best"
        if which not in ("best", "last"):
            source, which = Path(which), "best"
        elif not Path(args.config_file).exists():
            raise FileNotFoundError(f"--config_file {args.config_file}: cannot read it (no such file); pass the "
                                    f"config.yaml of a training run folder, or --checkpoint PATH")
    elif args.checkpoint and args.checkpoint not in ("best", "last"):
        source, which = Path(args.checkpoint), "best"
    else:
        raise UserError("name what to evaluate: --checkpoint PATH (a workbook run folder, an IRRA/PHP log folder "
                        "with configs.yaml + best.pth, or a .pth/.pt file), or --config_file RUN/config.yaml")
    metrics, out_dir, report = evaluate_run(source, checkpoint=which, split=args.split, dataset=args.dataset_name,
                                            root_dir=args.root_dir, device=args.device,
                                            batch_size=args.test_batch_size, out_dir=args.out_dir,
                                            num_workers=args.num_workers)
    print(report.summary())
    print(format_table(metrics))
    print(f"written to {out_dir}")
    return 0


def evaluate_run(source: Path, *, checkpoint: str = "best", split: str = "test", dataset: str | None = None,
                 root_dir: str | None = None, device: str = "auto", batch_size: int | None = None,
                 out_dir: str | None = None, num_workers: int | None = None):
    """Load any checkpoint (:func:`irra_core.model.load.load_model`) and evaluate it on ``split``.

    Returns:
        ``(metrics, out_dir, load_report)``; metrics in percent (``{"t2i": {R1..mINP}, "i2t": {...}}``). Results go
        to :func:`default_out_dir` unless ``out_dir`` is given (a released folder is never written into).

    Raises:
        UserError: the output folder cannot be created (before anything is evaluated).
    """
    import torch

    from irra_core.evaluation import evaluate
    from irra_core.model.load import load_model
    from irra_core.paths import runs_dir

    overrides = {}
    if dataset:
        overrides["data.dataset"] = dataset
    if root_dir:
        overrides["data.root"] = root_dir
    if num_workers is not None:
        overrides["data.num_workers"] = num_workers
    dev = resolve_device(device)
    model = load_model(source, checkpoint=checkpoint, **overrides)
    cfg, report = model.cfg, model.load_report
    target = Path(out_dir) if out_dir else default_out_dir(source, report, cfg.data.dataset, split, runs_dir())
    try:  # before the evaluation, so an unwritable place fails at once
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write the results to {target} ({exc.strerror or exc}); pass --out_dir with a "
                        f"writable folder") from exc
    if (target / "command.json").exists():
        print(f"note: {target} holds an earlier evaluation of the same checkpoint, dataset and split; replacing it")
    model.to(dev).eval()
    with torch.no_grad():
        metrics = evaluate(model, cfg, split, device=dev, batch_size=batch_size, out_dir=target)
    atomic_write_json(target / "command.json", {"checkpoint": str(source), "which": checkpoint, "split": split,
                                                "dataset": cfg.data.dataset, "load_report": report.to_dict()})
    return metrics, target, report


def default_out_dir(source: Path, report, dataset: str, split: str, runs: Path) -> Path:
    """Where ``test`` writes when no ``--out_dir`` is given.

    A workbook run folder keeps its results: ``<run>/eval/<split>_<checkpoint>/``. Anything else (a released log
    folder, a bare file) is never written into: ``outputs/eval/<name>_<dataset>_<split>_<hash>/``, where the hash
    (8 hex digits of the weights file's absolute path) keeps two ``best.pth`` of different releases apart.
    """
    import hashlib

    source = Path(source)
    if report.kind == "workbook-run" and source.is_dir():
        return source / "eval" / f"{split}_{Path(report.file).stem}"
    name = source.name if source.is_dir() else source.stem
    digest = hashlib.sha256(str(Path(report.file).resolve()).encode()).hexdigest()[:8]
    return runs.parent / "eval" / f"{name}_{dataset}_{split}_{digest}"


if __name__ == "__main__":
    sys.exit(main())
