"""The ASEN++ task behind `asen_main.py`: the model from its MODEL section plus plain run values, the SOLVER
keys as the shared optimizer, schedule and loss-weight settings, triplet training with selection on the data
set's VALID split, and MAP on TEST (or `--test SPLIT`, or `--embed FOLDER`)."""

from __future__ import annotations

import argparse
import logging
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from datasets.asen import AsenImages, TripletBatchSampler, collate, load_train_index, schema_from_config
from engine.checkpoint import CheckpointError, is_training_checkpoint
from engine.config import ConfigError, add_config_arguments, check_select_metric
from engine.data import TrainLoader
from engine.logger import get_logger
from engine.optim import build_optimizer, build_scheduler
from engine.run_folder import RunFiles
from engine.sections import (
    OptimConfig,
    ParamGroupRule,
    RuntimeConfig,
    ScheduleConfig,
    TrainConfig,
    require_device,
)
from engine.tracking import add_report_to_argument
from inference.card import image_entry, make_card
from models.asen import ASENet
from models.released import check_weights_exist
from models.weights import (
    apply_backbone_weights,
    init_backbones,
    load_weights,
    looks_like,
    read_checkpoint,
    state_dict_of,
)
from tasks.asen_eval import AsenEvaluator, embed_folder, metric_names
from tasks.asen_schema import AsenConfig
from tasks.base import RunRequest, Task, TrainingPlan
from tasks.views import ViewOptions, add_view_arguments, view_options, write_asen_views

CHECKPOINTS = ("checkpoint.pth.tar", "model_best.pth.tar")  # the published file names
PRECISION = {"auto": "auto", "bf16": "bf16", "none": "fp32"}


def model_options(cfg: AsenConfig) -> dict[str, Any]:
    """The ASENet arguments that come from outside the MODEL section (SOLVER, INPUT)."""
    inp = cfg.INPUT
    return {"margin": cfg.SOLVER.MARGIN, "beta": cfg.SOLVER.BETA, "global_size": inp.GLOBAL_SIZE,
            "local_size": inp.LOCAL_SIZE, "threshold": inp.THRESHOLD, "pixel_mean": inp.PIXEL_MEAN,
            "pixel_std": inp.PIXEL_STD}


def build_model(cfg: AsenConfig, num_attributes: int) -> ASENet:
    """A freshly initialised ASENet for this run."""
    return ASENet(cfg.MODEL, num_attributes, **model_options(cfg))


def optim_config(cfg: AsenConfig) -> OptimConfig:
    """SOLVER as the shared optimizer section, no weight decay. Stage 1: every parameter at BASE_LR. Stage 2:
    local backbone and local head at BASE_LR; the global branch and the shared attribute table at BASE_LR_SLOW."""
    s = cfg.SOLVER
    if cfg.MODEL.LOCAL.ENABLE:
        groups = [ParamGroupRule("local_backbone", ["choices.local.basenet."], lr=s.BASE_LR),
                  ParamGroupRule("local_head", ["choices.local.attnnet."], lr=s.BASE_LR),
                  ParamGroupRule("global_and_attributes", ["attrnet.", "choices.global."], lr=s.BASE_LR_SLOW)]
    else:
        groups = [ParamGroupRule("all", [""], lr=s.BASE_LR)]
    return OptimConfig(name=s.OPTIMIZER_NAME.lower(), lr=s.BASE_LR, weight_decay=0.0, decay_all=True, groups=groups)


def schedule_config(cfg: AsenConfig) -> ScheduleConfig:
    """StepLR: the lr times DECAY_RATE every STEP_SIZE epochs."""
    return ScheduleConfig(name="step", interval="epoch", step_size=cfg.SOLVER.STEP_SIZE, gamma=cfg.SOLVER.DECAY_RATE)


def optimizer_and_schedule(model: nn.Module, cfg: AsenConfig, iters_per_epoch: int
                           ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimizer over the named groups (each logged) and its StepLR."""
    optim = optim_config(cfg)
    optimizer = build_optimizer(model, optim)
    for g in optimizer.param_groups:
        get_logger().info("parameter group %s: %d tensors, %d parameters, lr %g", g["name"], len(g["params"]),
                          sum(p.numel() for p in g["params"]), g["lr"])
    scheduler = build_scheduler(optimizer, schedule_config(cfg), optim.lr, cfg.SOLVER.EPOCHS, iters_per_epoch)
    return optimizer, scheduler


def loss_weights(cfg: AsenConfig, has_local: bool) -> dict[str, float]:
    """Weights of the named losses: w_g, and in stage 2 w_l and w_al."""
    s = cfg.SOLVER
    return {"global": s.GLOBAL_WEIGHT} | ({"local": s.LOCAL_WEIGHT, "align": s.ALIGN_WEIGHT} if has_local else {})


def resume_path(cfg: AsenConfig, value: str | None, notes: list[str] | None = None) -> str:
    """`--resume` (else RESUME): 'auto' = the run's last checkpoint when there is one (else '': a fresh run), a
    run folder = its last checkpoint (one-line error without one), else the file as given."""
    value = value if value is not None else cfg.RESUME
    if value == "auto":
        last = Path(cfg.run_dir) / CHECKPOINTS[0]
        if notes is not None:
            notes.append(f"resume 'auto': continuing from {last}" if last.is_file() else
                         f"resume 'auto': no {CHECKPOINTS[0]} in {cfg.run_dir} yet, starting a fresh run")
        return str(last) if last.is_file() else ""
    if value and Path(value).is_dir():
        last = Path(value) / CHECKPOINTS[0]
        if not last.is_file():
            raise FileNotFoundError(f"--resume {value}: the folder holds no {CHECKPOINTS[0]} to continue from")
        return str(last)
    return value


def same_stage(path: str, cfg: AsenConfig) -> bool:
    """A resumable checkpoint written by a run with the same branches (then `--resume` continues exactly). A file
    of another task's model (e.g. a Fashion-FINE checkpoint) is refused with one line."""
    obj = read_checkpoint(path)
    family, looks = looks_like(state_dict_of(obj, f"--resume {path}")[0])
    if family != "asen":
        raise CheckpointError(f"--resume {path}: not an ASEN++ checkpoint; the file looks like {looks} "
                              "(asen_main.py --resume takes a checkpoint of an ASEN++ run or a published one)")
    config = obj.get("config")
    model = config.get("MODEL") if isinstance(config, dict) else None
    local = model.get("LOCAL", {}).get("ENABLE") if isinstance(model, dict) else None
    return is_training_checkpoint(obj) and local == cfg.MODEL.LOCAL.ENABLE


class MapReport:
    """The final report: MAP of one split, printed and written as JSON (rank 0)."""

    def __init__(self, evaluator: AsenEvaluator, path: Path, view: ViewOptions | None = None) -> None:
        self.evaluator, self.path, self.view = evaluator, path, view or ViewOptions()

    def report(self, model: nn.Module, extra: dict[str, Any]) -> dict[str, float]:
        ev = self.evaluator
        ev.top_k = self.view.topk
        try:
            result = ev.compute(model)
        finally:
            ev.top_k = 0
        if not ev.info.is_main:
            return {}
        out = ev.write(result, self.path, extra["checkpoint"])
        if result.top is not None:  # next to the result JSON (tasks.views)
            write_asen_views(self.path.parent, ev.split.name, result, ev.media(), self.view,
                             f"ASEN++ {ev.split.name}: attribute-specific retrieval")
        print(f"MAP on {ev.split.name} ({extra['checkpoint']}):\n{ev.table(result)}\nwritten to {out}", flush=True)
        return ev.metrics(result)


class EmbedReport:
    """`--embed FOLDER --attribute NAME`: embeddings of every image under a folder (.npz)."""

    def __init__(self, task: AsenTask, folder: str, attribute: str, out: Path) -> None:
        self.task, self.folder, self.attribute, self.out = task, folder, attribute, out

    def report(self, model: nn.Module, extra: dict[str, Any]) -> dict[str, float]:
        t = self.task
        embed_folder(model, self.folder, self.attribute, t.schema_of_data, t.cfg, t.run.info, t.run.precision,
                     self.out, progress_bar=t.cfg.LOGGER.PROGRESS_BAR)
        return {}


class AsenTask(Task):
    """ASEN++ attribute-specific similarity: stage 1 (global branch) or stage 2 (global + local)."""

    name, schema, default_config, weight_family = "asen", AsenConfig, None, "asen"
    checkpoint_flag = "--resume"
    cfg: AsenConfig

    @classmethod
    def build_parser(cls, description: str) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
        add_config_arguments(p, None, flag="--cfg", set_example="SOLVER.BASE_LR=0.0001 SOLVER.EPOCHS=2")
        p.add_argument("--resume", help="checkpoint: stage-1 weights for stage 2, exact continuation of the same "
                       "stage, or the weights for --test/--embed (overrides RESUME; 'auto' = the run's last)")
        p.add_argument("--test", metavar="SPLIT", help="evaluate only, on TEST or VALID (case-insensitive)")
        p.add_argument("--embed", metavar="FOLDER", help="embed every image under FOLDER for --attribute")
        p.add_argument("--attribute", help="attribute name (or index) for --embed")
        p.add_argument("--out", help="result file of --test (JSON) or --embed (.npz)")
        p.add_argument("--backbone-weights", nargs="+", metavar="DIR|global=FILE|local=FILE",
                       help="local ImageNet weights: a folder with torchvision's resnet*.pth files, or one file "
                            "per branch")
        p.add_argument("--allow-partial", action="store_true", help="evaluate a checkpoint lacking some weights")
        p.add_argument("--overwrite", action="store_true",
                       help="train in a SAVE_DIR/NAME that holds another run: remove that run's checkpoints, logs "
                            "and results first (only the files the framework writes)")
        add_view_arguments(p)
        add_report_to_argument(p)
        p.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, help=argparse.SUPPRESS)
        return p

    @classmethod
    def make_request(cls, args: argparse.Namespace, cfg: AsenConfig) -> RunRequest:
        if args.embed and (args.test or not args.attribute):
            raise ConfigError("--embed needs --attribute NAME and cannot be combined with --test")
        apply_backbone_weights(cfg.MODEL, args.backbone_weights)
        notes: list[str] = []
        evaluate = bool(args.test or args.embed)
        weights = resume_path(cfg, args.resume, None if evaluate else notes) or None
        options = {"test": args.test, "embed": args.embed, "attribute": args.attribute, "out": args.out,
                   **view_options(args)}
        if evaluate:
            if not weights:
                raise FileNotFoundError("--test/--embed need the checkpoint to evaluate: pass --resume <checkpoint>")
            return RunRequest(Path(cfg.run_dir), evaluate=True, checkpoint=weights, strict=not args.allow_partial,
                              overwrite=args.overwrite, options=options)
        check_weights_exist(weights, "--resume")  # same_stage reads it
        exact = weights if weights and same_stage(weights, cfg) else None
        folder = Path(cfg.run_dir)
        if exact and not Path(exact).parent.resolve() == folder.resolve():  # a run continues in its own folder
            notes.append(f"--resume {exact}: the run continues in its own folder {Path(exact).parent} (not "
                         f"SAVE_DIR/NAME {folder})")
            folder = Path(exact).parent
        return RunRequest(folder, checkpoint=None if exact else weights, resume=exact, overwrite=args.overwrite,
                          options=options, notes=notes)

    @classmethod
    def run_files(cls, cfg: AsenConfig) -> RunFiles:
        return RunFiles(*CHECKPOINTS, folder_hint="another SAVE_DIR or NAME")

    @classmethod
    def runtime(cls, cfg: AsenConfig) -> RuntimeConfig:
        return RuntimeConfig(device=cfg.DEVICE, dist_backend=cfg.DIST.BACKEND, seed=cfg.SEED,
                             num_workers=cfg.DATA.NUM_WORKERS, cpu_threads=cfg.CPU_THREADS,
                             dist_timeout_s=cfg.DIST.TIMEOUT_S, stall_timeout_s=cfg.DIST.STALL_TIMEOUT_S)

    @classmethod
    def train_precision(cls, cfg: AsenConfig) -> str:
        return PRECISION[cfg.AMP]

    def __init__(self, cfg: AsenConfig, run: Any, request: RunRequest) -> None:
        super().__init__(cfg, run, request)
        log = get_logger()
        if run.info.is_main:
            log.setLevel(cfg.LOGGER.LEVEL)
            if cfg.LOGGER.STREAM != "stdout":
                log.addHandler(logging.FileHandler(cfg.LOGGER.STREAM, encoding="utf-8"))

    @cached_property
    def schema_of_data(self) -> Any:
        """Attribute names and value counts of the data set."""
        return schema_from_config(self.cfg.DATA)

    @cached_property
    def train_index(self) -> tuple[Any, Any, Any, Any]:
        return load_train_index(self.cfg.DATA, self.schema_of_data)

    @classmethod
    def model_card(cls, cfg: AsenConfig) -> dict[str, Any]:
        """Attribute names and value counts, the evaluation's image transform, the branches."""
        schema, inp = schema_from_config(cfg.DATA), cfg.INPUT
        return make_card(cls.name, cls.weight_family, attributes=list(schema.names),
                         values=[int(v) for v in schema.num_values], local=bool(cfg.MODEL.LOCAL.ENABLE),
                         image=image_entry(inp.GLOBAL_SIZE, "short side bilinear to size, centre crop size x size",
                                           inp.PIXEL_MEAN, inp.PIXEL_STD))

    @classmethod
    def inference_model(cls, cfg: AsenConfig, tokenizer: Any) -> ASENet:
        return build_model(cfg, schema_from_config(cfg.DATA).num_attributes)

    def build_model(self) -> ASENet:
        cfg, info, schema = self.cfg, self.run.info, self.schema_of_data
        model: Any = build_model(cfg, schema.num_attributes)
        get_logger().info("ASEN++ %s: %d attributes, %d parameters (%s branch%s), precision %s", cfg.NAME,
                          schema.num_attributes, sum(p.numel() for p in model.parameters()), "+".join(model.choices),
                          "es" if model.has_local else "", self.run.precision)
        if not self.request.evaluate and info.distributed and cfg.DIST.SYNC_BN:
            if info.device.type == "cuda":
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same state-dict keys
            else:
                get_logger().warning("DIST.SYNC_BN: SyncBatchNorm needs CUDA; on CPU each rank normalises its own "
                                     "share")
        return model

    @classmethod
    def check_inputs(cls, cfg: AsenConfig, request: RunRequest) -> None:
        """DEVICE (from the config alone), then the weights."""
        require_device(cfg.DEVICE, "DEVICE")
        super().check_inputs(cfg, request)

    def check_training(self) -> None:
        """The selection metric is one the MAP evaluation returns; the training files are read (and checked)
        before anything else."""
        check_select_metric(self.training().train.select_metric, metric_names(self.schema_of_data),
                            "the ASEN++ MAP evaluation")
        _ = self.train_index

    def final_report(self) -> MapReport | EmbedReport:
        opts, out, run_dir = self.request.options, self.request.options.get("out"), Path(self.run.output_dir)
        if opts.get("embed"):
            return EmbedReport(self, opts["embed"], opts["attribute"], Path(out or run_dir / "embeddings.npz"))
        evaluator = AsenEvaluator(self.cfg, self.schema_of_data, opts.get("test") or "test", self.run.info,
                                  self.run.precision, progress_bar=self.cfg.LOGGER.PROGRESS_BAR)
        return MapReport(evaluator, Path(out or run_dir / f"map_{evaluator.split.name}.json"),
                         ViewOptions.from_options(opts))

    def initialise(self, model: nn.Module, checkpoint: str | None) -> None:
        """ImageNet trunks (when configured), then INIT_FROM and a checkpoint of another stage; nothing when the
        run continues exactly (`--resume` of the same stage)."""
        if self.request.resume:
            return
        init_backbones(model)
        for path in [p for p in (self.cfg.INIT_FROM, checkpoint) if p]:
            load_weights(model, path, family="asen")

    def train_set(self, heldout: Any) -> AsenImages:
        _, images, list_path, root = self.train_index
        inp = self.cfg.INPUT
        return AsenImages(root, images, list_path, inp.GLOBAL_SIZE, inp.PIXEL_MEAN, inp.PIXEL_STD,
                          keep_original=self.cfg.MODEL.LOCAL.ENABLE)

    def selection_evaluator(self, heldout: Any) -> AsenEvaluator:
        return AsenEvaluator(self.cfg, self.schema_of_data, "valid", self.run.info, self.run.precision,
                             progress_bar=self.cfg.LOGGER.PROGRESS_BAR)

    def train_loader(self, dataset: AsenImages) -> TrainLoader:
        cfg, info = self.cfg, self.run.info
        sampler = TripletBatchSampler(self.train_index[0], cfg.DATA.NUM_TRIPLETS, cfg.DATA.TRAIN_BATCHSIZE,
                                      seed=cfg.SEED, rank=info.rank, world_size=info.world_size,
                                      batch_mode=cfg.DIST.BATCH_MODE, restrict=cfg.DATA.RESTRICT_VALUES)
        return TrainLoader(dataset, batch_sampler=sampler, num_workers=cfg.DATA.NUM_WORKERS, collate_fn=collate,
                           pin_memory=info.device.type == "cuda", seed=cfg.SEED, rank=info.rank)

    def optimizer(self, model: nn.Module, iters_per_epoch: int) -> tuple[torch.optim.Optimizer, Any]:
        return optimizer_and_schedule(model, self.cfg, iters_per_epoch)

    def training(self) -> TrainingPlan:
        cfg, s = self.cfg, self.cfg.SOLVER
        train = TrainConfig(epochs=s.EPOCHS, precision=self.run.precision, log_every=s.LOG_PERIOD,
                            eval_every=s.EVAL_STEPS, checkpoint_every=cfg.CKPT.EVERY_ITERS,
                            stop_after_steps=cfg.CKPT.STOP_AFTER_STEPS, select_metric="map",
                            progress_bar=cfg.LOGGER.PROGRESS_BAR, report_to=list(cfg.LOGGER.REPORT_TO),
                            skip_nonfinite_steps=s.SKIP_NONFINITE_STEPS)
        return TrainingPlan(train, loss_weights(cfg, cfg.MODEL.LOCAL.ENABLE), "epoch", CHECKPOINTS)
