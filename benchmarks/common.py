"""What the benchmark scripts share: the thread count and device of their command line, and their timing."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch


def benchmark_device(name: str, threads: int | None) -> torch.device | None:
    """Set torch's intra-op threads (if given) and return the device; None, after one error line on stderr, when
    CUDA is asked for and there is no GPU (the caller exits 2)."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no GPU is available", file=sys.stderr)
        return None
    return device


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], calls: int, device: torch.device) -> list[float]:
    """Seconds of each of `calls` calls of `fn` (no autograd; CUDA work waited for)."""
    times = []
    with torch.no_grad():
        for _ in range(calls):
            start = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - start)
    return times
