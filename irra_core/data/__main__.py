"""Command line: ``python -m irra_core.data check --dataset NAME --root DIR [--json FILE]`` (exit 1 when the
report has errors; the JSON report lists every missing file) and
``python -m irra_core.data synth --root DIR --format NAME [--identities N --images-per-id K --seed S
--test-images-per-id T --test-captions-per-image C]`` (C = 1: ICFG-PEDES's one caption per test image).
Expected errors (an unknown dataset name, a folder the generator would overwrite) print one ``error: ...``
paragraph and exit 2 (``--debug`` shows the traceback)."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m irra_core.data``; returns the exit status."""
    from irra_core.cli import run_cli

    return run_cli(_main, argv)


def _main(argv: list[str] | None = None) -> int:
    from irra_core.cli import UserError
    from irra_core.datasets import REAL_DATASETS

    parser = argparse.ArgumentParser(prog="python -m irra_core.data", allow_abbrev=False)
    parser.add_argument("--debug", action="store_true", help="show the traceback of expected errors too")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", allow_abbrev=False, help="integrity check of a dataset on disk")
    check.add_argument("--dataset", required=True, help=" | ".join(REAL_DATASETS))
    check.add_argument("--root", required=True, help="the dataset folder or the folder holding it")
    check.add_argument("--context-length", type=int, default=77)
    check.add_argument("--no-decode", action="store_true", help="do not decode every image")
    check.add_argument("--json", help="also write the report as JSON to this file")
    synth = sub.add_parser("synth", allow_abbrev=False, help="write a synthetic dataset")
    synth.add_argument("--root", required=True, help="the dataset folder to create")
    synth.add_argument("--format", default=REAL_DATASETS[0], choices=REAL_DATASETS,
                       help="the on-disk layout to write (annotation file and image folders of that dataset)")
    synth.add_argument("--identities", type=int, default=400, help="people to draw (default 400)")
    synth.add_argument("--images-per-id", type=int, default=4, help="images per person (default 4)")
    synth.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    synth.add_argument("--test-images-per-id", type=int, default=None, help="default: --images-per-id")
    synth.add_argument("--test-captions-per-image", type=int, default=None,
                       help="captions per test image (default 2; ICFG-PEDES has 1)")
    args = parser.parse_args(argv)

    if args.command == "check":
        from irra_core.data.integrity import check_dataset

        report = check_dataset(args.dataset, args.root, context_length=args.context_length,
                               decode_images=not args.no_decode)  # DatasetError: an unknown dataset name
        print(report.summary())
        if args.json:
            from irra_core.io_utils import atomic_write_json

            atomic_write_json(args.json, report.to_dict())
        return 0 if report.ok else 1
    from irra_core.data.synthetic import make_synthetic_pedes

    try:
        path = make_synthetic_pedes(args.root, args.format, args.identities, args.images_per_id, args.seed,
                                    test_images_per_id=args.test_images_per_id,
                                    test_captions_per_image=args.test_captions_per_image)
    except (FileExistsError, ValueError) as exc:  # a foreign folder, or sizes the generator cannot make
        raise UserError(f"--root {args.root}: {exc}") from exc
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
