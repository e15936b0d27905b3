"""Command line: ``python -m irra_core.data check --dataset NAME --root DIR`` (exit 1 on errors) and
``python -m irra_core.data synth --root DIR --format NAME [--identities N --images-per-id K --seed S]``."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m irra_core.data")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="integrity check of a dataset on disk")
    check.add_argument("--dataset", required=True, help="CUHK-PEDES | ICFG-PEDES | RSTPReid")
    check.add_argument("--root", required=True, help="the dataset folder or the folder holding it")
    check.add_argument("--context-length", type=int, default=77)
    check.add_argument("--no-decode", action="store_true", help="do not decode every image")
    check.add_argument("--json", help="also write the report as JSON to this file")
    synth = sub.add_parser("synth", help="write a synthetic dataset")
    synth.add_argument("--root", required=True, help="the dataset folder to create")
    synth.add_argument("--format", default="CUHK-PEDES")
    synth.add_argument("--identities", type=int, default=400)
    synth.add_argument("--images-per-id", type=int, default=4)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--test-images-per-id", type=int, default=None, help="default: --images-per-id")
    args = parser.parse_args(argv)

    if args.command == "check":
        from irra_core.data.integrity import check_dataset
        from irra_core.data.errors import DatasetError

        try:
            report = check_dataset(args.dataset, args.root, context_length=args.context_length,
                                   decode_images=not args.no_decode)
        except DatasetError as exc:  # unknown dataset name
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(report.summary())
        if args.json:
            from irra_core.io_utils import atomic_write_json

            atomic_write_json(args.json, report.to_dict())
        return 0 if report.ok else 1
    from irra_core.data.synthetic import make_synthetic_pedes

    path = make_synthetic_pedes(args.root, args.format, args.identities, args.images_per_id, args.seed,
                                test_images_per_id=args.test_images_per_id)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
