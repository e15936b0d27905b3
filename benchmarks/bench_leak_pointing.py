"""The leak rows and the pointing-game table of trained runs (issue 16), as notebooks 40 and 31 compute them.

    python benchmarks/bench_leak_pointing.py --php RUN/php --php-batch RUN/php-batch-efp --irra RUN/irra

Prints the identity-ordered and shuffled t2i R1/mAP of both PHP runs at PHP's test batch size (``--test_batch_size`` 64; IRRA's is 512) with
the identities per batch, the batch-axis model's inflation curve, and the pointing game per part (IRRA's
cross-attention, PHP's CRFM maps); the last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--php", required=True)
    parser.add_argument("--php-batch", required=True)
    parser.add_argument("--irra", default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--curve", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    parser.add_argument("--curve-queries", type=int, default=1600)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from irra_core.evaluation import evaluate
    from irra_core.evaluation.audit import identities_per_batch, inflation_curve
    from irra_core.viz import attention
    from irra_core.viz.inspect import load_run, word_patch_maps

    torch.set_num_threads(args.threads)
    out: dict = {"leak": {}, "pointing": {}}
    runs = {"php": load_run(args.php, "best"), "php-batch-efp": load_run(args.php_batch, "best")}
    test = runs["php"].split
    bs = args.batch_size
    out["batch_composition"] = {"batch_size": bs, "gallery_ids_per_batch": identities_per_batch(test["image_pids"], bs),
                                "query_ids_per_batch": identities_per_batch(test["caption_pids"], bs),
                                "identities": len(set(test["image_pids"])), "images": len(test["image_pids"]),
                                "captions": len(test["captions"])}
    print(out["batch_composition"])
    for name, run in runs.items():
        rows = {}
        for order in ("identity-ordered", "shuffled"):
            m = evaluate(run.model, run.cfg, "test", device="cpu", batch_size=bs, shuffle=order == "shuffled")
            rows[order] = {"R1": m["t2i"]["R1"], "mAP": m["t2i"]["mAP"]}
        rows["inflation_R1"] = rows["identity-ordered"]["R1"] - rows["shuffled"]["R1"]
        out["leak"][name] = rows
        print(name, rows)
    curve = inflation_curve(runs["php-batch-efp"].model, runs["php-batch-efp"].cfg, "test", batch_sizes=args.curve,
                            device="cpu", max_queries=args.curve_queries)
    print(curve.round(2).to_string())
    out["curve"] = curve.to_dict("records")
    pointing_runs = dict(runs)
    if args.irra:
        pointing_runs = {"irra": load_run(args.irra, "best"), "php": runs["php"]}
    for name, run in pointing_runs.items():
        samples, grid, source, _ = word_patch_maps(run, args.pairs, seed=1)
        table = attention.pointing_by_part(attention.score_pointing(samples, grid))
        print(name, source)
        print(table.round(1).to_string())
        out["pointing"][name] = table.to_dict("records")
    print(json.dumps(out, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
