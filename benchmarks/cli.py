"""What the benchmark scripts' command lines share: the thread count and the device they run on."""

from __future__ import annotations

import sys

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
