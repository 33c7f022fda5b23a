"""Config sections shared by every entry point: training loop, optimizer, schedule, runtime."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from engine.config import ConfigError, field


@dataclass
class ParamGroupRule:
    """A named parameter group: the parameters whose names start with one of `prefixes`."""

    name: str = field("", "group name (logs, optimizer state)")
    prefixes: list[str] = field([], "parameter-name prefixes of the group ('' = every parameter)")
    lr: float | None = field(None, "learning rate of the group; null = optim.lr x lr_scale")
    lr_scale: float = field(1.0, "multiplier of optim.lr when `lr` is null")

    def validate(self) -> None:
        if not self.name or not self.prefixes:
            raise ValueError("optim.groups entries need a name and at least one prefix")


@dataclass
class OptimConfig:
    """Optimizer: AdamW/Adam/SGD over weight-decay and no-decay parameter groups."""

    name: Literal["adamw", "adam", "sgd"] = field("adamw", "torch optimizer")
    lr: float = field(1e-4, "base learning rate (peak of the schedule)")
    weight_decay: float = field(0.0, "decay for weights; biases, norms and 1-D parameters get 0")
    betas: tuple[float, float] = field((0.9, 0.999), "Adam(W) betas")
    eps: float = field(1e-8, "Adam(W) epsilon")
    momentum: float = field(0.9, "SGD momentum")
    fused: bool | None = field(
        None, "Adam(W) kernel: null = torch's fused kernel when every parameter is a floating-point tensor on "
              "the CPU or a CUDA GPU (the runner moves the model to its device first; on CPU it is ~5x faster than "
              "the per-tensor loop), torch's default elsewhere; true = fused wherever torch has it; false = never "
              "fused (torch's per-tensor or foreach loop)")
    decay_scalars: bool = field(
        False, "true: 0-dim parameters (e.g. temp) are decayed, as published "
               "(docs/compat.md, compat.no_decay_temp)")
    decay_all: bool = field(
        False, "true: one weight decay for every parameter, biases, norms and 1-D ones included (BLIP's "
               "optimiser); 0-dim parameters still follow decay_scalars, no_decay_names still apply")
    no_decay_names: list[str] = field([], "extra parameter-name suffixes excluded from weight decay")
    group_lr: dict[str, float] = field({}, "parameter-name prefix -> learning rate of its own group")
    groups: list[ParamGroupRule] = field(
        [], "named groups (in this order, before the others); a parameter joins the group or group_lr entry "
            "with its longest matching prefix, else the default group at optim.lr")

    def validate(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if self.fused and self.name == "sgd":
            raise ValueError("optim.fused applies to adam and adamw only; set it to null for sgd")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule: cosine with linear warm-up, step decay, or constant."""

    name: Literal["cosine", "albef_cosine", "step", "constant"] = field(
        "cosine", "schedule family; albef_cosine = the published ALBEF/timm schedule (see engine/optim.py)")
    interval: Literal["step", "epoch"] = field("step", "update the lr every optimizer step or every epoch")
    warmup: int = field(0, "warm-up length, in units of warmup_unit")
    warmup_unit: Literal["steps", "epochs"] = field("steps", "unit of `warmup`")
    warmup_lr: float = field(0.0, "learning rate at the start of the warm-up")
    min_lr: float = field(0.0, "cosine floor")
    step_size: int = field(1, "step schedule: epochs between decays")
    gamma: float = field(0.1, "step schedule: decay factor")

    def validate(self) -> None:
        if self.warmup < 0:
            raise ValueError("schedule.warmup must be >= 0")
        if self.name == "step" and self.step_size < 1:
            raise ValueError("schedule.step_size must be >= 1")


@dataclass
class TrainConfig:
    """The shared training loop."""

    epochs: int = field(1, "number of epochs")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = field(
        "auto", "auto = bf16 autocast on GPUs that support it, fp32 elsewhere")
    clip_grad_norm: float | None = field(None, "max global gradient norm; null = no clipping")
    log_every: int = field(50, "iterations between log lines")
    checkpoint_every: int = field(0, "also write checkpoint_last.pth every N steps (0 = epoch ends only)")
    keep_epoch_checkpoints: bool = field(False, "keep a checkpoint of every epoch (named by epoch_checkpoint_name)")
    epoch_checkpoint_name: str = field(
        "checkpoint_epoch{epoch}.pth", "file name of the per-epoch checkpoints; {epoch} is the 0-based epoch")
    eval_every: int = field(1, "evaluate every N epochs (0 = never during training)")
    select_metric: str | None = field(None, "metric that selects checkpoint_best.pth")
    select_mode: Literal["max", "min"] = field("max", "whether a higher or lower select_metric is better")
    patience: int | None = field(None, "stop after this many evaluations without improvement")
    stop_after_steps: int | None = field(None, "write a checkpoint and stop after this many steps (testing)")
    skip_nonfinite_steps: int = field(
        0, "optimizer steps with a NaN/inf loss or gradient norm that may be skipped over the whole run (each "
           "logged; counted in the train records and checkpoints); one more stops the run (0 = stop at the first)")
    schedule_epochs: int | None = field(
        None, "epochs the lr schedule spans (null = train.epochs); the loop still stops after train.epochs")
    find_unused_parameters: bool = field(False, "DDP find_unused_parameters")
    compile: bool = field(
        False, "run the task model's training forward and backward under torch.compile (inductor, CPU and GPU; "
               "the evaluation stays eager); the first steps pay the compilation, checkpoints keep the eager keys")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = field(
        "default", "torch.compile mode when train.compile is on (reduce-overhead / max-autotune: CUDA graphs, GPU only)")
    progress_bar: bool = field(True, "tqdm progress bar on rank 0")
    report_to: list[Literal["tensorboard", "wandb"]] = field(
        [], "also send the log.jsonl scalars to these trackers (tensorboard: OUT/tensorboard/; wandb: offline "
            "unless WANDB_MODE is set); --report-to overrides")

    def validate(self) -> None:
        if len(set(self.report_to)) != len(self.report_to):
            raise ValueError(f"train.report_to lists a tracker twice: {self.report_to}")
        if self.epochs < 1:
            raise ValueError("train.epochs must be >= 1")
        if self.log_every < 1:
            raise ValueError("train.log_every must be >= 1")
        for name in ("eval_every", "checkpoint_every", "skip_nonfinite_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0 (0 = never), got {getattr(self, name)}")
        for name in ("patience", "stop_after_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"train.{name} must be >= 1 or null, got {value}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ValueError(f"train.clip_grad_norm must be > 0 or null, got {self.clip_grad_norm}")
        if "{epoch}" not in self.epoch_checkpoint_name:
            raise ValueError(f"train.epoch_checkpoint_name must contain {{epoch}}, got {self.epoch_checkpoint_name!r}")
        if self.compile_mode != "default" and not self.compile:
            raise ValueError(f"train.compile_mode {self.compile_mode!r} needs train.compile: true")
        if self.schedule_epochs is not None and self.schedule_epochs < self.epochs:
            raise ValueError(f"train.schedule_epochs ({self.schedule_epochs}) must be >= train.epochs ({self.epochs})")


@dataclass
class RuntimeConfig:
    """Devices, processes, seeds and data loading."""

    device: Literal["auto", "cpu", "cuda"] = field("auto", "auto = CUDA when available")
    dist_backend: Literal["auto", "nccl", "gloo"] = field("auto", "auto = NCCL on GPU, gloo on CPU")
    seed: int = field(66, "base seed; each rank and item derives its own")
    num_workers: int = field(4, "DataLoader worker processes per rank")
    pin_memory: bool = field(True, "pin host memory for GPU transfers")
    deterministic: bool = field(False, "torch deterministic algorithms (slower; for bit-exact checks)")
    cpu_threads: int | None = field(
        None, "intra-op threads on CPU; null = cores per process minus data-loader workers (at least 1)")
    dist_timeout_s: int = field(
        1800, "seconds a collective waits for the other ranks before the run stops and names the rank(s) that "
              "stopped responding (multi-process runs; 30 min as published)")
    stall_timeout_s: int = field(
        300, "seconds without a heartbeat from another rank (stopped, hung, host gone) after which the run stops "
             "and names it, whatever the collectives wait for; heartbeats go on during evaluations; 0 = off")

    def validate(self) -> None:
        if self.stall_timeout_s < 0:
            raise ValueError(f"runtime.stall_timeout_s must be >= 0 (0 = off), got {self.stall_timeout_s}")
        if self.dist_timeout_s < 1:
            raise ValueError(f"runtime.dist_timeout_s must be >= 1, got {self.dist_timeout_s}")
        if self.num_workers < 0:
            raise ValueError(f"runtime.num_workers must be >= 0 (0 = load in the main process), got {self.num_workers}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"runtime.cpu_threads must be >= 1 or null, got {self.cpu_threads}")


def require_device(device: str, key: str = "runtime.device") -> None:
    """A run asking for CUDA (config `key`) on a machine without it: one ConfigError before anything starts."""
    if device != "cuda":
        return
    import torch  # here, so that reading a config does not need torch

    if not torch.cuda.is_available():
        raise ConfigError(f"{key} is 'cuda' but CUDA is not available on this machine (torch "
                          f"{torch.__version__}, torch.cuda.is_available() is False); set {key}=auto or cpu")
