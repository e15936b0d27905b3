"""Process-level settings are explicit: no import side effect, thread counts set in a context and restored."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from irra_core import runtime
from irra_core.evaluation import encode, metrics

ROOT = Path(__file__).resolve().parent.parent


def test_importing_the_library_tunes_nothing():
    code = ("import irra_core, irra_core.engine, irra_core.evaluation, irra_core.model, irra_core.pipeline, "
            "irra_core.workbook, irra_core.train_notebook, irra_core.viz.curves\n"
            "from irra_core import runtime\nprint(runtime._applied)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "IRRA_MALLOC_TUNING": "1"})
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tune_allocator_applies_once_and_can_be_refused(monkeypatch):
    assert runtime.tune_allocator() is True  # conftest applied it already: still in force
    monkeypatch.setattr(runtime, "_applied", False)
    monkeypatch.setenv("IRRA_MALLOC_TUNING", "0")
    assert runtime.tune_allocator() is False


@pytest.mark.skipif(not torch.set_flush_denormal(True),  # the suite's mode already (conftest): no change
                    reason="this CPU has no flush-to-zero mode (x86 with SSE3 only)")
def test_flush_denormals_holds_on_every_intra_op_thread_even_after_the_pool_started(monkeypatch):
    with runtime.torch_threads(2):
        torch.randn(256, 256) @ torch.randn(256, 256)  # the OpenMP team exists before the mode is set
        try:
            assert runtime.flush_denormals(False) is True
            assert runtime._subnormal_share() == 1.0  # IEEE gradual underflow on both threads
            torch.set_flush_denormal(True)  # torch's own switch: the calling thread alone
            assert 0.0 < runtime._subnormal_share() < 1.0  # the worker's share of the product stays subnormal
            assert runtime.flush_denormals(True) is True
            assert runtime._subnormal_share() == 0.0
            bits = torch.full((1 << 20,), 1 << 22, dtype=torch.int32).view(torch.float32)  # 2**-127, subnormal
            assert torch.count_nonzero(bits * 0.5) == 0 and torch.count_nonzero(bits.double()) == 0  # DAZ: read as 0
            monkeypatch.setenv("IRRA_FLUSH_DENORMALS", "0")
            assert runtime.flush_denormals(True) is False  # refused: the mode is left as it is
            assert runtime._subnormal_share() == 0.0
        finally:
            monkeypatch.delenv("IRRA_FLUSH_DENORMALS", raising=False)
            runtime.flush_denormals(True)  # the suite runs flushed (conftest)


def test_torch_threads_sets_and_restores_even_on_error():
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with runtime.torch_threads(target):
        assert torch.get_num_threads() == target
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="boom"):
        with runtime.torch_threads(target):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with runtime.torch_threads(target, "cuda"):  # GPU work: the CPU setting is left alone
        assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match=">= 1"):
        with runtime.torch_threads(0):
            pass


def test_ranking_runs_on_one_thread_and_restores_the_count(monkeypatch):
    seen = []
    original = metrics._rank_chunk

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(metrics, "_rank_chunk", spy)
    with runtime.torch_threads(2):
        out = metrics.rank_metrics(torch.randn(7, 5), torch.arange(7) % 5, torch.arange(5), chunk_size=3)
        assert torch.get_num_threads() == 2
    assert seen == [metrics.RANKING_CPU_THREADS] * 3 and 0 <= out["mAP"] <= 100


class _Towers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image, self.text = nn.Linear(4, 3), nn.Linear(4, 3)

    def encode_image(self, x):
        return self.image(x)

    def encode_text(self, x):
        return self.text(x)


def test_fit_and_encode_split_tune_the_process(monkeypatch):
    calls = []
    monkeypatch.setattr(encode, "tune_cpu", lambda: calls.append("encode"))
    loader = DataLoader(TensorDataset(torch.arange(6), torch.randn(6, 4)), batch_size=4)
    split = encode.encode_split(_Towers(), None, loaders=(loader, loader), device="cpu")
    assert calls == ["encode"] and split.q_feats.shape == (6, 3)
    from irra_core import engine

    monkeypatch.setattr(engine, "tune_cpu", lambda: calls.append("fit"))
    monkeypatch.setattr(engine, "init_distributed", lambda device: (_ for _ in ()).throw(RuntimeError("stop")))
    with pytest.raises(RuntimeError, match="stop"):
        engine.fit(SimpleNamespace(train=SimpleNamespace(device="cpu")), "unused")
    assert calls == ["encode", "fit"]


def test_one_device_resolver(monkeypatch):
    import torch

    from irra_core.config import ConfigError
    from irra_core.runtime import device_type, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == torch.device("cpu") == resolve_device(torch.device("cpu"))
    assert device_type("auto") == "cpu" and device_type("cuda:1") == "cuda"
    with pytest.raises(ConfigError, match="no CUDA device.*'cpu' or 'auto'"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="'tpu' is not known; choose auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device_type("auto") == "cuda"
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda:1")
    assert resolve_device("cuda:0", local_rank=1) == torch.device("cuda:0")


def test_cpu_model_reads_the_first_processor_and_falls_back(tmp_path, monkeypatch):
    from irra_core.workbook import cpu_model

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 207\n"
                    "model name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu sse3\n\n"
                    "processor\t: 1\nmodel name\t: Another CPU\n")
    assert cpu_model(info) == "Intel(R) Xeon(R) Processor (family 6, model 207)"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n")
    assert cpu_model(info) == "AMD EPYC 7B13"
    import platform

    monkeypatch.setattr(platform, "processor", lambda: "arm")
    assert cpu_model(tmp_path / "missing") == "arm"
    monkeypatch.setattr(platform, "processor", lambda: "")
    assert cpu_model(tmp_path / "missing") == "unknown"
