"""Building blocks the Fashion-FINE entry points share: model, optimizer, initial weights, feature extraction."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from engine.config import ConfigError
from engine.data import move_to_device
from engine.logger import get_logger
from engine.optim import build_optimizer, build_scheduler
from engine.precision import autocast
from engine.sections import OptimConfig, ScheduleConfig
from models.checkpoint_keys import load_checkpoint
from models.fine_config import CompatConfig, FineModelConfig, LossConfig


def build_model(model_cls: type[nn.Module], model: FineModelConfig, loss: LossConfig, compat: CompatConfig,
                tokenizer: Any) -> nn.Module:
    """A Fashion-FINE task model sized for the tokenizer's vocabulary."""
    net = model_cls(model, loss, compat, vocab_size=len(tokenizer), sep_token_id=tokenizer.sep_token_id)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    get_logger().info("%s: %.1fM trainable parameters", model_cls.__name__, trainable / 1e6)
    return net


def optimizer_and_schedule(model: nn.Module, optim: OptimConfig, schedule: ScheduleConfig, compat: CompatConfig,
                           epochs: int, iters_per_epoch: int) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over decay/no-decay groups (`compat.no_decay_temp: compat` decays the temperature, D14)."""
    optim = dataclasses.replace(optim, decay_scalars=compat.is_compat("no_decay_temp") or optim.decay_scalars)
    optimizer = build_optimizer(model, optim)
    return optimizer, build_scheduler(optimizer, schedule, optim.lr, epochs, iters_per_epoch)


def initialise(model: nn.Module, checkpoint: str | None, *, strict: bool = False) -> None:
    """Load starting weights when a checkpoint is given (published or ours); fresh init otherwise."""
    if checkpoint:
        load_checkpoint(model, checkpoint, strict=strict)
    else:
        get_logger().warning("no --checkpoint given: training from randomly initialised encoders")


@torch.no_grad()
def extract(loader: DataLoader, encode: Callable[[dict], torch.Tensor], device: torch.device,
            precision: str) -> torch.Tensor:
    """Run `encode` over every batch (under the run's precision) and stack the fp32 results on `device`."""
    parts = []
    for batch in loader:
        batch = move_to_device(batch, device)
        with autocast(precision, device):
            parts.append(encode(batch).float())
    return torch.cat(parts)


def check_queue_size(queue_size: int, global_batch: int) -> None:
    """The queues take whole global batches (published assert `Q % N == 0`); fail before training starts."""
    if queue_size % global_batch:
        raise ConfigError(f"model.queue_size {queue_size} is not a multiple of the global batch {global_batch} "
                         "(data.batch_size x number of processes)")
