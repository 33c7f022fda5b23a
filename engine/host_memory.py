"""glibc malloc settings that keep freed host memory for reuse instead of handing it back to the kernel.

By default glibc serves blocks above a (dynamic) threshold with fresh `mmap`s and trims the heap top as soon as
~2x that threshold is free, so every training step page-faults its activations and gradients in again: ~130,000
minor faults per backward of the base pretraining step on CPU. With a fixed 32 MiB mmap threshold (glibc's
maximum) and a 2 GiB trim threshold the step re-uses its own pages: 300-4,000 faults, backward 2.42-2.50 ->
2.07-2.18 s, peak RSS unchanged (benchmarks/README.md, "Pretraining step per module"). Any `MALLOC_*` variable in the environment,
or a non-glibc C library, leaves malloc as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc refuses larger values on 64-bit
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int: the largest is just under 2 GiB


def keep_freed_memory() -> bool:
    """Apply the settings; True when glibc accepted both (False elsewhere, or when the user set MALLOC_*)."""
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
