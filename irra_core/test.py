"""``python -m irra_core.test --config_file RUN/config.yaml``: evaluate a run, as IRRA's ``test.py`` does.

``--config_file`` is either a workbook run's ``config.yaml`` (its ``checkpoints/best.pt`` is loaded, or
``last.pt`` with ``--checkpoint last``) or an IRRA / PHP ``configs.yaml`` next to a ``best.pth`` (loaded
through :func:`irra_core.model.load_reference_run`). Results go to ``<run>/eval/<split>_<checkpoint>/``
(``metrics.json``, ``queries.csv``) and are printed as a table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from irra_core.config import set_value
from irra_core.io_utils import atomic_write_json

__all__ = ["main", "format_table"]


def format_table(metrics: dict) -> str:
    """IRRA's result table: one row per direction, R1 R5 R10 mAP mINP with three decimals."""
    keys = ("R1", "R5", "R10", "mAP", "mINP")
    lines = ["task  " + "".join(f"{k:>9}" for k in keys)]
    for task in ("t2i", "i2t"):
        if metrics.get(task):
            lines.append(f"{task:<6}" + "".join(f"{metrics[task].get(k, float('nan')):9.3f}" for k in keys))
    return "\n".join(lines)


def _is_reference_options(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FileNotFoundError(f"--config_file {path}: cannot read it ({exc})") from exc
    # IRRA's configs.yaml is a flat argparse dump (it may carry !!python/tuple); ours has sections
    return "dataset_name:" in text and "\nmodel:" not in text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m irra_core.test``; returns the exit status (2: an expected error, printed
    as one ``error: ...`` paragraph by :func:`irra_core.cli.run_cli`)."""
    from irra_core.cli import run_cli

    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m irra_core.test", allow_abbrev=False,
                                     description="Evaluate a training run (IRRA test.py style).")
    parser.add_argument("--config_file", required=True, help="RUN/config.yaml, or an IRRA/PHP configs.yaml")
    parser.add_argument("--checkpoint", default="best", help="best | last | a file path (workbook runs)")
    parser.add_argument("--split", default="test", choices=("test", "val"))
    parser.add_argument("--root_dir", help="dataset root, if it moved since training")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--test_batch_size", type=int)
    parser.add_argument("--num_workers", type=int, help="loader workers (IRRA's configs.yaml says 8)")
    parser.add_argument("--out_dir", help="where to write metrics.json / queries.csv")
    parser.add_argument("--debug", action="store_true", help="show the traceback of expected errors too")
    args = parser.parse_args(argv)
    metrics, out_dir = evaluate_run(Path(args.config_file), checkpoint=args.checkpoint, split=args.split,
                                    root_dir=args.root_dir, device=args.device,
                                    batch_size=args.test_batch_size, out_dir=args.out_dir,
                                    num_workers=args.num_workers)
    print(format_table(metrics))
    print(f"written to {out_dir}")
    return 0


def evaluate_run(config_file: Path, *, checkpoint: str = "best", split: str = "test", root_dir: str | None = None,
                 device: str = "auto", batch_size: int | None = None, out_dir: str | None = None,
                 num_workers: int | None = None) -> tuple[dict, Path]:
    """Load the run named by ``config_file`` and evaluate it on ``split``; returns (metrics, out_dir)."""
    import torch

    from irra_core.engine import resolve_device
    from irra_core.evaluation import evaluate

    run_dir = config_file.resolve().parent
    dev = resolve_device(device)
    if _is_reference_options(config_file):
        from irra_core.model import load_reference_run

        overrides = {}
        if root_dir:
            overrides["data.root"] = root_dir
        if num_workers is not None:
            overrides["data.num_workers"] = num_workers
        model = load_reference_run(run_dir, **overrides)
        cfg = model.cfg
        tag = f"{split}_reference"
    else:
        from irra_core.checkpoint import load_checkpoint
        from irra_core.data import prepare_dataset
        from irra_core.model import build_model
        from irra_core.runs import RunDir

        run = RunDir(run_dir)
        cfg = run.load_config()
        if root_dir:
            set_value(cfg, "data.root", root_dir)
        if num_workers is not None:
            set_value(cfg, "data.num_workers", num_workers)
        set_value(cfg, "model.pretrained", "")  # the weights come from the checkpoint
        path = {"best": run.best_checkpoint, "last": run.last_checkpoint}.get(checkpoint, Path(checkpoint))
        if checkpoint == "best" and not path.exists() and run.last_checkpoint.exists():
            path = run.last_checkpoint  # a run that never evaluated has no best.pt
        state = load_checkpoint(path, map_location="cpu")
        dataset = prepare_dataset(cfg)
        model = build_model(cfg, dataset.num_classes)
        model.load_state_dict(state["model"])
        tag = f"{split}_{Path(path).stem}"
    model.to(dev).eval()
    target = Path(out_dir) if out_dir else run_dir / "eval" / tag
    with torch.no_grad():
        metrics = evaluate(model, cfg, split, device=dev, batch_size=batch_size, out_dir=target)
    atomic_write_json(target / "command.json", {"config_file": str(config_file), "checkpoint": checkpoint,
                                                "split": split})
    return metrics, target


if __name__ == "__main__":
    sys.exit(main())
