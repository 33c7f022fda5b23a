"""Checkpoint files and the training state they hold (for exact `--resume`); written with
`engine.atomic.torch_save`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT_FORMAT = "fashionfine-1"


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def load_file(path: str | Path, weights_only: bool = True) -> dict:
    """torch.load on CPU with a clear error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:  # torch raises several types for corrupt/foreign files
        raise RuntimeError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(obj, dict):
        raise RuntimeError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    return obj


def is_training_checkpoint(obj: dict) -> bool:
    """True for checkpoints written by this framework's trainer (resumable)."""
    return obj.get("format") == CHECKPOINT_FORMAT


def training_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any,
    scaler: torch.amp.GradScaler | None,
    *,
    epoch: int,
    iter_in_epoch: int,
    global_step: int,
    config: dict,
    rng: dict,
    best: dict | None = None,
    extra: dict | None = None,
) -> dict:
    """Everything `--resume` needs to continue exactly (the model under `model`, as published files)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "epoch": epoch,
        "iter_in_epoch": iter_in_epoch,
        "global_step": global_step,
        "config": config,
        "rng": rng,
        "best": best or {},
        "extra": extra or {},
    }
