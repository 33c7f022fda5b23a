"""The one training loop every entry point uses.

A task model's `forward(batch, ctx)` returns a dict of named scalar losses; the trainer weights and sums
them, runs backward under the configured precision, clips, steps optimizer and schedule, logs every loss
by name, evaluates, selects `checkpoint_best.pth`, and writes resumable checkpoints. Every record (train,
train_epoch, eval) goes to the run's metric sink (engine.tracking: log.jsonl, TensorBoard, W&B).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from engine import distributed as du
from engine.atomic import torch_save
from engine.checkpoint import is_training_checkpoint, load_file, training_state, unwrap
from engine.data import TrainLoader, move_to_device
from engine.distributed import DistInfo
from engine.logger import MetricLogger, get_logger
from engine.precision import autocast, make_grad_scaler, resolve_precision
from engine.progress import Progress
from engine.sections import TrainConfig
from engine.seeding import capture_rng_state, restore_rng_state
from engine.tracking import Tracker

LAST, BEST = "checkpoint_last.pth", "checkpoint_best.pth"
Evaluator = Callable[[nn.Module, int], dict[str, float]]


@dataclass(frozen=True)
class StepContext:
    """Where the loop is; passed to the model's forward (e.g. for warm-up ramps)."""

    epoch: int
    iter_in_epoch: int
    iters_per_epoch: int
    global_step: int

    @property
    def epoch_fraction(self) -> float:
        """Progress through the current epoch in [0, 1)."""
        return self.iter_in_epoch / max(1, self.iters_per_epoch)


@dataclass
class FitResult:
    """Outcome of `Trainer.fit`."""

    last_metrics: dict[str, float]
    best_metric: float | None
    best_epoch: int | None
    global_step: int
    interrupted: bool
    stopped_early: bool


class Trainer:
    """Runs epochs of `model` over `loader` with checkpointing, evaluation and model selection."""

    def __init__(
        self,
        model: nn.Module,
        loader: TrainLoader,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        cfg: TrainConfig,
        dist_info: DistInfo,
        output_dir: str | Path,
        *,
        schedule_interval: str = "step",
        loss_weights: dict[str, float] | None = None,
        evaluate: Evaluator | None = None,
        config_dict: dict | None = None,
        checkpoint_names: tuple[str, str] = (LAST, BEST),
        tracker: Tracker | None = None,
    ) -> None:
        self.cfg, self.dist, self.output_dir = cfg, dist_info, Path(output_dir)
        self.loader, self.optimizer, self.scheduler = loader, optimizer, scheduler
        self.schedule_interval, self.evaluate_fn = schedule_interval, evaluate
        self.loss_weights = dict(loss_weights or {})
        self.config_dict = config_dict or {}
        self.last_name, self.best_name = checkpoint_names
        self.precision = resolve_precision(cfg.precision, dist_info.device)
        self.scaler = make_grad_scaler(self.precision, dist_info.device)
        self.model = self._wrap(model.to(dist_info.device))
        self.epoch, self.iter_in_epoch, self.global_step = 0, 0, 0
        self.best: dict[str, Any] = {"metric": None, "epoch": None, "bad_evals": 0}
        self.last_metrics: dict[str, float] = {}
        self.log = get_logger()
        # The caller's tracker (the runner also logs the final evaluation to it), else one of our own.
        self.owns_tracker = tracker is None
        self.tracker = tracker or Tracker(self.output_dir, cfg.report_to, enabled=dist_info.is_main,
                                          config=self.config_dict)
        if cfg.select_metric is None and cfg.patience is not None:
            raise ValueError("train.patience needs train.select_metric")

    def _wrap(self, model: nn.Module) -> nn.Module:
        if not self.dist.distributed:
            return model
        device_ids = [self.dist.local_rank] if self.dist.device.type == "cuda" else None
        # Buffers (feature queues) are kept identical by all-gathers; broadcasting them every step is waste.
        return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False,
                                       find_unused_parameters=self.cfg.find_unused_parameters)

    @property
    def module(self) -> nn.Module:
        return unwrap(self.model)

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        return training_state(
            self.model, self.optimizer, self.scheduler, self.scaler,
            epoch=self.epoch, iter_in_epoch=self.iter_in_epoch, global_step=self.global_step,
            config=self.config_dict, rng=capture_rng_state(), best=dict(self.best),
        )

    def save(self, name: str) -> Path | None:
        """Write a checkpoint from rank 0 (atomic); every rank waits for it."""
        path = None
        if self.dist.is_main:
            path = torch_save(self.output_dir / name, self.state())
        du.barrier()
        return path

    def resume(self, path: str | Path) -> None:
        """Continue exactly from a checkpoint written by this trainer (model, optimizer, schedule, RNG, position)."""
        obj = load_file(path)
        if not is_training_checkpoint(obj):
            raise RuntimeError(
                f"{path} is not a resumable training checkpoint of this framework (no optimizer/RNG state); "
                "use it to initialise weights instead (--checkpoint)")
        self.module.load_state_dict(obj["model"], strict=True)
        self.optimizer.load_state_dict(obj["optimizer"])
        if self.scheduler is not None and obj["scheduler"] is not None:
            self.scheduler.load_state_dict(obj["scheduler"])
        if obj["scaler"] is not None:
            self.scaler.load_state_dict(obj["scaler"])
        self.epoch, self.iter_in_epoch, self.global_step = obj["epoch"], obj["iter_in_epoch"], obj["global_step"]
        self.best = dict(obj["best"]) or self.best
        restore_rng_state(obj["rng"])
        self.tracker.resume_at(self.global_step)
        changed = _diff_keys(obj.get("config", {}), self.config_dict)
        if changed:
            self.log.warning("resuming with a changed config: %s", ", ".join(changed[:20]))
        self.log.info("resumed from %s at epoch %d, iteration %d (step %d)", path, self.epoch,
                      self.iter_in_epoch, self.global_step)

    # ------------------------------------------------------------------ loop
    def _total_loss(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        unknown = set(self.loss_weights) - set(losses)
        if unknown:
            raise KeyError(f"loss weights given for losses the model does not return: {sorted(unknown)}; "
                           f"model losses: {sorted(losses)}")
        return sum(self.loss_weights.get(name, 1.0) * value for name, value in losses.items())

    def train_step(self, batch: Any, ctx: StepContext) -> dict[str, float]:
        """Forward, backward, clip and optimizer step for one batch; returns the logged scalars."""
        self.model.train()
        batch = move_to_device(batch, self.dist.device)
        with autocast(self.precision, self.dist.device):
            losses = self.model(batch, ctx)
        total = self._total_loss({k: v.float() for k, v in losses.items()})
        if not torch.isfinite(total):
            values = {k: float(v) for k, v in losses.items()}
            raise FloatingPointError(f"non-finite loss at epoch {ctx.epoch} step {ctx.global_step}: {values}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        logged = {name: float(value.detach()) for name, value in losses.items()}
        logged["loss"] = float(total.detach())
        if self.cfg.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad_norm)
            logged["grad_norm"] = float(grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.schedule_interval == "step" and self.scheduler is not None:
            self.scheduler.step()
        return logged

    def fit(self) -> FitResult:
        """Train from the current position to `cfg.epochs`; returns the selection summary."""
        iters = len(self.loader)
        meters = MetricLogger(self.tracker)
        interrupted = stopped_early = False
        while self.epoch < self.cfg.epochs and not (interrupted or stopped_early):
            self.loader.set_epoch(self.epoch, skip_batches=self.iter_in_epoch)
            meters.reset()
            bar = Progress(iters, f"epoch {self.epoch}", self.dist.is_main and self.cfg.progress_bar,
                           initial=self.iter_in_epoch)
            start = window_start = time.perf_counter()
            first_iter = self.iter_in_epoch  # after a mid-epoch resume the rate counts only the steps run here
            window_samples = 0  # samples of this rank since the last train record
            for batch in self.loader:
                ctx = StepContext(self.epoch, self.iter_in_epoch, iters, self.global_step)
                window_samples += batch_size_of(batch, self.loader)
                logged = self.train_step(batch, ctx)
                self.iter_in_epoch += 1
                self.global_step += 1
                logged["lr"] = self.optimizer.param_groups[0]["lr"]
                meters.update(**logged)
                bar.update(1)
                if self.global_step % self.cfg.log_every == 0 or self.iter_in_epoch == iters:
                    now = time.perf_counter()
                    rate = (self.iter_in_epoch - first_iter) / max(1e-9, now - start)
                    # Global throughput: every rank takes an equal share of each step (drop_last sharding).
                    samples_per_s = window_samples * self.dist.world_size / max(1e-9, now - window_start)
                    window_start, window_samples = now, 0
                    meters.log(f"epoch {self.epoch} [{self.iter_in_epoch}/{iters}] {rate:.2f} it/s "
                               f"{samples_per_s:.1f} samples/s",
                               {"kind": "train", "epoch": self.epoch, "iter": self.iter_in_epoch,
                                "step": self.global_step, **logged, "samples_per_s": samples_per_s})
                if self.cfg.checkpoint_every and self.global_step % self.cfg.checkpoint_every == 0:
                    self.save(self.last_name)
                if self.cfg.stop_after_steps is not None and self.global_step >= self.cfg.stop_after_steps:
                    interrupted = True
                    break
            bar.close()
            if interrupted:
                if self.iter_in_epoch == iters:
                    self._end_epoch(meters)
                self.save(self.last_name)
                self.log.info("stopped after %d steps (train.stop_after_steps); resume with --resume %s",
                              self.global_step, self.output_dir / self.last_name)
                break
            stopped_early = self._end_epoch(meters)
        self.tracker.flush()
        if self.owns_tracker:
            self.tracker.close()
        return FitResult(self.last_metrics, self.best["metric"], self.best["epoch"], self.global_step,
                         interrupted, stopped_early)

    def _end_epoch(self, meters: MetricLogger) -> bool:
        """Epoch bookkeeping: schedule tick, evaluation, selection, checkpoints. Returns True to stop early."""
        epoch = self.epoch
        self.tracker.write({"kind": "train_epoch", "epoch": epoch, "step": self.global_step, **meters.averages()})
        if self.schedule_interval == "epoch" and self.scheduler is not None:
            self.scheduler.step()
        self.epoch, self.iter_in_epoch = epoch + 1, 0
        stop = False
        is_best = False
        if self.evaluate_fn is not None and self.cfg.eval_every and (epoch + 1) % self.cfg.eval_every == 0:
            self.model.eval()
            with torch.no_grad():
                metrics = self.evaluate_fn(self.module, epoch)
            # Rank 0's metrics decide selection and early stopping on every rank.
            self.last_metrics = du.broadcast_object({k: float(v) for k, v in metrics.items()})
            self.log.info("epoch %d evaluation: %s", epoch,
                          "  ".join(f"{k} {v:.4f}" for k, v in self.last_metrics.items()))
            self.tracker.write({"kind": "eval", "epoch": epoch, "step": self.global_step, **self.last_metrics})
            is_best, stop = self._select(epoch)
        self.save(self.last_name)
        if is_best:
            self.save(self.best_name)
        if self.cfg.keep_epoch_checkpoints:
            self.save(self.cfg.epoch_checkpoint_name.format(epoch=epoch))
        return stop

    def _select(self, epoch: int) -> tuple[bool, bool]:
        name = self.cfg.select_metric
        if name is None:
            return False, False
        if name not in self.last_metrics:
            raise KeyError(f"train.select_metric {name!r} not among evaluation metrics {sorted(self.last_metrics)}")
        value = self.last_metrics[name]
        best = self.best["metric"]
        better = best is None or (value > best if self.cfg.select_mode == "max" else value < best)
        if better and not math.isnan(value):
            self.best.update(metric=value, epoch=epoch, bad_evals=0)
            self.log.info("new best %s %.4f at epoch %d", name, value, epoch)
            return True, False
        self.best["bad_evals"] += 1
        stop = self.cfg.patience is not None and self.best["bad_evals"] >= self.cfg.patience
        if stop:
            self.log.info("early stop: %s did not improve for %d evaluations", name, self.best["bad_evals"])
        return False, stop


def batch_size_of(batch: Any, loader: Any = None) -> int:
    """Samples in a batch: the leading dimension of its first tensor (dicts in key order, lists in order), else
    the loader's `batch_size`, else 1. ASEN++ batches count images (three per triplet)."""
    rows = _leading_dim(batch)
    return rows if rows is not None else int(getattr(loader, "batch_size", None) or 1)


def _leading_dim(batch: Any) -> int | None:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else None
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        rows = _leading_dim(value)
        if rows is not None:
            return rows
    return None


def _diff_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out.extend(_diff_keys(old.get(key), new.get(key), f"{prefix}{key}."))
        return out
    return [] if old == new else [prefix.rstrip(".")]
