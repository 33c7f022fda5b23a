"""What the Fashion-FINE tasks share: the task base (arguments, loader, optimizer, loop settings), the
selection-evaluator base and feature extraction."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from datasets.text import CMR_PREFIX, require_vocab, tokenizer_from_vocab
from datasets.transforms import CLIP_MEAN, CLIP_STD
from engine import distributed as du
from engine.config import ConfigError, add_config_arguments
from engine.data import EpochSampler, TrainLoader, move_to_device
from engine.logger import get_logger
from engine.optim import build_optimizer, build_scheduler
from engine.precision import autocast
from engine.progress import track
from engine.run import add_run_arguments
from engine.run_folder import RunFiles, resolve_resume
from engine.sections import OptimConfig, RuntimeConfig, ScheduleConfig
from engine.trainer import BEST, LAST
from inference.card import image_entry, make_card, vocab_entry
from tasks.base import RunRequest, Task, TrainingPlan
from tasks.compat import CompatConfig
from tasks.published_flags import PublishedFlag, add_published_flags
from tasks.views import ViewOptions, add_view_arguments, view_options


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


@torch.no_grad()
def extract(loader: DataLoader, encode: Callable[[dict], torch.Tensor], device: torch.device, precision: str, *,
            progress_bar: bool, desc: str = "extracting features") -> torch.Tensor:
    """Run `encode` over every batch (under the run's precision) and stack the fp32 results on `device`;
    `progress_bar`: show the progress on rank 0 (engine.progress)."""
    parts = []
    for batch in track(loader, desc, progress_bar, unit="batch"):
        batch = move_to_device(batch, device)
        with autocast(precision, device):
            parts.append(encode(batch).float())
    return torch.cat(parts)


def fine_model(model_cls: type[nn.Module], cfg: Any, tokenizer: Any, **kwargs: Any) -> nn.Module:
    """A Fashion-FINE model sized for the tokenizer's vocabulary, with the compat switches resolved."""
    net = model_cls(cfg.model, cfg.loss, cfg.compat.model_behaviour(), vocab_size=len(tokenizer),
                    sep_token_id=tokenizer.sep_token_id, **kwargs)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    get_logger().info("%s: %.1fM trainable parameters, vocabulary %d", model_cls.__name__, trainable / 1e6,
                      len(tokenizer))
    return net


def check_queue_size(queue_size: int, global_batch: int) -> None:
    """The queues take whole global batches (published assert `Q % N == 0`); fail before training starts."""
    if queue_size % global_batch:
        raise ConfigError(f"model.queue_size {queue_size} is not a multiple of the global batch {global_batch} "
                         "(data.batch_size x number of processes)")


def optimizer_and_schedule(model: nn.Module, optim: OptimConfig, schedule: ScheduleConfig, compat: CompatConfig,
                           epochs: int, iters_per_epoch: int) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over decay/no-decay groups (`compat.no_decay_temp: compat` decays the temperature too)."""
    optim = dataclasses.replace(optim, decay_scalars=compat.is_compat("no_decay_temp") or optim.decay_scalars)
    optimizer = build_optimizer(model, optim)
    return optimizer, build_scheduler(optimizer, schedule, optim.lr, epochs, iters_per_epoch)


def output_folder(cfg: Any, flag: str | None, evaluate: bool) -> Path:
    """The run's folder, the same however the task is started: --output_dir, else the config's output_dir
    (training) or eval_output_dir (evaluation; null = output_dir + '_eval')."""
    if flag:
        return Path(flag)
    if evaluate:
        return Path(cfg.eval_output_dir or f"{cfg.output_dir.rstrip('/')}_eval")
    return Path(cfg.output_dir)


class FineTask(Task):
    """Base of the Fashion-FINE tasks: the published command line (`--config`, `--checkpoint`,
    `--output_dir`, `--resume`, `--evaluate`), the epoch-seeded loader, AdamW and the queue check."""

    weight_family = "fine"
    queue_images_per_sample: ClassVar[int] = 1  # TGIR queues reference and target images
    published_flags: ClassVar[tuple[PublishedFlag, ...]] = ()  # the published script's argparse (aliases etc.)

    @classmethod
    def build_parser(cls, description: str) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(description=description,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        add_config_arguments(parser, cls.default_config)
        add_run_arguments(parser)
        add_view_arguments(parser)
        add_published_flags(parser, cls.published_flags)
        return parser

    @classmethod
    def make_request(cls, args: argparse.Namespace, cfg: Any) -> RunRequest:
        """The run's folder, weights and `--resume` (auto / a folder / a file: continued in its own folder)."""
        folder = output_folder(cfg, args.output_dir, args.evaluate)
        checkpoint = args.checkpoint or cfg.checkpoint
        views = view_options(args)
        if args.evaluate:
            return RunRequest(folder, evaluate=True, checkpoint=checkpoint, overwrite=args.overwrite, options=views)
        resume = resolve_resume(args.resume, folder, cls.run_files(cfg).last, folder_given=bool(args.output_dir))
        return RunRequest(resume.folder, checkpoint=checkpoint, resume=resume.checkpoint, overwrite=args.overwrite,
                          notes=resume.notes, options=views)

    def final_view(self) -> ViewOptions:
        """The final report's top-K files and gallery page (`--topk`, `--gallery`; tasks.views)."""
        return ViewOptions.from_options(self.request.options)

    @classmethod
    def run_files(cls, cfg: Any) -> RunFiles:
        return RunFiles(LAST, BEST, cfg.train.epoch_checkpoint_name)

    @classmethod
    def runtime(cls, cfg: Any) -> RuntimeConfig:
        return cfg.runtime

    @classmethod
    def check_inputs(cls, cfg: Any, request: RunRequest) -> None:
        """The weights (base class) and the tokenizer vocabulary, before anything is built."""
        super().check_inputs(cfg, request)
        require_vocab(cfg.data.tokenizer, "data.tokenizer")

    @classmethod
    def train_precision(cls, cfg: Any) -> str:
        return cfg.train.precision

    def new_model(self, model_cls: type[nn.Module], tokenizer: Any, **kwargs: Any) -> nn.Module:
        """A task model sized for the tokenizer's vocabulary, with the compat switches resolved."""
        return fine_model(model_cls, self.cfg, tokenizer, **kwargs)

    text_prefix: ClassVar[str] = CMR_PREFIX  # what the evaluation texts start with

    @classmethod
    def model_card(cls, cfg: Any) -> dict[str, Any]:
        """Task, family, the vocabulary (whole text), the evaluation's image transform and text layout."""
        return make_card(cls.name, cls.weight_family, vocab=vocab_entry(require_vocab(cfg.data.tokenizer)),
                         image=image_entry(cfg.model.vision.image_res, "bicubic to size x size, no crop", CLIP_MEAN,
                                           CLIP_STD),
                         text=cls.text_card(cfg))

    @classmethod
    def text_card(cls, cfg: Any) -> dict[str, Any]:
        return {"prefix": cls.text_prefix, "cleaner": "pre_caption", "max_length": cfg.data.max_words,
                "add_sep": True, "sign_prefix": None}

    @classmethod
    def inference_tokenizer(cls, cfg: Any, vocab: dict[str, int] | None, source: str) -> Any:
        return tokenizer_from_vocab(vocab or {}, source)

    def check_training(self) -> None:
        images = self.queue_images_per_sample * self.cfg.data.batch_size * self.run.info.world_size
        check_queue_size(self.cfg.model.queue_size, images)

    def train_loader(self, dataset: Dataset) -> TrainLoader:
        cfg, info = self.cfg, self.run.info
        sampler = EpochSampler(len(dataset), seed=cfg.runtime.seed, rank=info.rank, world_size=info.world_size)
        return TrainLoader(dataset, batch_size=cfg.data.batch_size, sampler=sampler,
                           num_workers=cfg.runtime.num_workers,
                           pin_memory=cfg.runtime.pin_memory and info.device.type == "cuda", seed=cfg.runtime.seed,
                           rank=info.rank)

    def optimizer(self, model: nn.Module, iters_per_epoch: int) -> tuple[torch.optim.Optimizer, Any]:
        cfg = self.cfg
        return optimizer_and_schedule(model, cfg.optim, cfg.schedule, cfg.compat,
                                      cfg.train.schedule_epochs or cfg.train.epochs, iters_per_epoch)

    def training(self) -> TrainingPlan:
        return TrainingPlan(self.cfg.train, self.cfg.loss.weights, self.cfg.schedule.interval)
