"""Inference throughput: images/s (``encode_image``) and captions/s (``encode_text``) per configuration.

Cases: the presets ``irra-cpu`` and ``php-cpu`` (their own sizes), perf.json's config ``S`` and, with
``--with-b`` or ``--only B``, config ``B`` (the paper presets' ViT-B/16 at 384x128, random weights; minutes on
a CPU). Eval mode, no grad, synthetic inputs (captions of 20-40 tokens padded to the context), median of
``--repeats`` after one warm-up; on CUDA in ``--precision`` (bf16 autocast by default there, fp32 on CPU).

    python benchmarks/bench_encode.py --threads 2
    python benchmarks/bench_encode.py --only S --no-trim    # captions at full context (the reference's cost)
    python benchmarks/bench_encode.py --smoke               # tiny sizes (tests)

Prints a table, then one JSON object (the last line).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402
from irra_core.model import build_model  # noqa: E402
from irra_core.model.precision import AUTOCAST_DTYPES  # noqa: E402

CASES = {"irra-cpu": ("irra-cpu", "irra"), "php-cpu": ("php-cpu", "php"), "S": ("S", "irra"), "B": ("B", "php")}
COLUMNS = (("case", "case"), ("device", "dev"), ("precision", "prec"), ("threads", "thr"), ("batch", "batch"),
           ("img_size", "image"), ("text_length", "ctx"), ("trim", "trim"), ("images_per_s", "img/s"),
           ("captions_per_s", "cap/s"))


def timed(fn, device: torch.device, repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after one warm-up (CUDA synchronised)."""
    fn()
    out = []
    for _ in range(repeats):
        common.sync(device)
        start = time.perf_counter()
        fn()
        common.sync(device)
        out.append(time.perf_counter() - start)
    return out


def bench_encode(case: str, device: str = "cpu", repeats: int = 3, batch: int | None = None,
                 precision: str | None = None, smoke: bool = False, trim: bool = True) -> dict:
    """Images/s and captions/s of one case (see ``CASES``)."""
    dev = torch.device(device)
    config, arch = CASES[case]
    precision = precision or ("bf16" if dev.type == "cuda" else "fp32")
    cfg = common.load_bench_config(config, arch, smoke=smoke, extra={"model.precision": precision})
    batch_size = batch or (4 if smoke else (8 if config == "B" and dev.type == "cpu" else 64))
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=64).to(dev).eval()
    model.trim_text_padding = trim
    data = common.synthetic_batch(cfg, batch_size, dev)
    autocast_dtype = AUTOCAST_DTYPES[precision]
    with torch.no_grad(), torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        image_t = timed(lambda: model.encode_image(data["images"]), dev, repeats)
        text_t = timed(lambda: model.encode_text(data["caption_ids"]), dev, repeats)
    return {"case": case, "preset": config, "arch": arch, "device": dev.type, "precision": precision,
            "threads": torch.get_num_threads(), "batch": batch_size, "img_size": list(cfg.data.img_size),
            "text_length": cfg.data.text_length, "trim": trim, "smoke": smoke,
            "images_per_s": round(batch_size / statistics.median(image_t), 2),
            "captions_per_s": round(batch_size / statistics.median(text_t), 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help=f"cases among {list(CASES)}")
    parser.add_argument("--with-b", action="store_true", help="add config B (slow on CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=None, help="default 64 (B on CPU: 8)")
    parser.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16", "legacy_fp16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-trim", action="store_true", help="encode captions at full context")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json", default=None, help="also write the JSON summary to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.only or ["irra-cpu", "php-cpu", "S"] + (["B"] if args.with_b else [])
    unknown = set(names) - set(CASES)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; choose among {list(CASES)}")
    device = torch.device(args.device)
    probe = common.matmul_gflops()
    rows = [bench_encode(n, args.device, args.repeats, args.batch, args.precision, args.smoke, not args.no_trim)
            for n in names]
    summary = {"benchmark": "encode", **common.machine_info(device), "cpu_matmul_gflops_before": probe,
               "cpu_matmul_gflops_after": common.matmul_gflops(), "results": rows}
    common.print_table(rows, COLUMNS)
    print(f"machine: load average {summary['loadavg_1_5_15']} on {summary['cpu_count']} CPUs, fp32 matmul "
          f"{probe} -> {summary['cpu_matmul_gflops_after']} GFLOP/s, {summary['threads']} threads")
    common.emit_json(summary, args.json)
    return summary


if __name__ == "__main__":
    main()
