"""Seeds and RNG state: per-rank seeding, per-item generators, capture/restore for exact resume."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def derive_seed(*parts: int) -> int:
    """A well-mixed 32-bit seed from integer parts (e.g. seed, epoch, rank, worker)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed Python, NumPy and torch (all devices) for this rank; returns the seed used."""
    s = derive_seed(seed, rank)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
    return s


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Generator for the random draws of one dataset item in one epoch (augmentation, row choice).

    Independent of worker count, batch order and resume point, so interrupted and uninterrupted runs
    draw identical augmentations (the published workers shared NumPy's global generator and could repeat
    them).
    """
    return np.random.default_rng(derive_seed(seed, epoch, index))


def worker_init(seed: int, epoch: int, rank: int):
    """DataLoader `worker_init_fn` seeding each worker's global generators from (seed, epoch, rank, worker)."""

    def init(worker_id: int) -> None:
        s = derive_seed(seed, epoch, rank, worker_id)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)

    return init


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    # Plain containers and tensors only, so checkpoints load with torch.load(weights_only=True).
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
