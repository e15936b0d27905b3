"""Shared helpers of the benchmark scripts: the configurations of ``../shared/reference/perf.json``,
synthetic batches, a machine-speed yardstick, memory probes, FLOP counting and output (table + JSON).

Shared machines are noisy: every benchmark records the load average and an fp32 matmul GFLOP/s yardstick
measured in its own process, so a slow run can be told apart from a slow code path.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from irra_core.config import Config, load_config  # noqa: E402
from irra_core.runtime import tune_cpu  # noqa: E402

# The benchmarks time what fit() and encode_split() run: a process with the C allocator tuned and subnormals
# flushed to zero (runtime.tune_cpu).
tune_cpu()

REFERENCE_PERF = Path(os.environ.get("IRRA_REFERENCE_DIR", ROOT.parent / "shared" / "reference")) / "perf.json"

#: perf.json config S: 256-wide towers, 192x64, context 77, batch 32, sdm+itc, Adam (eps 1e-3), fp32
S_OVERRIDES: dict[str, Any] = {
    "data.img_size": [192, 64], "data.batch_size": 32, "data.text_length": 77, "model.embed_dim": 256,
    "model.vision_width": 256, "model.vision_layers": 4, "model.vision_heads": 4, "model.patch_size": 16,
    "model.stride_size": 16, "model.text_width": 256, "model.text_layers": 4, "model.text_heads": 4,
    "loss.names": "sdm+itc", "data.mlm": False, "optim.optimizer": "Adam", "optim.lr": 1e-5,
    "optim.weight_decay": 4e-5, "model.precision": "fp32",  # Adam with IRRA's defaults (eps 1e-3 by schema)
    # perf.json's config S is CLIP's towers: a patchify ViT and no token convolution (the cpu presets have both)
    "model.conv_stem": False, "model.text_conv": 0}
#: config B: the paper presets (ViT-B/16 at 384x128, 12-layer 512 text tower), random weights (no download)
B_OVERRIDES: dict[str, Any] = {"model.pretrained": ""}
#: tiny sizes for smoke runs (tests, --dry-run): a few seconds on two cores
SMOKE_OVERRIDES: dict[str, Any] = {
    "data.img_size": [32, 16], "data.text_length": 16, "model.embed_dim": 32, "model.vision_width": 32,
    "model.vision_layers": 1, "model.vision_heads": 2, "model.text_width": 32, "model.text_layers": 1,
    "model.text_heads": 2, "model.vocab_size": 49408, "model.cmt_depth": 1, "model.pretrained": "",
    "model.moe_layers": 1, "model.moe_heads": 2, "model.cnum": 2}

#: bf16 dense peak TFLOP/s by device-name substring (H100/H200 SXM: 989; H100 PCIe: 756)
BF16_PEAK_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0))


def load_bench_config(config: str, model: str, *, smoke: bool = False, extra: dict | None = None) -> Config:
    """The :class:`Config` of benchmark configuration ``config`` (``"S"`` or ``"B"``) for ``model``
    (``"irra"`` or ``"php"``), or of a preset name (``"irra-cpu"``...) when ``config`` is one.

    ``S`` is perf.json's config S on either architecture's heads (its losses are ``sdm+itc``). ``B`` is the
    paper preset (``irra``: sdm+mlm+id; ``php``: sdm+itc+aux) with random weights. ``smoke`` shrinks every
    size (``SMOKE_OVERRIDES``) but keeps the losses and heads.
    """
    if config == "S":
        preset, overrides = ("irra-cpu" if model == "irra" else "php-cpu"), dict(S_OVERRIDES)
    elif config == "B":
        preset, overrides = model, dict(B_OVERRIDES)
    else:
        preset, overrides = config, {}
    if smoke:
        overrides.update(SMOKE_OVERRIDES)
    overrides.update(extra or {})
    return load_config(preset, overrides)


def synthetic_batch(cfg: Config, batch_size: int, device: torch.device | str = "cpu", seed: int = 0) -> dict:
    """A training batch of random images (B, 3, H, W) and captions of 20-40 tokens (SOT ... EOT, zero
    padding to ``cfg.data.text_length``), pairs of identities (``pids`` (B,)), and MLM inputs/labels (B, L)
    with ~15% of the tokens masked. CLIP's token ids: SOT 49406, EOT 49407, mask 49405."""
    gen = torch.Generator().manual_seed(seed)
    length = cfg.data.text_length
    ids = torch.zeros(batch_size, length, dtype=torch.long)
    for i in range(batch_size):
        n = min(length - 1, int(torch.randint(20, 41, (1,), generator=gen)))
        ids[i, 0], ids[i, 1:n] = 49406, torch.randint(1, 49405, (n - 1,), generator=gen)
        ids[i, n] = 49407
    labels = torch.where(torch.rand(ids.shape, generator=gen) < 0.15, ids, torch.zeros_like(ids))
    labels[:, 0] = 0
    labels[ids >= 49405] = 0
    labels[:, 1] = ids[:, 1]  # at least one masked token per caption
    height, width = cfg.data.img_size
    batch = {"images": torch.randn(batch_size, 3, height, width, generator=gen), "caption_ids": ids,
             "pids": torch.arange(batch_size) // 2, "mlm_ids": torch.where(labels > 0, 49405, ids),
             "mlm_labels": labels}
    return {k: v.to(device) for k, v in batch.items()}


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work so that wall-clock timings cover it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(repeats: int = 10) -> float:
    """fp32 GFLOP/s of a fixed (1568 x 256) @ (256 x 1024) CPU matmul in this process: a yardstick for how
    much CPU a shared machine gave this run (perf.json was measured on an idle one)."""
    x, w = torch.randn(1568, 256), torch.randn(256, 1024)
    x @ w
    start = time.perf_counter()
    for _ in range(repeats):
        x @ w
    return round(2 * 1568 * 256 * 1024 * repeats / (time.perf_counter() - start) / 1e9, 1)


def machine_info(device: torch.device) -> dict:
    """Load average, CPU count, threads, torch version and (on CUDA) the device name."""
    load = os.getloadavg()
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "loadavg_1_5_15": [round(v, 2) for v in load],
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}


def bf16_peak_tflops(device: torch.device) -> float | None:
    """Dense bf16 peak of a known CUDA device (None on CPU or an unknown card)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in BF16_PEAK_TFLOPS:
        if key in name:
            return peak
    return None


def current_rss_bytes() -> int:
    """Resident set size of this process now."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux ``clear_refs`` 5); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak RSS since the last :func:`reset_peak_rss` (``VmHWM``; ``ru_maxrss`` as a fallback)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextmanager
def attention_flop_counter(model: torch.nn.Module, backward: bool) -> Iterator[list[int]]:
    """Count the FLOPs of every :class:`irra_core.model.clip.Attention` core (q k^T and p v) run inside.

    ``torch.utils.flop_counter`` does not count CPU SDPA kernels, so the attention products are counted
    from the shapes: 4 * B * Nq * Nk * D forward (two matmuls, 2 FLOPs per multiply-add), twice that for the
    backward. The causal text mask is not discounted (the usual MFU convention). Yields a one-item list
    holding the running total.
    """
    from irra_core.model import fast
    from irra_core.model.clip import Attention

    total = [0]

    def hook(module: Attention, args: tuple, kwargs: dict) -> None:
        query = args[0]
        key_value = args[1] if len(args) > 1 else kwargs.get("key_value")
        nk = query.shape[1] if key_value is None else key_value.shape[1]
        flops = 4 * query.shape[0] * query.shape[1] * nk * module.width
        total[0] += flops * (3 if backward else 1)

    original = fast.attention_packed

    def counting_packed(module: Attention, tokens: torch.Tensor, packing) -> torch.Tensor:
        b, n = packing.shape  # the packed path attends on the padded (B, N) layout
        total[0] += 4 * b * n * n * module.width * (3 if backward else 1)
        return original(module, tokens, packing)

    modules = [m for m in model.modules() if isinstance(m, Attention)]
    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in modules]
    fast.attention_packed = counting_packed
    try:
        yield total
    finally:
        for handle in handles:
            handle.remove()
        fast.attention_packed = original  # back to the library's function


def count_step_flops(run_step, model: torch.nn.Module, backward: bool = True) -> dict:
    """FLOPs of one call of ``run_step()`` (forward, and backward when ``backward``).

    Matmuls, convolutions and linear layers are counted by ``torch.utils.flop_counter.FlopCounterMode``
    (2 FLOPs per multiply-add; its backward rules give 2x the forward matmuls); attention cores by
    :func:`attention_flop_counter` (any SDPA the counter saw is dropped first, so nothing counts twice).
    Element-wise work (norms, activations, softmax, the optimiser) is not counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with attention_flop_counter(model, backward) as attention, FlopCounterMode(display=False) as counter:
        run_step()
    per_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    matmul = sum(v for k, v in per_op.items() if "scaled_dot_product" not in k)
    return {"total": matmul + attention[0], "matmul": matmul, "attention": attention[0]}


def analytic_tower_flops(cfg: Config, text_tokens: int) -> dict:
    """Forward FLOPs per pair of the two CLIP towers from their sizes (a cross-check of the counter).

    Image: patch embedding 2 * P * (3 p^2) * W, then per layer 24 N W^2 (qkv 6, out 2, MLP 16 N W^2) + 4 N^2 W
    attention, with N = P + 1 tokens; projection 2 W E (CLS). Text: the same per layer over ``text_tokens``
    positions, plus the projection of every position (2 L W E) and, with ``model.text_conv`` k, the token
    convolution (2 L k W^2). Heads and losses are not included.
    """
    m = cfg.model
    height, width = cfg.data.img_size
    grid = ((height - m.patch_size) // m.stride_size + 1) * ((width - m.patch_size) // m.stride_size + 1)
    n, wv = grid + 1, m.vision_width
    image = 2 * grid * 3 * m.patch_size ** 2 * wv + m.vision_layers * (24 * n * wv ** 2 + 4 * n * n * wv) \
        + 2 * wv * m.embed_dim
    length, wt = text_tokens, m.text_width
    text = m.text_layers * (24 * length * wt ** 2 + 4 * length * length * wt) + 2 * length * wt * m.embed_dim \
        + 2 * length * m.text_conv * wt ** 2
    return {"image_fwd": int(image), "text_fwd": int(text), "train_towers": int(3 * (image + text))}


def reference_pairs_per_s(config: str, model: str) -> float | None:
    """perf.json's reference training pairs/s (CPU, fp32) for ``config`` and ``model``, or None."""
    if not REFERENCE_PERF.exists():
        return None
    rows = json.loads(REFERENCE_PERF.read_text()).get("train", [])
    match = [r for r in rows if r["config"] == config and r["model"] == model]
    return float(match[0]["pairs_per_s"]) if match else None


def print_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> None:
    """Print ``rows`` as a fixed-width table of ``(key, header)`` columns."""
    cells = [[h for _, h in columns]] + [[_fmt(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    for line in cells:
        print("  ".join(c.rjust(w) for c, w in zip(line, widths)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def emit_json(summary: dict, path: str | None = None) -> None:
    """Print ``summary`` as one JSON line (the last line of the output); also write it to ``path``."""
    text = json.dumps(summary)
    if path:
        from irra_core.io_utils import atomic_write_text

        atomic_write_text(path, text + "\n")
    print(text)
