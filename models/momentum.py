"""Momentum (EMA) copies of encoders and the feature queues they fill."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def add_momentum_copies(model: nn.Module, names: list[str]) -> list[tuple[nn.Module, nn.Module]]:
    """Create frozen `<name>_m` deep copies of the given submodules; returns the (online, momentum) pairs."""
    pairs = []
    for name in names:
        online = getattr(model, name)
        momentum = copy.deepcopy(online)
        momentum.requires_grad_(False)
        setattr(model, f"{name}_m", momentum)
        pairs.append((online, momentum))
    return pairs


@torch.no_grad()
def copy_online_to_momentum(pairs: list[tuple[nn.Module, nn.Module]]) -> None:
    """Reset every momentum copy to its online weights (used when a checkpoint lacks the `_m` keys)."""
    for online, momentum in pairs:
        for p_m, p in zip(momentum.parameters(), online.parameters()):
            p_m.copy_(p)


@torch.no_grad()
def momentum_update(pairs: list[tuple[nn.Module, nn.Module]], m: float) -> None:
    """`theta_m <- m * theta_m + (1 - m) * theta` for every pair (fused multi-tensor ops)."""
    online = [p for o, _ in pairs for p in o.parameters()]
    moment = [p for _, mm in pairs for p in mm.parameters()]
    torch._foreach_mul_(moment, m)
    torch._foreach_add_(moment, online, alpha=1.0 - m)


def random_unit_queue(dim: int, size: int) -> torch.Tensor:
    """`(dim, size)` queue of random unit columns (the published initialisation)."""
    return F.normalize(torch.randn(dim, size), dim=0)


@torch.no_grad()
def write_queue(queue: torch.Tensor, start: int, columns: torch.Tensor) -> int:
    """Write `columns (N, dim)` into `queue (dim, Q)` at `[start, start + N)`; returns the next start.

    The published code requires Q % N == 0 so a write never wraps; that is checked here.
    """
    n, size = columns.shape[0], queue.shape[1]
    if size % n:
        raise ValueError(f"queue size {size} is not a multiple of the global batch {n}")
    queue[:, start : start + n] = columns.T.to(queue.dtype)
    return (start + n) % size
