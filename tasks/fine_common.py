"""Building blocks the Fashion-FINE entry points share: model, optimizer, initial weights, feature extraction."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from engine import distributed as du
from engine.config import ConfigError, config_to_dict
from engine.data import EpochSampler, TrainLoader, move_to_device
from engine.distributed import DistInfo
from engine.logger import get_logger
from engine.optim import build_optimizer, build_scheduler
from engine.precision import autocast
from engine.sections import OptimConfig, ScheduleConfig
from engine.trainer import BEST, LAST, FitResult, Trainer
from models.checkpoint_keys import load_checkpoint
from models.fine_config import CompatConfig, FineModelConfig, LossConfig


class SelectionEvaluator:
    """Base of the task evaluators: the trainer hook (metrics on rank 0; other ranks return {} and receive
    rank 0's by broadcast) and the warning that selecting on the reported split deserves.

    Subclasses set `name` (the evaluated set), `reported_split` and `reported_warning`, and define `run`."""

    name: str
    reported_split: str
    reported_warning: str

    def run(self, model: nn.Module) -> Any:
        raise NotImplementedError

    @property
    def selection_warning(self) -> str | None:
        """The warning that selecting on this set deserves (recorded in the result file), if any."""
        return self.reported_warning if self.name == self.reported_split else None

    def __call__(self, model: nn.Module, epoch: int | None = None) -> dict[str, float]:
        if not du.is_main_process():
            return {}
        if self.selection_warning:
            get_logger().warning(self.selection_warning)
        return self.run(model).metrics


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


def train_select_report(cfg: Any, info: DistInfo, output_dir: Path, model: nn.Module, dataset: Dataset,
                        select: Callable, resume: str | None,
                        report: Callable[[nn.Module, dict], Any]) -> FitResult:
    """Train `model` on `dataset` with the engine, selecting on `select`; then reload the selected checkpoint
    (best, else last) and hand it to `report` (the final evaluation) unless the run was interrupted."""
    sampler = EpochSampler(len(dataset), seed=cfg.runtime.seed, rank=info.rank, world_size=info.world_size)
    loader = TrainLoader(dataset, batch_size=cfg.data.batch_size, sampler=sampler,
                         num_workers=cfg.runtime.num_workers,
                         pin_memory=cfg.runtime.pin_memory and info.device.type == "cuda", seed=cfg.runtime.seed,
                         rank=info.rank)
    optimizer, scheduler = optimizer_and_schedule(model, cfg.optim, cfg.schedule, cfg.compat,
                                                  cfg.train.schedule_epochs or cfg.train.epochs, len(loader))
    trainer = Trainer(model, loader, optimizer, scheduler, cfg.train, info, output_dir,
                      schedule_interval=cfg.schedule.interval, loss_weights=cfg.loss.weights, evaluate=select,
                      config_dict=config_to_dict(cfg))
    if resume:
        trainer.resume(resume)
    result = trainer.fit()
    if not result.interrupted:
        chosen = output_dir / BEST if (output_dir / BEST).is_file() else output_dir / LAST
        load_checkpoint(trainer.module, chosen, strict=True)
        get_logger().info("final evaluation of %s (selected on %s, epoch %s)", chosen,
                          getattr(select, "name", "?"), result.best_epoch)
        extra = {"checkpoint": str(chosen), "selected_on": getattr(select, "name", None),
                 "best_epoch": result.best_epoch}
        if getattr(select, "selection_warning", None):  # selected on the reported split (D1)
            extra["selection_warning"] = select.selection_warning
        report(trainer.module, extra)
    return result
