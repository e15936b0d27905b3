"""Cross-dataset transfer: train on dataset A, evaluate on the test split of every dataset B.

    python -m irra_core.transfer                                   # the synthetic variants (+ real sets present)
    python -m irra_core.transfer --datasets CUHK-PEDES,RSTPReid --preset paper --device cuda
    python -m irra_core.transfer --smoke --out /tmp/transfer       # tiny sizes, a minute on a CPU

For every source A the model (``--arch``, a preset of ``--preset``'s family) is trained with
:func:`irra_core.engine.fit` into ``<out>/train/<A>/`` (resumed when already there) and its selected checkpoint is
evaluated on each target's test split into ``<out>/eval/<A>__<B>/`` (``metrics.json`` with identity-bootstrap
intervals, ``queries.csv``). The A x B tables (``transfer_<metric>.csv``), ``transfer.json`` (every cell with
its interval) and a heat map per metric with the in-domain diagonal framed (``transfer_<metric>.png``) land in
``<out>``.

Datasets: the real ``CUHK-PEDES``, ``ICFG-PEDES``, ``RSTPReid`` (under ``--data-root``; named explicitly they
must be present) and three synthetic variants written in those formats with different generator seeds, hence
different identities, attribute combinations and captions (the generator has no other mix option):
``synthetic-CUHK-PEDES`` (seed 0, the workbook's default set), ``synthetic-ICFG-PEDES`` (seed 1) and
``synthetic-RSTPReid`` (seed 2). ``--datasets auto`` (default) takes the real sets present plus the synthetic
variants. A source without a validation split (ICFG-PEDES) uses its last epoch (``train.select_on=last``; the
engine's periodic evaluation then logs the test split, which selects nothing). Not part of ``make workbook`` (it trains one model per source); the notebook
``notebooks/transfer/50_transfer_matrix.ipynb`` runs it and shows the tables.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from irra_core.cli import UserError, run_cli
from irra_core.datasets import REAL_DATASETS

#: synthetic variants, one per real dataset of the registry: dotted config overrides of each (seed = its index)
SYNTHETIC_VARIANTS: dict[str, dict[str, Any]] = {
    f"synthetic-{name}": {"data.dataset": "synthetic", "data.synthetic_format": name, "data.synthetic_seed": seed}
    for seed, name in enumerate(REAL_DATASETS)
}
MATRIX_METRICS = ("R1", "mAP")


def present_real_datasets(data_root: str | Path) -> list[str]:
    """The real datasets found under ``data_root`` (as :func:`irra_core.data.parsers.resolve_dataset_dir` finds them)."""
    from irra_core.data.errors import DatasetError
    from irra_core.data.parsers import resolve_dataset_dir

    found = []
    for name in REAL_DATASETS:
        try:
            resolve_dataset_dir(name, data_root)
            found.append(name)
        except DatasetError:
            pass
    return found


def resolve_datasets(spec: str | Sequence[str], data_root: str | Path) -> list[str]:
    """Dataset names from ``"auto"`` or a comma list; every named real dataset must be present.

    Raises:
        UserError: an unknown name, a named real dataset missing under ``data_root``, or fewer than one dataset.
    """
    from irra_core.data.errors import DatasetError
    from irra_core.data.parsers import resolve_dataset_dir

    if isinstance(spec, str):
        if spec.strip() == "auto":
            return present_real_datasets(data_root) + list(SYNTHETIC_VARIANTS)
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    names = list(dict.fromkeys(spec))
    for name in names:
        if name in SYNTHETIC_VARIANTS:
            continue
        if name not in REAL_DATASETS:
            raise UserError(f"--datasets: unknown dataset {name!r}; choose from {list(REAL_DATASETS)} and "
                            f"{list(SYNTHETIC_VARIANTS)}, or 'auto'")
        try:
            resolve_dataset_dir(name, data_root)
        except DatasetError as exc:
            raise UserError(f"--datasets names {name} but it is not under {data_root}: {exc}") from None
    if not names:
        raise UserError("--datasets is empty: name at least one dataset, or pass 'auto'")
    return names


def dataset_overrides(name: str) -> dict[str, Any]:
    """Dotted config overrides that select dataset ``name`` (a real one or a synthetic variant)."""
    if name in SYNTHETIC_VARIANTS:
        return dict(SYNTHETIC_VARIANTS[name])
    return {"data.dataset": name}


def evaluation_config(source: Any, target: Any) -> Any:
    """The config a transfer cell evaluates with: a copy of the ``source`` training config (the model, its image
    size, text length and batch sizes) with the *target's* data: ``data.dataset``, ``data.root`` and every
    ``data.synthetic_*`` generator key (format, seed, identity counts, the test split's images and captions per
    identity), so a synthetic target is evaluated on exactly the test split its own config builds.

    Args:
        source, target: :class:`irra_core.config.Config` of the training run and of the evaluated dataset.
    """
    from irra_core.config import DataConfig, copy_config, set_value

    keys = ["dataset", "root"] + [f.name for f in dataclasses.fields(DataConfig) if f.name.startswith("synthetic_")]
    cfg = copy_config(source)
    for key in keys:
        set_value(cfg, f"data.{key}", getattr(target.data, key))
    return cfg


def transfer_matrix(records: Mapping[tuple[str, str], Mapping], metric: str = "R1", task: str = "t2i"):
    """The A x B table of ``metric`` (percent): rows = trained on, columns = evaluated on.

    Args:
        records: ``{(source, target): metrics.json record}`` (as :func:`irra_core.evaluation.evaluate` writes).
    """
    import pandas as pd

    sources = list(dict.fromkeys(s for s, _ in records))
    targets = list(dict.fromkeys(t for _, t in records))
    frame = pd.DataFrame(index=pd.Index(sources, name="trained on"), columns=pd.Index(targets, name="evaluated on"),
                         dtype=float)
    for (source, target), record in records.items():
        frame.loc[source, target] = float(record[task][metric])
    return frame


def transfer_summary(records: Mapping[tuple[str, str], Mapping], task: str = "t2i") -> list[dict]:
    """One row per (source, target): ``source, target, in_domain``, the five metrics and their intervals."""
    rows = []
    for (source, target), record in records.items():
        row: dict[str, Any] = {"source": source, "target": target, "in_domain": source == target}
        for key, value in record[task].items():
            row[key] = value
            ci = (record.get("ci") or {}).get(task, {}).get(key)
            if ci is not None:
                row[f"{key}_ci"] = ci
        rows.append(row)
    return rows


def run_transfer(datasets: Sequence[str], out_dir: str | Path, *, arch: str = "irra", preset: str = "cpu",
                 data_root: str | Path = "data", overrides: Mapping[str, Any] | None = None, smoke: bool = False,
                 device: str = "auto", seed: int = 1, figures: bool = True, echo=print) -> dict:
    """Train on each dataset of ``datasets`` and evaluate on every one; write the tables and heat maps.

    Returns:
        ``{"records": {(A, B): metrics record}, "matrices": {metric: DataFrame}, "out_dir": Path}``.
    """
    from irra_core.config import set_value
    from irra_core.data import prepare_dataset
    from irra_core.engine import fit
    from irra_core.evaluation import evaluate
    from irra_core.io_utils import atomic_write_json, atomic_write_text, read_json
    from irra_core.workbook import workbook_config

    out_dir = Path(out_dir)
    configs = {}
    for name in datasets:
        values = {**dataset_overrides(name), **dict(overrides or {})}
        configs[name] = workbook_config(arch, preset, values["data.dataset"], str(data_root), values, smoke=smoke,
                                        device=device, seed=seed)
    records: dict[tuple[str, str], dict] = {}
    for source in datasets:
        cfg = configs[source]
        if not prepare_dataset(cfg).val.get("img_paths"):
            # no val split: the last epoch is used. The engine still evaluates a split each eval period, so
            # it logs the test split there; that number selects nothing.
            set_value(cfg, "train.select_on", "last")
            set_value(cfg, "data.val_split", "test")
        echo(f"== transfer: training on {source} -> {out_dir / 'train' / source}")
        model = fit(cfg, out_dir / "train" / source, resume=True).model
        for target in datasets:
            eval_cfg = evaluation_config(cfg, configs[target])
            where = out_dir / "eval" / f"{source}__{target}"
            evaluate(model, eval_cfg, "test", out_dir=where)
            records[(source, target)] = read_json(where / "metrics.json", "transfer evaluation")
            echo(f"   {source} -> {target}: t2i R1 {records[(source, target)]['t2i']['R1']:.2f}")
    matrices = {metric: transfer_matrix(records, metric) for metric in MATRIX_METRICS}
    for metric, frame in matrices.items():
        atomic_write_text(out_dir / f"transfer_{metric}.csv", frame.to_csv())
    atomic_write_json(out_dir / "transfer.json", {
        "arch": arch, "preset": preset, "smoke": smoke, "seed": seed, "datasets": list(datasets),
        "synthetic_variants": {k: v for k, v in SYNTHETIC_VARIANTS.items() if k in datasets},
        "cells": transfer_summary(records)})
    if figures:
        from irra_core.viz import save_figure, set_theme
        from irra_core.viz.uncertainty import plot_transfer

        set_theme()
        for metric, frame in matrices.items():
            save_figure(plot_transfer(frame, metric), out_dir / f"transfer_{metric}.png")
    return {"records": records, "matrices": matrices, "out_dir": out_dir}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m irra_core.transfer", allow_abbrev=False,
                                     description="Train on dataset A, evaluate on dataset B: the A x B transfer matrix.")
    parser.add_argument("--datasets", default="auto",
                        help=f"comma list of {list(REAL_DATASETS) + list(SYNTHETIC_VARIANTS)}, or 'auto' (default: "
                             "the real sets present plus the synthetic variants)")
    parser.add_argument("--arch", default="irra", choices=("irra", "php"), help="model trained on each source")
    parser.add_argument("--preset", default="cpu", help="size family: cpu | paper")
    parser.add_argument("--data-root", default=None, help="folder holding the datasets (default: IRRA_DATA_ROOT or data/)")
    parser.add_argument("--out", default=None, help="output folder (default: outputs/transfer/<preset>_<arch>)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted config override for every training, e.g. train.num_epoch=4 (repeatable)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (tests)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--seed", type=int, default=1, help="training seed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from irra_core import paths
    from irra_core.pipeline import parse_assignment

    args = build_parser().parse_args(argv)
    data_root = Path(args.data_root) if args.data_root else paths.data_root()
    datasets = resolve_datasets(args.datasets, data_root)
    overrides = dict(parse_assignment(o, "--override") for o in args.override)
    out = Path(args.out) if args.out else paths.project_root() / "outputs" / "transfer" / (
        f"{args.preset}_{args.arch}" + ("_smoke" if args.smoke else ""))
    result = run_transfer(datasets, out, arch=args.arch, preset=args.preset, data_root=data_root, overrides=overrides,
                          smoke=args.smoke, device=args.device, seed=args.seed)
    for metric, frame in result["matrices"].items():
        print(f"\nt2i {metric} (rows: trained on, columns: evaluated on)")
        print(frame.round(2).to_string())
    print(f"\ntables, transfer.json and heat maps under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
