"""Train one CPU recipe and report training seconds, steps, steps/s and val/test t2i R1/mAP (issue 16).

    python benchmarks/bench_recipe.py --preset php-cpu --set optim.lr=2e-3 --tag lr2e-3 --json out.json

Each run trains from scratch in a fresh folder under ``outputs/bench_recipe/`` with evaluation on the
selection split only after the last epoch (``train.eval_period`` set past the end), so training seconds
are the sum of the epochs' ``epoch_time_s`` (no evaluation inside). Prints one table row and, as the last
line, one JSON object (``--json FILE`` also appends it to a JSON-lines file). On a shared machine compare
recipes at equal *steps*; wall seconds carry the load (``loadavg`` is recorded).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="php-cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--tag", default="")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    args = parser.parse_args(argv)

    import torch
    import yaml

    from irra_core.config import load_config
    from irra_core.engine import fit

    torch.set_num_threads(args.threads)
    overrides = {}
    for item in args.overrides:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    overrides.setdefault("train.eval_period", 10_000)
    overrides.setdefault("train.progress", "none")
    cfg = load_config(args.preset, overrides)
    run_dir = Path("outputs/bench_recipe") / f"{cfg.name}-{args.tag or 'default'}-{int(time.time())}"
    load_before = os.getloadavg()
    tic = time.perf_counter()
    result = fit(cfg, run_dir, resume=False)
    wall = time.perf_counter() - tic
    log = [r for r in result.log if "epoch_time_s" in r]
    train_s = sum(r["epoch_time_s"] for r in log)
    steps = log[-1]["step"]
    val = next(r["eval"] for r in reversed(log) if "eval" in r)
    test = result.metrics["last"]["test"]
    row = {"preset": args.preset, "tag": args.tag, "overrides": args.overrides, "steps": steps,
           "train_s": round(train_s, 1), "steps_per_s": round(steps / train_s, 3), "wall_s": round(wall, 1),
           "val_r1": round(val["t2i"]["R1"], 2), "val_map": round(val["t2i"]["mAP"], 2),
           "test_r1": round(test["t2i"]["R1"], 2), "test_map": round(test["t2i"]["mAP"], 2),
           "last_loss": {k: round(v, 3) for k, v in log[-1].items() if "loss" in k and isinstance(v, float)},
           "loadavg_before": [round(v, 2) for v in load_before],
           "loadavg_after": [round(v, 2) for v in os.getloadavg()]}
    print(f"| {args.preset} {args.tag} | {steps} | {train_s:.0f} | {steps / train_s:.2f} | "
          f"{row['val_r1']:.1f} / {row['val_map']:.1f} | {row['test_r1']:.1f} / {row['test_map']:.1f} |")
    print(json.dumps(row))
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
