"""Training throughput at perf.json's configurations S and B: pairs/s, step-time breakdown, memory, FLOPs, MFU.

One training step is timed in four parts (CUDA is synchronised around each): ``data`` (host batch to the
device), ``forward`` (model and loss sum, under the precision's autocast), ``backward`` and ``optimizer``
(``step`` + ``zero_grad``; the engine's :func:`irra_core.optim.build_optimizer`, so fused Adam where torch
has it). Medians over ``--steps`` timed steps after ``--warmup`` steps; batches are synthetic (random
images, 20-40-token captions), a few distinct ones cycled.

    python benchmarks/bench_train.py --config S --threads 2            # perf.json config S, CPU fp32
    python benchmarks/bench_train.py --config B --model php --steps 2  # paper size, batch 8 on CPU
    python benchmarks/bench_train.py --config B --device cuda --precision bf16 --steps 20
    python benchmarks/bench_train.py --config S --compare reference    # vs the reference-style step, same process
    python benchmarks/bench_train.py --config S --compare prune        # A/B within one process
    python benchmarks/bench_train.py --config S --smoke                # tiny sizes (tests)

Model FLOPs per pair are counted on one extra step (see :func:`benchmarks.common.count_step_flops`):
matmuls/convs/linears by ``torch.utils.flop_counter`` plus the attention cores from their shapes; MFU on
CUDA = FLOPs/pair x pairs/s / the card's dense bf16 peak. The analytic tower count is printed beside it.

Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the peak RSS during the steps minus the RSS
before the model was built. On a loaded 2-core machine, 2 intra-op threads can thrash: compare
``--threads 1`` and ``2`` (``--compare threads``). Prints a table, then one JSON object (the last line).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common, reference_style  # noqa: E402
from irra_core import losses  # noqa: E402
from irra_core.model import build_model  # noqa: E402
from irra_core.model import fast  # noqa: E402
from irra_core.model.precision import AUTOCAST_DTYPES  # noqa: E402
from irra_core.optim import build_optimizer, set_sparse_embeddings, sparse_embedding_blockers  # noqa: E402

#: --compare KEY -> the variants run in alternation (A B A B ...), each a dict of bench_train arguments
COMPARISONS = {
    "trim": [{"trim": False, "prune": False}, {"trim": True, "prune": False}],
    "prune": [{"prune": False}, {"prune": True}],
    "fused": [{"fused": False}, {"fused": True}],
    "threads": [{"threads": 1}, {"threads": 2}],
    "precision": [{"precision": "fp32"}, {"precision": "bf16"}],
    "compile": [{"compile": False}, {"compile": True}],
    # CPU attention kernel: SDPA at every length -> the library's dispatch (explicit softmax below 128 keys)
    "attention": [{"attention": "sdpa"}, {"attention": "auto"}],
    # the reference's cost model inside this code: full 77-token context, every token, a for-loop Adam
    "reference_like": [{"trim": False, "fused": False, "prune": False}, {"trim": True, "fused": True, "prune": True}],
    # the IRRA reference's execution structure (benchmarks/reference_style.py) -> this library, same process
    "reference": [{"impl": "reference_style"}, {"impl": "ours"}],
    # dense token-embedding gradient + AdamW -> row-sparse gradient + RowSparseAdamW (optim.sparse_embedding)
    "sparse_embedding": [{"sparse_embedding": False}, {"sparse_embedding": True}],
}
COLUMNS = (("config", "cfg"), ("model", "model"), ("impl", "impl"), ("device", "dev"), ("precision", "prec"),
           ("threads", "thr"), ("batch", "batch"), ("trim", "trim"), ("prune", "prune"), ("optimizer_kernel", "opt"),
           ("step_s", "step s"),
           ("data_s", "data"), ("forward_s", "fwd"), ("backward_s", "bwd"), ("optimizer_s", "optim"),
           ("pairs_per_s", "pairs/s"), ("reference_pairs_per_s", "ref"), ("ratio_vs_reference", "x ref"),
           ("peak_mem_MB", "peak MB"), ("gflops_per_pair", "GF/pair"), ("mfu", "MFU"))


def default_batch(config: str, device: torch.device, smoke: bool, preset_batch: int) -> int:
    """Config S: 32; config B: 8 on CPU, 64 on CUDA; a preset: its own ``data.batch_size``; smoke: 4."""
    if smoke:
        return 4
    if config == "S":
        return 32
    if config == "B":
        return 64 if device.type == "cuda" else 8
    return preset_batch


#: --attention CHOICE -> the CPU key count up to which :func:`irra_core.model.fast.attend` uses the explicit
#: softmax (None: the library's own threshold)
ATTENTION_KERNELS = {"auto": None, "sdpa": -1, "explicit": 1 << 30}


@contextmanager
def attention_kernel(choice: str) -> Iterator[None]:
    """``auto``: the library's dispatch (:func:`irra_core.model.fast.attend`); ``sdpa``: SDPA at every length;
    ``explicit``: the explicit softmax at every length on the CPU."""
    if choice not in ATTENTION_KERNELS:
        raise ValueError(f"attention={choice!r}: choose one of {sorted(ATTENTION_KERNELS)}")
    saved = fast.CPU_EXPLICIT_ATTENTION_MAX_KEYS
    limit = ATTENTION_KERNELS[choice]
    fast.CPU_EXPLICIT_ATTENTION_MAX_KEYS = saved if limit is None else limit
    try:
        yield
    finally:
        fast.CPU_EXPLICIT_ATTENTION_MAX_KEYS = saved


def _optimizer_kernel(optimizer: torch.optim.Optimizer) -> str:
    defaults = optimizer.defaults
    return "fused" if defaults.get("fused") else ("foreach" if defaults.get("foreach") else "for-loop")


def bench_train(config: str = "S", model_name: str = "irra", device: str = "cpu", steps: int = 5,
                precision: str = "fp32", threads: int | None = None, batch: int | None = None, warmup: int = 1,
                smoke: bool = False, trim: bool = True, fused: bool = True, compile: bool = False,
                attention: str = "auto", prune: bool = True, count_flops: bool = True,
                overrides: dict | None = None, impl: str = "ours", sparse_embedding: bool | None = None) -> dict:
    """Time ``steps`` training steps of ``model_name`` at ``config`` and return one result row (a dict).

    ``impl="reference_style"`` times :mod:`benchmarks.reference_style` instead (the IRRA reference's
    structure: sequence-first ``nn.MultiheadAttention``, float causal mask at the full context, per-parameter
    for-loop Adam); ``trim``/``prune``/``attention``/``fused``/``compile`` then do not apply.
    ``sparse_embedding`` (None: the preset's) sets ``optim.sparse_embedding`` and, when on, gives the model's
    embeddings row-sparse gradients as the engine does.
    """
    if attention not in ATTENTION_KERNELS:
        raise ValueError(f"attention={attention!r}: choose one of {sorted(ATTENTION_KERNELS)}")
    kernel = attention
    dev = torch.device(device)
    if threads:
        torch.set_num_threads(threads)
    extra = {**(overrides or {}), "model.precision": precision, "optim.fused": fused}
    if sparse_embedding is not None:
        extra["optim.sparse_embedding"] = sparse_embedding
    cfg = common.load_bench_config(config, model_name, smoke=smoke, extra=extra)
    batch_size = batch or default_batch(config, dev, smoke, cfg.data.batch_size)
    common.sync(dev)
    rss_before = common.current_rss_bytes()
    torch.manual_seed(0)
    if impl == "reference_style":
        model, optimizer = reference_style.build_reference_style(cfg)
        model.to(dev)  # the optimiser keeps the (moved) parameter objects
        trim = prune = compile = False
        attention = "nn.MultiheadAttention"  # what it runs; fast.attend is not on its path
    elif impl == "ours":
        model = build_model(cfg, num_classes=max(64, batch_size)).to(dev)
        model.trim_text_padding = trim
        model.prune_to_global_token = prune
        if cfg.optim.sparse_embedding and not sparse_embedding_blockers(cfg):  # as the engine decides
            set_sparse_embeddings(model)
        optimizer = build_optimizer(model, cfg.optim)
    else:
        raise ValueError(f"impl={impl!r}: choose 'ours' or 'reference_style'")
    model.train()
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    autocast_dtype = AUTOCAST_DTYPES[precision]
    forward = torch.compile(model) if compile else model
    loss_weights = cfg.loss_weights()
    pin = dev.type == "cuda"
    pool = [common.synthetic_batch(cfg, batch_size, "cpu", seed=s) for s in range(3)]
    if pin:
        pool = [{k: v.pin_memory() for k, v in b.items()} for b in pool]

    def step(index: int, times: dict | None) -> None:
        marks = [time.perf_counter()]

        def mark() -> None:
            common.sync(dev)
            marks.append(time.perf_counter())

        host = pool[index % len(pool)]
        data = {k: v.to(dev, non_blocking=True) for k, v in host.items()}
        mark()
        with attention_kernel(kernel):
            with torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                out = forward(data)
                if impl == "ours":  # our model returns features; the losses are total_loss's terms
                    out = losses.total_loss(out, data, loss_weights)
                loss = sum(out.values())
            mark()
            scaler.scale(loss).backward()
            mark()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        mark()
        if times is not None:
            for key, a, b in zip(("data_s", "forward_s", "backward_s", "optimizer_s"), marks, marks[1:]):
                times[key].append(b - a)
            times["step_s"].append(marks[-1] - marks[0])

    for i in range(warmup):
        step(i, None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    common.reset_peak_rss()
    times: dict[str, list[float]] = {k: [] for k in ("data_s", "forward_s", "backward_s", "optimizer_s", "step_s")}
    for i in range(steps):
        step(warmup + i, times)
    if dev.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak_mb = (common.peak_rss_bytes() - rss_before) / 2**20
    row = {"config": config, "model": model_name, "impl": impl, "device": dev.type, "precision": precision,
           "threads": torch.get_num_threads(), "batch": batch_size, "steps": steps, "smoke": smoke, "trim": trim,
           "optimizer_kernel": _optimizer_kernel(optimizer), "compile": compile, "attention": attention,
           "prune": prune, "overrides": overrides or {}, "loss_names": cfg.loss.names,
           "sparse_embedding": any(getattr(m, "sparse", False) for m in model.modules()),
           "img_size": list(cfg.data.img_size), "text_length": cfg.data.text_length,
           "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}
    row.update({k: round(statistics.median(v), 5) for k, v in times.items()})
    row["pairs_per_s"] = round(batch_size / row["step_s"], 3)
    row["steps_per_s"] = round(1 / row["step_s"], 4)
    row["peak_mem_MB"] = round(peak_mb, 1)
    reference = None if smoke or dev.type != "cpu" else common.reference_pairs_per_s(config, model_name)
    row["reference_pairs_per_s"] = reference
    row["ratio_vs_reference"] = round(row["pairs_per_s"] / reference, 3) if reference else None
    row["gflops_per_pair"] = row["mfu"] = row["achieved_tflops"] = None
    if count_flops:
        def counted() -> None:
            step(warmup + steps, None)

        flops = common.count_step_flops(counted, model)
        longest = int((pool[(warmup + steps) % len(pool)]["caption_ids"] > 0).sum(1).max()) + 1 if trim \
            else cfg.data.text_length
        analytic = common.analytic_tower_flops(cfg, min(longest, cfg.data.text_length))
        row["gflops_per_pair"] = round(flops["total"] / batch_size / 1e9, 3)
        row["flops_per_pair"] = {k: v // batch_size for k, v in flops.items()}
        row["analytic_tower_train_gflops_per_pair"] = round(analytic["train_towers"] / 1e9, 3)
        row["achieved_tflops"] = round(flops["total"] / batch_size * row["pairs_per_s"] / 1e12, 4)
        peak = common.bf16_peak_tflops(dev)
        row["bf16_peak_tflops"] = peak
        if peak:
            row["mfu"] = round(row["achieved_tflops"] / peak, 4)
    del model, optimizer, forward
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="S", help="S, B, or a preset name (irra-cpu, php-cpu, ...)")
    parser.add_argument("--model", default="irra", choices=["irra", "php"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "legacy_fp16"])
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    parser.add_argument("--batch", type=int, default=None, help="default: S 32; B 8 on CPU, 64 on CUDA")
    parser.add_argument("--no-trim", action="store_true", help="run captions at full context (reference cost)")
    parser.add_argument("--no-prune", action="store_true",
                        help="compute every token of every block (no global-token pruning or caption packing)")
    parser.add_argument("--no-fused", action="store_true", help="for-loop optimiser instead of fused kernels")
    parser.add_argument("--attention", default="auto", choices=["auto", "sdpa", "explicit"],
                        help="CPU attention kernel: the library's dispatch, SDPA always, or explicit always")
    parser.add_argument("--impl", default="ours", choices=["ours", "reference_style"],
                        help="this library, or the reference-style step of benchmarks/reference_style.py")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (compile time excluded)")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP-counting step")
    parser.add_argument("--compare", choices=sorted(COMPARISONS), default=None,
                        help="run the A/B variants of this switch alternately, --rounds times each")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. model.vision_width=192 (values parsed as YAML)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--json", default=None, help="also write the JSON summary to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    base = dict(overrides=overrides, config=args.config, model_name=args.model, device=args.device, steps=args.steps,
                precision=args.precision, threads=args.threads, batch=args.batch, warmup=args.warmup,
                smoke=args.smoke, trim=not args.no_trim, prune=not args.no_prune, fused=not args.no_fused,
                compile=args.compile, impl=args.impl, attention=args.attention,
                count_flops=not args.no_flops)
    probe_before = common.matmul_gflops()
    rows = []
    if args.compare:
        for _ in range(args.rounds):
            for variant in COMPARISONS[args.compare]:
                rows.append({**bench_train(**{**base, **variant, "count_flops": False}), "variant": variant})
    else:
        rows.append(bench_train(**base))
    summary = {"benchmark": "train", **common.machine_info(device), "cpu_matmul_gflops_before": probe_before,
               "cpu_matmul_gflops_after": common.matmul_gflops(), "results": rows}
    if args.compare:
        medians = {}
        for variant in COMPARISONS[args.compare]:
            label = ",".join(f"{k}={v}" for k, v in variant.items())
            medians[label] = statistics.median(r["pairs_per_s"] for r in rows if r["variant"] == variant)
        labels = list(medians)
        summary["compare"] = {"switch": args.compare, "median_pairs_per_s": medians,
                              "speedup_second_over_first": round(medians[labels[1]] / medians[labels[0]], 3)}
    common.print_table(rows, COLUMNS)
    print(f"machine: load average {summary['loadavg_1_5_15']} on {summary['cpu_count']} CPUs, fp32 matmul "
          f"{probe_before} -> {summary['cpu_matmul_gflops_after']} GFLOP/s, {summary['threads']} threads, "
          f"{summary['device_name']}")
    if "compare" in summary:
        print(f"compare {args.compare}: {summary['compare']}")
    common.emit_json(summary, args.json)
    return summary


if __name__ == "__main__":
    main()
