"""CUDA checks (``pytest -m gpu``; skipped without a CUDA device, run by ``benchmarks/gpu_check.sh``).

Tiny models (the ``smoke`` sizes of :mod:`benchmarks.common`): bf16 autocast training on CUDA, IRRA's pure
fp16 (``legacy_fp16``) step, CUDA evaluation equal to CPU evaluation, and batch invariance on CUDA.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import load_bench_config, synthetic_batch  # noqa: E402
from irra_core import losses  # noqa: E402
from irra_core.evaluation import rank_metrics  # noqa: E402
from irra_core.model import build_model  # noqa: E402
from irra_core.optim import build_optimizer  # noqa: E402

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def _model(arch: str, precision: str = "fp32", config: str = "B"):
    cfg = load_bench_config(config, arch, smoke=True, extra={"model.precision": precision})
    torch.manual_seed(0)
    return cfg, build_model(cfg, num_classes=16)


@pytest.fixture(autouse=True)
def _exact_fp32():
    # TF32 convolutions/matmuls would make CUDA fp32 differ from CPU by ~1e-3
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("arch", ["irra", "php"])
def test_bf16_forward_backward_on_cuda(arch):
    cfg, model = _model(arch)
    model.to(CUDA).train()
    batch = synthetic_batch(cfg, 8, CUDA)
    with torch.autocast(CUDA.type, dtype=torch.bfloat16):
        loss = sum(losses.total_loss(model(batch), batch, cfg.loss_weights()).values())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast keeps fp32 weights


@pytest.mark.parametrize("arch", ["irra", "php"])
def test_legacy_fp16_step_on_cuda(arch):
    cfg, model = _model(arch, "legacy_fp16")
    model.to(CUDA).train()
    assert model.base_model.visual.conv1.weight.dtype == torch.float16
    optimizer = build_optimizer(model, cfg.optim)
    before = model.base_model.visual.conv1.weight.detach().clone()
    batch = synthetic_batch(cfg, 8, CUDA)
    loss = sum(losses.total_loss(model(batch), batch, cfg.loss_weights()).values())
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    after = model.base_model.visual.conv1.weight.detach()
    assert after.dtype == torch.float16 and torch.isfinite(after).all()
    assert not torch.equal(before, after)


@pytest.mark.parametrize("arch", ["irra", "php"])
def test_cuda_evaluation_equals_cpu(arch):
    cfg, model = _model(arch)
    model.eval()
    batch = synthetic_batch(cfg, 12, "cpu", seed=3)
    pids = torch.arange(12) // 2
    feats = {}
    for device in ("cpu", "cuda"):
        model.to(device)
        with torch.no_grad():
            feats[device] = (model.encode_text(batch["caption_ids"].to(device)).float().cpu(),
                             model.encode_image(batch["images"].to(device)).float().cpu())
    for cpu_part, cuda_part in zip(feats["cpu"], feats["cuda"]):
        torch.testing.assert_close(cuda_part, cpu_part, rtol=1e-4, atol=1e-4)
    metrics = {d: rank_metrics(q_feats=q, g_feats=g, q_pids=pids, g_pids=pids) for d, (q, g) in feats.items()}
    for key in ("R1", "R5", "mAP"):
        assert metrics["cuda"][key] == pytest.approx(metrics["cpu"][key], abs=1e-6)


@pytest.mark.parametrize("arch", ["irra", "php"])
def test_batch_invariance_on_cuda(arch):
    cfg, model = _model(arch)
    model.to(CUDA).eval()
    batch = synthetic_batch(cfg, 6, CUDA, seed=5)
    ids = batch["caption_ids"]
    ids[0, 4:] = 0  # a short caption next to longer ones: padding trimmed to the batch's longest
    ids[0, 3] = 49407
    with torch.no_grad():
        whole_t = model.encode_text(ids)
        whole_i = model.encode_image(batch["images"])
        for i in range(ids.shape[0]):
            torch.testing.assert_close(model.encode_text(ids[i:i + 1]), whole_t[i:i + 1], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(model.encode_image(batch["images"][i:i + 1]), whole_i[i:i + 1],
                                       rtol=1e-4, atol=1e-4)
