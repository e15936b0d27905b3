"""Encode throughput and training-step time of the model, per preset, on CPU (and CUDA when present).

A one-table overview; the canonical benchmarks are ``bench_train.py`` (step breakdown, FLOPs, MFU, A/B
comparisons) and ``bench_encode.py``, sharing ``benchmarks/common.py`` with this script.

For every preset (``irra-cpu``, ``php-cpu``, ``irra``, ``php``) and the two reference benchmark
configurations of ``../shared/reference/perf.json`` (``S``: 256-wide towers at 192x64, batch 32,
``sdm+itc``; ``B``: ViT-B/16 at 384x128, batch 8, IRRA ``sdm+mlm+id`` / PHP ``sdm+itc+aux``) it measures

* ``encode_image`` / ``encode_text`` throughput (items/s, eval mode, no grad);
* one training step (forward, backward, Adam step; median over ``--steps`` after one warm-up), reported
  as seconds per step and pairs/s.

Random weights and synthetic batches; captions of 20-40 tokens padded to the context length. On CPU the
model runs in float32 (the paper presets' bf16 is an autocast mode that this CPU class runs ~2.7x slower,
perf.json), on CUDA in the preset's precision (bf16 autocast for the paper presets).

    python benchmarks/bench_model.py                     # all presets + S + B on CPU (B takes minutes)
    python benchmarks/bench_model.py --only irra-cpu S   # a subset
    python benchmarks/bench_model.py --smoke             # tiny sizes, seconds
    python benchmarks/bench_model.py --threads 1         # on an oversubscribed shared machine (see below)

On a shared 2-core machine under load, two intra-op threads make every small op wait for a descheduled
thread: tiny models ran ~40x slower with 2 threads than with 1 there. The JSON records the load average and a
matmul GFLOP/s yardstick measured in the same process, so runs on busy and idle machines can be compared.

Prints a table, then one JSON object (the last line).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import S_OVERRIDES, matmul_gflops, synthetic_batch  # noqa: E402,F401 (shared helpers)
from irra_core import losses  # noqa: E402
from irra_core.config import load_config  # noqa: E402
from irra_core.model import build_model  # noqa: E402
from irra_core.optim import build_optimizer  # noqa: E402

REFERENCE_PERF = Path(__file__).resolve().parent.parent.parent / "shared" / "reference" / "perf.json"
CASES = {  # name -> (preset, overrides, training batch on CPU)
    "irra-cpu": ("irra-cpu", {}, None),
    "php-cpu": ("php-cpu", {}, None),
    "S": ("irra-cpu", S_OVERRIDES, 32),
    "irra": ("irra", {"model.pretrained": ""}, 8),
    "php": ("php", {"model.pretrained": ""}, 8),
}
REFERENCE_ROWS = {"S": ("S", "irra"), "irra": ("B", "irra"), "php": ("B", "php")}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def bench_case(name: str, device: torch.device, steps: int, smoke: bool, trim: bool = True) -> dict:
    preset, overrides, cpu_batch = CASES[name]
    cfg = load_config(preset, overrides, smoke=smoke)
    batch_size = cfg.data.batch_size if (device.type == "cuda" or smoke or cpu_batch is None) else cpu_batch
    precision = cfg.model.precision if device.type == "cuda" else "fp32"
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    torch.manual_seed(0)
    model = build_model(load_config(preset, {**overrides, "model.precision": "fp32"}, smoke=smoke), num_classes=64)
    model.to(device)
    model.trim_text_padding = trim
    batch = synthetic_batch(cfg, batch_size, device)

    def autocast():
        return torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)

    model.eval()
    with torch.no_grad(), autocast():
        image_t = _timed(lambda: model.encode_image(batch["images"]), device, steps)
        text_t = _timed(lambda: model.encode_text(batch["caption_ids"]), device, steps)
    model.train()
    optimizer = build_optimizer(model, cfg.optim)  # the engine's optimiser (fused kernels)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = sum(losses.total_loss(model(batch), batch, cfg.loss_weights()).values())
        loss.backward()
        optimizer.step()

    step_t = _timed(step, device, steps)
    step_s = statistics.median(step_t)
    return {"case": name, "preset": preset, "device": device.type, "precision": precision, "batch": batch_size,
            "trim_text_padding": trim,
            "loss_names": cfg.loss.names, "img_size": list(cfg.data.img_size),
            "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "encode_image_per_s": round(batch_size / statistics.median(image_t), 1),
            "encode_text_per_s": round(batch_size / statistics.median(text_t), 1),
            "train_step_s": round(step_s, 4), "train_pairs_per_s": round(batch_size / step_s, 2)}


def reference_speed(name: str) -> float | None:
    if name not in REFERENCE_ROWS or not REFERENCE_PERF.exists():
        return None
    config, model = REFERENCE_ROWS[name]
    rows = json.loads(REFERENCE_PERF.read_text()).get("train", [])
    match = [r for r in rows if r["config"] == config and r["model"] == model]
    return match[0]["pairs_per_s"] if match else None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help=f"cases among {list(CASES)}")
    parser.add_argument("--steps", type=int, default=3, help="timed repetitions after one warm-up")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (load_config(..., smoke=True))")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-cuda", action="store_true")
    parser.add_argument("--no-trim", action="store_true",
                        help="encode captions at full length (the reference's cost) instead of trimming padding")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.only or list(CASES)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append(torch.device("cuda"))
    calibration = matmul_gflops()
    results = []
    for device in devices:
        for name in names:
            row = bench_case(name, device, args.steps, args.smoke, trim=not args.no_trim)
            reference = reference_speed(name) if (device.type == "cpu" and not args.smoke) else None
            row["reference_pairs_per_s_cpu"] = reference
            row["speedup_vs_reference"] = round(row["train_pairs_per_s"] / reference, 2) if reference else None
            results.append(row)
    header = ("case", "device", "prec", "batch", "img/s", "txt/s", "step s", "pairs/s", "ref pairs/s", "x ref")
    print("  ".join(f"{h:>10}" for h in header))
    for r in results:
        cells = (r["case"], r["device"], r["precision"], r["batch"], r["encode_image_per_s"], r["encode_text_per_s"],
                 r["train_step_s"], r["train_pairs_per_s"], r["reference_pairs_per_s_cpu"], r["speedup_vs_reference"])
        print("  ".join(f"{str(c):>10}" for c in cells))
    # shared machines: the load average says how much of the CPU this run actually had
    summary = {"benchmark": "model", "torch": torch.__version__, "threads": torch.get_num_threads(),
               "loadavg_1min_after": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count(),
               "cpu_matmul_gflops_before": calibration, "cpu_matmul_gflops_after": matmul_gflops(),
               "cuda": torch.cuda.get_device_name(0) if len(devices) > 1 else None, "smoke": args.smoke,
               "results": results}
    print(f"CPU yardstick: {summary['cpu_matmul_gflops_before']} -> {summary['cpu_matmul_gflops_after']} GFLOP/s "
          f"(fp32 matmul), load average {summary['loadavg_1min_after']} on {summary['cpu_count']} CPUs")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
