"""The task contract: what a task declares so that `tasks.runner` can evaluate or train it.

A task names its config schema, its model and weight filter, its training set and held-out selection split,
its evaluators (selection during training, final report) and its optimizer. Compat switches are resolved
inside the task, where it builds its pieces; models, datasets and evaluation get plain arguments.
docs/extending.md walks through adding one.
"""

from __future__ import annotations

import abc
import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset

from engine.config import ConfigError
from engine.distributed import DistInfo
from engine.logger import get_logger
from engine.run_folder import RunFiles
from engine.sections import RuntimeConfig, TrainConfig
from engine.trainer import BEST, LAST
from models.released import check_weights_exist
from models.weights import init_backbones, load_weights


@dataclass
class RunRequest:
    """What the command line asks for: evaluate only or train, from which weights, into which folder."""

    output_dir: Path
    evaluate: bool = False
    checkpoint: str | None = None  # evaluate: the weights to report; train: the initial weights
    resume: str | None = None  # continue exactly from a checkpoint this framework wrote
    strict: bool = True  # evaluation loads every weight (ASEN++ --allow-partial relaxes it)
    overwrite: bool = False  # a new training run may replace another run's files in the folder (--overwrite)
    options: dict[str, Any] = field(default_factory=dict)  # task-specific flags (e.g. ASEN++ --embed)
    notes: list[str] = field(default_factory=list)  # lines to log once the run has started (e.g. resume folder)


@dataclass
class RunContext:
    """The started run: process group, device, output folder and the resolved precision."""

    info: DistInfo
    output_dir: Path
    precision: str

    @property
    def device(self) -> torch.device:
        return self.info.device


@dataclass
class TrainingPlan:
    """How the engine trains a task: loop settings, named-loss weights, checkpoint file names."""

    train: TrainConfig
    loss_weights: dict[str, float]
    schedule_interval: str = "step"
    checkpoint_names: tuple[str, str] = (LAST, BEST)


class Evaluator(Protocol):
    """Selection evaluator (called by the trainer) and/or final report of a task."""

    name: str

    def __call__(self, model: nn.Module, epoch: int | None = None) -> dict[str, float]: ...


class Report(Protocol):
    """The final evaluation: computes the metrics and writes the result file (rank 0)."""

    def report(self, model: nn.Module, extra: dict[str, Any]) -> dict[str, float]: ...


class Task(abc.ABC):
    """One task family. Subclasses set the class attributes and implement the abstract methods."""

    name: ClassVar[str]  # short name, recorded in checkpoints and results
    schema: ClassVar[type]  # config dataclass (every key documented, `--help-config`)
    default_config: ClassVar[str | None]  # YAML used when none is given
    weight_family: ClassVar[str]  # filter of models.weights.load_weights for this task's model

    def __init__(self, cfg: Any, run: RunContext, request: RunRequest) -> None:
        self.cfg, self.run, self.request = cfg, run, request

    # ----------------------------------------------------------- command line (overridable)
    @classmethod
    @abc.abstractmethod
    def build_parser(cls, description: str) -> argparse.ArgumentParser:
        """The entry point's arguments (published flag names kept)."""

    @classmethod
    @abc.abstractmethod
    def make_request(cls, args: argparse.Namespace, cfg: Any) -> RunRequest:
        """Turn parsed arguments and the validated config into a run request."""

    @classmethod
    @abc.abstractmethod
    def runtime(cls, cfg: Any) -> RuntimeConfig:
        """Device, backend, seed and loader workers of the run."""

    @classmethod
    def train_precision(cls, cfg: Any) -> str:
        return "auto"

    checkpoint_flag: ClassVar[str] = "--checkpoint"  # the flag that names RunRequest.checkpoint (messages)

    @classmethod
    def run_files(cls, cfg: Any) -> RunFiles:
        """The checkpoint names this task's runs write (engine.run_folder: resume, used-folder check)."""
        return RunFiles(LAST, BEST)

    @classmethod
    def check_inputs(cls, cfg: Any, request: RunRequest) -> None:
        """The files the run needs, checked before anything is started or built: one line naming a missing
        file and where it comes from. Tasks add their data files."""
        if request.evaluate and not request.checkpoint:
            raise FileNotFoundError(f"evaluation needs the weights to evaluate: pass {cls.checkpoint_flag} <file> "
                                    "(a checkpoint of a training run, or a released one: README, "
                                    "'Released checkpoints')")
        if request.overwrite and (request.evaluate or request.resume):
            raise ConfigError("--overwrite starts a new training run in a used folder; it cannot be combined with "
                              + ("an evaluation, which never removes files" if request.evaluate else
                                 "--resume, which continues the run in its folder"))
        check_weights_exist(request.checkpoint, cls.checkpoint_flag)
        check_weights_exist(request.resume, "--resume")

    # ----------------------------------------------------------- using a trained model (inference.load_model)
    @classmethod
    def model_card(cls, cfg: Any) -> dict[str, Any] | None:
        """What rebuilding and feeding this task's model needs beyond its config (inference.card), written into
        every checkpoint of the task; None: its checkpoints are not loadable by inference.load_model."""
        return None

    @classmethod
    def inference_tokenizer(cls, cfg: Any, vocab: dict[str, int] | None, source: str) -> Any:
        """The tokenizer over the card's vocabulary (None for image-only tasks)."""
        return None

    @classmethod
    def inference_model(cls, cfg: Any, tokenizer: Any) -> nn.Module:
        """The task model, freshly initialised, as `build_model` makes it for a single process."""
        raise NotImplementedError(f"task {cls.name} has no inference model")

    # ----------------------------------------------------------- pieces
    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """The task model, freshly initialised (weights are loaded by the runner)."""

    @abc.abstractmethod
    def final_report(self) -> Report:
        """The final evaluation on the reported split (built before any training, so that missing files
        fail early)."""

    def check_training(self) -> None:  # noqa: B027 - optional hook
        """Validate training-only settings before anything is trained (e.g. queue vs global batch)."""

    def initialise(self, model: nn.Module, checkpoint: str | None) -> None:
        """Initial weights for training: the given checkpoint (non-strict), else the task's default."""
        if checkpoint:
            load_weights(model, checkpoint, family=self.weight_family, strict=False)
        elif not init_backbones(model, getattr(self.cfg, "model", None)):
            get_logger().warning("no --checkpoint given: training from randomly initialised encoders")

    def heldout_split(self) -> Any:
        """The held-out selection split (None when the task selects on a split of its data set)."""
        return None

    @abc.abstractmethod
    def train_set(self, heldout: Any) -> Dataset:
        """The training set, without the held-out part."""

    @abc.abstractmethod
    def selection_evaluator(self, heldout: Any) -> Evaluator | None:
        """What selects `checkpoint_best` during training (None = the last epoch is reported)."""

    @abc.abstractmethod
    def train_loader(self, dataset: Dataset) -> Any:
        """The resumable, epoch-seeded training loader (engine.data.TrainLoader)."""

    @abc.abstractmethod
    def optimizer(self, model: nn.Module, iters_per_epoch: int) -> tuple[torch.optim.Optimizer, Any]:
        """Optimizer over the task's parameter groups and its scheduler."""

    @abc.abstractmethod
    def training(self) -> TrainingPlan:
        """Loop settings for the engine."""
