"""The one training loop every entry point uses.

A task model's `forward(batch, ctx)` returns a dict of named scalar losses; the trainer weights and sums
them, runs backward under the configured precision, clips, steps optimizer and schedule, logs every loss
by name, evaluates, selects `checkpoint_best.pth`, and writes resumable checkpoints. Every record (train,
train_epoch, eval) goes to the run's metric sink (engine.tracking: log.jsonl, TensorBoard, W&B).

Faults: a NaN/inf loss or gradient norm is caught in the step where it appears, before anything is saved
(skipped up to `train.skip_nonfinite_steps` times, else `NonFiniteError`); SIGTERM/SIGINT stop every rank
after the current step with a checkpoint (engine.signals); a failed or timed-out collective ends as one
`RunError` naming the rank(s) that stopped heartbeating (engine.heartbeat). Every rank takes the same decision.
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
from engine import heartbeat
from engine.checkpoint import (
    load_resumable,
    nonfinite_tensors,
    save_checkpoint,
    training_state,
    unwrap,
)
from engine.data import TrainLoader, move_to_device
from engine.distributed import DistInfo
from engine.errors import NonFiniteError, RunError
from engine.logger import MetricLogger, get_logger
from engine.precision import autocast, make_grad_scaler, resolve_precision
from engine.progress import Progress
from engine.resume_check import check_resume_config, check_world_size
from engine.sections import TrainConfig
from engine.seeding import capture_rng_state, restore_rng_state
from engine.signals import Interrupted, StopRequests, signal_name
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
        model_card: dict | None = None,
    ) -> None:
        self.cfg, self.dist, self.output_dir = cfg, dist_info, Path(output_dir)
        self.loader, self.optimizer, self.scheduler = loader, optimizer, scheduler
        self.schedule_interval, self.evaluate_fn = schedule_interval, evaluate
        self.loss_weights = dict(loss_weights or {})
        self.config_dict = config_dict or {}
        self.model_card = model_card  # written into every checkpoint (inference.load_model rebuilds from it)
        self.last_name, self.best_name = checkpoint_names
        self.precision = resolve_precision(cfg.precision, dist_info.device)
        self.scaler = make_grad_scaler(self.precision, dist_info.device)
        self.model = self._compile(self._wrap(model.to(dist_info.device)))
        self.epoch, self.iter_in_epoch, self.global_step = 0, 0, 0
        self.skipped_steps = 0  # steps skipped for a non-finite loss or gradient norm (train.skip_nonfinite_steps)
        self.stop_requests = StopRequests()  # SIGTERM/SIGINT during fit
        self._stop_signum = 0  # the signal any rank received, as agreed in the last step's exchange (0 = none)
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

    def _compile(self, model: nn.Module) -> nn.Module:
        """`train.compile`: torch.compile (inductor) over the (DDP-wrapped) model, as torch recommends for DDP.

        The state dict, the evaluation and the checkpoints use the bare module (`unwrap` strips `_orig_mod`), so
        checkpoints keep the eager keys. Where the forward reads a tensor's value in Python (queue pointer,
        the finite check before hard-negative sampling, masked-token selection) the graph breaks and those few
        ops run eagerly; see benchmarks/README.md, "Compiled training step"."""
        if not self.cfg.compile:
            return model
        mode = None if self.cfg.compile_mode == "default" else self.cfg.compile_mode
        get_logger().info("train.compile: the model trains under torch.compile (inductor, mode %s); the first "
                          "steps compile it", self.cfg.compile_mode)
        return torch.compile(model, mode=mode)

    @property
    def module(self) -> nn.Module:
        return unwrap(self.model)

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        return training_state(
            self.model, self.optimizer, self.scheduler, self.scaler,
            epoch=self.epoch, iter_in_epoch=self.iter_in_epoch, global_step=self.global_step,
            config=self.config_dict, rng=capture_rng_state(), best=dict(self.best),
            extra={"world_size": self.dist.world_size, "skipped_steps": self.skipped_steps},
            model_card=self.model_card,
        )

    def save(self, name: str) -> Path | None:
        """Write a checkpoint from rank 0 (sealed, atomic; engine.checkpoint.save_checkpoint); every rank waits."""
        path = None
        if self.dist.is_main:
            path = save_checkpoint(self.output_dir / name, self.state())
        du.barrier()
        return path

    def resume(self, path: str | Path) -> None:
        """Continue exactly from a checkpoint written by this trainer (model, optimizer, schedule, RNG, position,
        skipped-step count). A changed config key that would not take effect, or another world size, is refused
        (engine.resume_check)."""
        obj = load_resumable(path, self.module, self.optimizer)  # one line for an unusable or foreign file
        extra = obj.get("extra") or {}
        check_world_size(extra.get("world_size"), self.dist.world_size, path)
        changed = check_resume_config(obj.get("config", {}), self.config_dict, path)
        self.module.load_state_dict(obj["model"], strict=True)
        load_optimizer_state(self.optimizer, obj["optimizer"])
        if self.scheduler is not None and obj["scheduler"] is not None:
            self.scheduler.load_state_dict(obj["scheduler"])
        if obj["scaler"] is not None:
            self.scaler.load_state_dict(obj["scaler"])
        self.epoch, self.iter_in_epoch, self.global_step = obj["epoch"], obj["iter_in_epoch"], obj["global_step"]
        self.best = dict(obj["best"]) or self.best
        self.skipped_steps = int(extra.get("skipped_steps", 0))
        restore_rng_state(obj["rng"])
        self.tracker.resume_at(self.global_step)
        if changed:
            self.log.info("resuming with changed settings that take effect: %s", ", ".join(changed[:20]))
        self.log.info("resumed from %s at epoch %d, iteration %d (step %d)", path, self.epoch,
                      self.iter_in_epoch, self.global_step)

    # ------------------------------------------------------------------ loop
    def _total_loss(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        unknown = set(self.loss_weights) - set(losses)
        if unknown:
            raise KeyError(f"loss weights given for losses the model does not return: {sorted(unknown)}; "
                           f"model losses: {sorted(losses)}")
        return sum(self.loss_weights.get(name, 1.0) * value for name, value in losses.items())

    def train_step(self, batch: Any, ctx: StepContext) -> dict[str, float] | None:
        """Forward, backward, clip and optimizer step for one batch; returns the logged scalars, or None for a
        step skipped for a non-finite loss or gradient norm (train.skip_nonfinite_steps; beyond it
        `NonFiniteError`). In DDP one small all-reduce after the forward shares the non-finite and stop flags,
        and the gradient norm is taken after the all-reduced backward, so every rank decides alike."""
        self.model.train()
        batch = move_to_device(batch, self.dist.device)
        self.optimizer.zero_grad(set_to_none=True)
        losses: dict[str, torch.Tensor] = {}
        total, failure = None, None
        try:
            with autocast(self.precision, self.dist.device):
                losses = self.model(batch, ctx)
        except NonFiniteError as exc:  # e.g. non-finite similarities before hard-negative sampling
            failure = str(exc).split(":")[0]
        if failure is None:
            total = self._total_loss({k: v.float() for k, v in losses.items()})
            if not bool(torch.isfinite(total)):
                failure = "non-finite loss"
        bad, signum = du.max_over_ranks([failure is not None, self.stop_requests.signum or 0], self.dist.device)
        self._stop_signum = int(signum)
        if bad:
            return self._bad_step(ctx, failure or "non-finite loss on another rank", losses, total, None)
        self.scaler.scale(total).backward()
        # The gradient norm is always taken (max_norm inf = no clipping: the gradients are multiplied by 1.0).
        self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.clip_grad_norm if self.cfg.clip_grad_norm is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
            # fp16: an overflowed gradient is the GradScaler's to handle (it skips the step and lowers the scale)
            return self._bad_step(ctx, "non-finite gradient norm", losses, total, grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.schedule_interval == "step" and self.scheduler is not None:
            self.scheduler.step()
        logged = {name: float(value.detach()) for name, value in losses.items()}
        logged["loss"] = float(total.detach())
        if self.cfg.clip_grad_norm is not None:  # logged with clipping, as before (always computed)
            logged["grad_norm"] = grad_norm
        return logged

    def _bad_step(self, ctx: StepContext, what: str, losses: dict[str, torch.Tensor], total: torch.Tensor | None,
                  grad_norm: float | None) -> None:
        """Skip a step with a non-finite loss or gradient norm (no optimizer step, gradients dropped), or stop the
        run when the allowance is used up; nothing is saved either way."""
        self.optimizer.zero_grad(set_to_none=True)
        terms = [f"{k} {float(v.detach()):.4g}" for k, v in losses.items()]
        if total is not None:
            terms.append(f"total {float(total.detach()):.4g}")
        if grad_norm is not None:
            terms.append(f"grad_norm {grad_norm:.4g}")
        where = (f"epoch {ctx.epoch}, step {ctx.global_step + 1} (iteration {ctx.iter_in_epoch + 1}/"
                 f"{ctx.iters_per_epoch})")
        values = f" ({', '.join(terms)})" if terms else ""
        allowed = self.cfg.skip_nonfinite_steps
        # A forward that wrote NaN/inf into the model (BatchNorm statistics, feature queues, momentum encoders)
        # cannot be undone by skipping the update: stop then (every rank alike: the flag is shared).
        spoiled = nonfinite_tensors(self.module.state_dict()) if self.skipped_steps < allowed else []
        note = ""
        if self.skipped_steps < allowed and du.max_over_ranks([bool(spoiled)], self.dist.device)[0]:
            first = spoiled[0] if spoiled else "on another rank"
            note = f"; the forward left non-finite values in the model ({first}), which skipping the step cannot undo"
        elif self.skipped_steps < allowed:
            self.skipped_steps += 1
            self.log.warning("skipping %s: %s%s; %d of %d allowed non-finite steps skipped", where, what, values,
                             self.skipped_steps, allowed)
            if self.schedule_interval == "step" and self.scheduler is not None:
                self.scheduler.step()  # the schedule stays aligned with the step count
            return None
        last = self.output_dir / self.last_name
        intact = (f"nothing was saved after it: the last checkpoint on disk, {last}, is intact" if last.is_file()
                  else "nothing was saved (no checkpoint had been written yet)")
        skipped = f"{self.skipped_steps} non-finite step(s) skipped before; " if self.skipped_steps else ""
        advice = "lower the learning rate" + ("" if note else ", or allow skipping such steps "
                                              f"(train.skip_nonfinite_steps, ASEN++ SOLVER.SKIP_NONFINITE_STEPS; "
                                              f"currently {allowed})")
        raise NonFiniteError(f"training diverged at {where}: {what}{values}{note}; {skipped}{intact}; {advice}")

    def fit(self) -> FitResult:
        """Train from the current position to `cfg.epochs`; returns the selection summary.

        SIGTERM/SIGINT (handlers installed for the duration of fit only) stop every rank after the current
        step; the last checkpoint is written and `engine.signals.Interrupted` raised (the entry point exits with
        128 + signal). A failed or timed-out collective raises one `RunError` naming the silent rank(s)."""
        self.stop_requests = StopRequests()
        with self.stop_requests:
            try:
                return self._fit()
            except (Interrupted, RunError):
                raise
            except Exception as exc:
                if not du.is_collective_failure(exc):
                    raise
                message = self._lost_rank_message(exc)
                raise RunError(message) from None

    def _lost_rank_message(self, exc: BaseException) -> str:
        last = self.output_dir / self.last_name
        intact = f"the last checkpoint on disk, {last}, is intact" if last.is_file() else "no checkpoint was written"
        return (f"rank {self.dist.rank}, epoch {self.epoch}, after step {self.global_step}: {du.lost_ranks(exc)}; "
                f"{intact}: once every rank is back, resume with --resume {last}")

    def _fit(self) -> FitResult:
        iters = len(self.loader)
        meters = MetricLogger(self.tracker)
        interrupted = stopped_early = False
        heartbeat.note_step(self.global_step)
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
                stepped = self.train_step(batch, ctx)
                self.iter_in_epoch += 1
                self.global_step += 1
                heartbeat.note_step(self.global_step)
                logged = {**(stepped or {}), "lr": self.optimizer.param_groups[0]["lr"]}  # skipped: no losses
                if stepped is not None:
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
                                "step": self.global_step, **logged, "samples_per_s": samples_per_s,
                                "skipped_steps": self.skipped_steps})
                if self._stop_signum:
                    break
                if self.cfg.checkpoint_every and self.global_step % self.cfg.checkpoint_every == 0:
                    self.save(self.last_name)
                if self.cfg.stop_after_steps is not None and self.global_step >= self.cfg.stop_after_steps:
                    interrupted = True
                    break
            bar.close()
            if self._stop_signum:  # a signal: checkpoint where we are (a finished epoch ends on resume)
                self._stop_on_signal(self.save(self.last_name))
            if interrupted:
                if self.iter_in_epoch == iters:
                    self._end_epoch(meters)
                self.save(self.last_name)
                self.log.info("stopped after %d steps (train.stop_after_steps); resume with --resume %s",
                              self.global_step, self.output_dir / self.last_name)
                break
            stopped_early = self._end_epoch(meters)
            # A signal during the evaluation: the epoch's checkpoint is written, stop here.
            self._stop_signum = int(du.max_over_ranks([self.stop_requests.signum or 0], self.dist.device)[0])
            if self._stop_signum:
                self._stop_on_signal(self.output_dir / self.last_name)
        self.tracker.flush()
        if self.owns_tracker:
            self.tracker.close()
        return FitResult(self.last_metrics, self.best["metric"], self.best["epoch"], self.global_step,
                         interrupted, stopped_early)

    def _stop_on_signal(self, path: Path | None) -> None:
        """Raise `Interrupted` after the checkpoint of a stop request (every rank; rank 0 prints the line)."""
        path = path or self.output_dir / self.last_name
        self.tracker.flush()
        if self.owns_tracker:
            self.tracker.close()
        signum = self._stop_signum  # the highest signal number any rank received
        by = signal_name(signum) + ("" if self.stop_requests.requested else " (sent to another rank)")
        raise Interrupted(f"stopped by {by} at epoch {self.epoch}, iteration {self.iter_in_epoch}/"
                          f"{len(self.loader)} (step {self.global_step}); checkpoint written: {path}; continue "
                          f"with --resume {path}", signum, report=self.dist.is_main)

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


IMPLEMENTATION_FLAGS = ("fused", "foreach")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """`optimizer.load_state_dict` keeping this run's kernel choice (`fused`, `foreach`: engine.optim picks them
    from where the parameters are and `optim.fused`), not the saved run's."""
    flags = [{k: g[k] for k in IMPLEMENTATION_FLAGS if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, own in zip(optimizer.param_groups, flags):
        group.update(own)


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
