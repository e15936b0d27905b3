"""Process-level runtime settings, each applied explicitly, never at import.

* :func:`tune_allocator` keeps freed memory in the C heap instead of returning it to the kernel. It is
  process-wide and cannot be undone, so ``import irra_core`` does not call it: the code that runs the heavy
  CPU work does, once per process - :func:`irra_core.engine.fit` and
  :func:`irra_core.evaluation.encode_split` (so every command and notebook that trains or evaluates), the
  training notebooks' first cells (:func:`irra_core.train_notebook.training_setup` and
  :func:`~irra_core.train_notebook.one_batch_walkthrough`, which allocate a whole model before ``fit`` runs),
  the benchmarks (``benchmarks/common.py``) and the test suite (``tests/conftest.py``).
* :func:`flush_denormals` sets flush-to-zero / denormals-are-zero on the CPU threads torch computes on (see
  "Why subnormal numbers matter" below). :func:`tune_cpu` applies both, and is what the call sites above call.
* :func:`torch_threads` sets torch's intra-op thread count for a block and restores it afterwards.

Why the allocator matters:

PyTorch's CPU allocator hands every tensor to glibc ``malloc``. By default glibc serves blocks above a
(dynamic) threshold with ``mmap`` and trims the heap eagerly, so each training step maps and unmaps the
same tens of megabytes of activations; every first touch of those pages is a page fault. In the virtual
machines this project runs on, page faults are very expensive: a ``php-cpu`` training step measured
10 s with glibc's defaults and 1.3 s with the settings below (same model, same batch; see
``benchmarks/README.md``). Raising the mmap threshold to its maximum (32 MiB) and the trim threshold
keeps the pages mapped and reused.

Measured again on this project's 2-core machine (``benchmarks/bench_train.py --config php-cpu --model php
--steps 3``, loaded machine): 1.42 s per step tuned, 7.65 s with ``IRRA_MALLOC_TUNING=0``.
Set ``IRRA_MALLOC_TUNING=0`` to leave glibc's defaults alone.

Why subnormal numbers matter:

float32 values below 1.2e-38 (subnormals) take a slow microcode path on Intel CPUs, tens of times slower
per operation (how much depends on the CPU: the machines of earlier sessions never showed it). IRRA's MLM
head softmaxes over the whole 49,408-token vocabulary, and as training sharpens it the probabilities of
the tokens never seen underflow into that range, and so do the gradients built from them. On the project's 2-core Intel
machine (Xeon, family 6 model 207) an ``irra-cpu`` step in the third epoch took 0.96-1.13 s, and 0.44 s
with flush-to-zero, the losses equal to the printed digits (``benchmarks/README.md``, "Twelfth pass"). The
setting is per thread: torch's ``set_flush_denormal`` changes only the calling thread, and OpenMP's worker
threads keep the mode they started with, so :func:`flush_denormals` also runs it once on every thread of
the OpenMP team. Set ``IRRA_FLUSH_DENORMALS=0`` to keep subnormals (IEEE gradual underflow).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
from typing import Iterator

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_applied = False


def tune_allocator(mmap_threshold: int = 32 * 1024 * 1024, trim_threshold: int = 1 << 30,
                   top_pad: int = 256 * 1024 * 1024) -> bool:
    """Apply the glibc ``mallopt`` settings once per process; returns whether they are in force.

    Args:
        mmap_threshold: bytes above which ``malloc`` maps fresh pages (glibc's maximum, 32 MiB).
        trim_threshold: bytes of free heap top kept before giving memory back to the kernel.
        top_pad: bytes of extra heap requested with each growth.

    A no-op (False) off Linux/glibc or when ``IRRA_MALLOC_TUNING=0``. Safe to call repeatedly.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get("IRRA_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = all(mallopt(option, value) == 1 for option, value in (
        (_M_MMAP_THRESHOLD, mmap_threshold), (_M_TRIM_THRESHOLD, trim_threshold), (_M_TOP_PAD, top_pad)))
    _applied = ok
    return ok


def _subnormal_share() -> float:
    """Share of an intra-op parallel multiply's subnormal results kept (not flushed): 1.0 when no thread of
    torch's flushes, 0.0 when every thread does, in between when only some do."""
    import torch

    n = 1 << 20  # far above torch's parallel grain size, so every OpenMP thread takes a share
    # 2**-127 written as bits (0x00400000): converting a Python float would itself be flushed on this thread
    subnormal = torch.full((n,), 1 << 22, dtype=torch.int32).view(torch.float32)
    return int(torch.count_nonzero(subnormal * 0.5)) / n


def _on_every_openmp_thread(action) -> bool:
    """Run ``action()`` once on each thread of the OpenMP team torch uses; False when it cannot."""
    import glob

    import torch

    libraries = sorted(glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "lib*omp*.so*")))
    callback_type = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
    for path in libraries:
        try:
            parallel = ctypes.CDLL(path).GOMP_parallel  # libgomp, and LLVM/Intel OpenMP's GNU entry point
        except (OSError, AttributeError):
            continue
        parallel.argtypes = [callback_type, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        parallel.restype = None
        callback = callback_type(lambda _data: action())
        parallel(callback, None, torch.get_num_threads(), 0)  # ctypes drops the GIL; each thread retakes it
        return True
    return False


def flush_denormals(on: bool = True) -> bool:
    """Flush subnormal float results to zero (FTZ) and read subnormal inputs as zero (DAZ) on the CPU threads
    torch computes on; returns whether the mode now holds on all of them.

    Args:
        on: True to flush; False restores IEEE gradual underflow (subnormals kept).

    torch's ``set_flush_denormal`` is per thread, so this applies it to the calling thread and then, through
    OpenMP's ``GOMP_parallel``, to every thread of torch's intra-op team, and checks the result with a
    parallel multiply. Threads created later inherit the mode of the thread that creates them. A no-op
    (False) on CPUs without the SSE3 flags (``set_flush_denormal`` refuses) or when
    ``IRRA_FLUSH_DENORMALS=0`` (then subnormals are kept, whatever ``on`` says). Safe to call repeatedly.
    Why: the module docstring ("Why subnormal numbers matter"); ``benchmarks/README.md``, "Twelfth pass".
    """
    import torch

    if on and os.environ.get("IRRA_FLUSH_DENORMALS", "1") == "0":
        return False
    if not torch.set_flush_denormal(on):
        return False
    wanted = 0.0 if on else 1.0
    if _subnormal_share() == wanted:
        return True
    if not _on_every_openmp_thread(lambda: torch.set_flush_denormal(on)):
        return False  # no OpenMP runtime found next to torch: the calling thread alone has the mode
    return _subnormal_share() == wanted


def tune_cpu() -> tuple[bool, bool]:
    """:func:`tune_allocator` then :func:`flush_denormals`: what the code that runs heavy CPU work calls once per
    process, before it allocates (module docstring). Returns both results, ``(allocator, flush)``."""
    return tune_allocator(), flush_denormals()


@contextlib.contextmanager
def torch_threads(count: int, device: "torch.device | str" = "cpu") -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(count)``, then restore the previous count (also on error).

    A no-op on a non-CPU ``device`` or when the count is already ``count``. torch's thread count is
    process-wide: other Python threads running torch operations during the block use ``count`` too.

    Args:
        count: intra-op threads for the block (>= 1).
        device: where the block's work runs; only ``cpu`` work is affected by the setting.

    Raises:
        ValueError: ``count`` < 1.
    """
    import torch

    if count < 1:
        raise ValueError(f"thread count must be >= 1, got {count}")
    before = torch.get_num_threads()
    if torch.device(device).type != "cpu" or before == count:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def device_type(name: "str | torch.device | None" = "auto") -> str:
    """The device type ``name`` resolves to (``"cuda"`` or ``"cpu"``) without checking it: ``auto`` (or None)
    is ``cuda`` when a CUDA device is available. For choosing a process-group backend before the device
    itself is resolved (:func:`resolve_device` checks it)."""
    import torch

    if name is None or str(name) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if str(name).startswith("cuda") else "cpu"


def resolve_device(name: "str | torch.device | None" = "auto", local_rank: int | None = None) -> "torch.device":
    """The one device resolver of the project (library, commands and notebooks).

    Args:
        name: ``auto`` (or None) -> ``cuda`` when a CUDA device is available, else ``cpu``; ``cpu``, ``cuda``,
            ``cuda:N`` or a ``torch.device`` as given.
        local_rank: under torchrun, the process's local rank: a bare ``cuda`` becomes ``cuda:<local_rank>``.

    Raises:
        ConfigError: ``name`` asks for CUDA on a machine without it, or names no known device.
    """
    import torch

    from irra_core.config import ConfigError

    name = device_type(name) if name is None or str(name) == "auto" else str(name)
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for, but no CUDA device is available; use 'cpu' or 'auto' "
                              f"(train.device / --device / DEVICE)")
        if name == "cuda" and local_rank is not None:
            name = f"cuda:{local_rank}"
    elif name != "cpu":
        raise ConfigError(f"device {name!r} is not known; choose auto, cpu, cuda or cuda:N "
                          f"(train.device / --device / DEVICE)")
    return torch.device(name)
