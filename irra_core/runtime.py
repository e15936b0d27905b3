"""Process-level runtime tuning: keep freed memory in the C heap instead of returning it to the kernel.

PyTorch's CPU allocator hands every tensor to glibc ``malloc``. By default glibc serves blocks above a
(dynamic) threshold with ``mmap`` and trims the heap eagerly, so each training step maps and unmaps the
same tens of megabytes of activations; every first touch of those pages is a page fault. In the virtual
machines this project runs on, page faults are very expensive: a ``php-cpu`` training step measured
10 s with glibc's defaults and 1.3 s with the settings below (same model, same batch; see
``benchmarks/README.md``). Raising the mmap threshold to its maximum (32 MiB) and the trim threshold
keeps the pages mapped and reused.

Set ``IRRA_MALLOC_TUNING=0`` to leave glibc's defaults alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_applied = False


def tune_allocator(mmap_threshold: int = 32 * 1024 * 1024, trim_threshold: int = 1 << 30,
                   top_pad: int = 256 * 1024 * 1024) -> bool:
    """Apply the glibc ``mallopt`` settings once per process; returns whether they are in force.

    A no-op (False) off Linux/glibc or when ``IRRA_MALLOC_TUNING=0``.
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
