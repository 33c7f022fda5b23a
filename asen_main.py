"""ASEN++ entry point (asenpp.md §6), with the published command lines:

    python asen_main.py --cfg configs/asen/DARN/DARN.yaml configs/asen/DARN/s1.yaml
    python asen_main.py --cfg configs/asen/DARN/DARN.yaml configs/asen/DARN/s2.yaml --resume runs/DARN_s1/checkpoint.pth.tar
    python asen_main.py --cfg configs/asen/DARN/DARN.yaml configs/asen/DARN/s2.yaml --resume runs/DARN_s2/model_best.pth.tar --test TEST
    python asen_main.py --cfg ... --resume <checkpoint> --embed <image folder> --attribute "sleeve length" --out emb.npz

`--resume` with a checkpoint of another stage (stage 1's, given to stage 2) or a published file initialises
the weights only; a checkpoint of the same stage continues exactly. Multi-GPU: `torchrun --nproc_per_node N`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from datasets.asen import AsenImages, TripletBatchSampler, collate, load_train_index, schema_from_config
from engine.checkpoint import is_training_checkpoint
from engine.config import add_config_arguments, config_from_args, config_to_dict
from engine.data import TrainLoader
from engine.logger import get_logger
from engine.optim import build_optimizer, build_scheduler
from engine.precision import resolve_precision
from engine.run import run_main, start_run
from engine.sections import OptimConfig, RuntimeConfig, ScheduleConfig, TrainConfig
from engine.trainer import Trainer
from evaluation.asen_eval import AsenEvaluator, embed_folder
from models.asen import ASENet, apply_backbone_weights, param_groups
from models.asen_config import AsenConfig
from models.asen_keys import load_weights, read_checkpoint, read_weights_file

CHECKPOINTS = ("checkpoint.pth.tar", "model_best.pth.tar")
PRECISION = {"auto": "auto", "bf16": "bf16", "none": "fp32"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="ASEN++ attribute-specific fashion similarity: train, test, embed")
    add_config_arguments(p, None, flag="--cfg")
    p.add_argument("--resume", help="checkpoint: stage-1 weights for stage 2, exact continuation of the same "
                   "stage, or the weights for --test/--embed (overrides RESUME; 'auto' = the run's last)")
    p.add_argument("--test", metavar="SPLIT", help="evaluate only, on TEST or VALID (case-insensitive)")
    p.add_argument("--embed", metavar="FOLDER", help="embed every image under FOLDER for --attribute")
    p.add_argument("--attribute", help="attribute name (or index) for --embed")
    p.add_argument("--out", help="result file of --test (JSON) or --embed (.npz)")
    p.add_argument("--backbone-weights", nargs="+", metavar="DIR|global=FILE|local=FILE",
                   help="local ImageNet weights: a folder with torchvision's resnet*.pth files, or one file per branch")
    p.add_argument("--allow-partial", action="store_true", help="evaluate a checkpoint lacking some weights")
    p.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, help=argparse.SUPPRESS)
    return p


def resume_path(cfg: AsenConfig, value: str | None) -> str:
    value = value if value is not None else cfg.RESUME
    if value == "auto":
        last = Path(cfg.run_dir) / CHECKPOINTS[0]
        return str(last) if last.is_file() else ""
    return value


def same_stage(path: str, cfg: AsenConfig) -> bool:
    """A resumable checkpoint written by a run with the same branches (then `--resume` continues exactly)."""
    obj = read_checkpoint(path)
    local = obj.get("config", {}).get("MODEL", {}).get("LOCAL", {}).get("ENABLE")
    return is_training_checkpoint(obj) and local == cfg.MODEL.LOCAL.ENABLE


def build_model(cfg: AsenConfig, schema, precision: str) -> ASENet:
    model = ASENet(cfg, schema.num_attributes)
    get_logger().info("ASEN++ %s: %d attributes, %d parameters (%s branch%s), precision %s", cfg.NAME,
                      schema.num_attributes, sum(p.numel() for p in model.parameters()), "+".join(model.choices),
                      "es" if model.has_local else "", precision)
    return model


def train(cfg: AsenConfig, info, schema, precision: str, resume: str) -> int:
    log = get_logger()
    index, images, list_path, root = load_train_index(cfg.DATA, schema)
    evaluator = AsenEvaluator(cfg, schema, "valid", info, precision)
    model = build_model(cfg, schema, precision)
    exact = resume if resume and same_stage(resume, cfg) else ""
    if not exact:
        model.load_imagenet()
        for path in [p for p in (cfg.INIT_FROM, resume) if p]:
            report = load_weights(model, read_weights_file(path), strict=False, source=path)
            log.info("initialised from %s: %s", path, report.describe())
    if info.distributed and cfg.DIST.SYNC_BN:
        if info.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            log.warning("DIST.SYNC_BN: SyncBatchNorm needs CUDA; on CPU each rank normalises its own share")
    sampler = TripletBatchSampler(index, cfg.DATA.NUM_TRIPLETS, cfg.DATA.TRAIN_BATCHSIZE, seed=cfg.SEED,
                                  rank=info.rank, world_size=info.world_size, batch_mode=cfg.DIST.BATCH_MODE,
                                  restrict=cfg.DATA.RESTRICT_VALUES)
    dataset = AsenImages(root, images, list_path, cfg.INPUT.GLOBAL_SIZE, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD,
                         keep_original=model.has_local)
    loader = TrainLoader(dataset, batch_sampler=sampler, num_workers=cfg.DATA.NUM_WORKERS, collate_fn=collate,
                         pin_memory=info.device.type == "cuda", seed=cfg.SEED, rank=info.rank)
    groups = param_groups(model, cfg)
    for g in groups:
        log.info("parameter group %s: %d tensors, %d parameters, lr %g", g["name"], len(g["params"]),
                 sum(p.numel() for p in g["params"]), g["lr"])
    s = cfg.SOLVER
    optimizer = build_optimizer(groups, OptimConfig(name=s.OPTIMIZER_NAME.lower(), lr=s.BASE_LR, weight_decay=0.0))
    scheduler = build_scheduler(optimizer, ScheduleConfig(name="step", interval="epoch", step_size=s.STEP_SIZE,
                                                          gamma=s.DECAY_RATE), s.BASE_LR, s.EPOCHS, len(loader))
    weights = {"global": s.GLOBAL_WEIGHT} | ({"local": s.LOCAL_WEIGHT, "align": s.ALIGN_WEIGHT}
                                             if model.has_local else {})
    tcfg = TrainConfig(epochs=s.EPOCHS, precision=precision, log_every=s.LOG_PERIOD, eval_every=s.EVAL_STEPS,
                       checkpoint_every=cfg.CKPT.EVERY_ITERS, stop_after_steps=cfg.CKPT.STOP_AFTER_STEPS,
                       select_metric="map")
    trainer = Trainer(model, loader, optimizer, scheduler, tcfg, info, cfg.run_dir, schedule_interval="epoch",
                      loss_weights=weights, evaluate=evaluator, config_dict=config_to_dict(cfg),
                      checkpoint_names=CHECKPOINTS)
    if exact:
        trainer.resume(exact)
    result = trainer.fit()
    if result.best_metric is not None:
        log.info("best validation MAP %.4f at epoch %d; checkpoints in %s", result.best_metric, result.best_epoch,
                 cfg.run_dir)
    return 0


def evaluate_only(args: argparse.Namespace, cfg: AsenConfig, info, schema, precision: str, weights: str) -> int:
    if not weights:
        raise FileNotFoundError("--test/--embed need the checkpoint to evaluate: pass --resume <checkpoint>")
    evaluator = None if args.embed else AsenEvaluator(cfg, schema, args.test, info, precision)
    model = build_model(cfg, schema, precision)
    report = load_weights(model, read_weights_file(weights), strict=not args.allow_partial, source=weights)
    get_logger().info("weights from %s: %s", weights, report.describe())
    model.to(info.device)
    if args.embed:
        embed_folder(model, args.embed, args.attribute, schema, cfg, info, precision,
                     args.out or Path(cfg.run_dir) / "embeddings.npz")
        return 0
    result = evaluator.compute(model)
    if info.is_main:
        out = evaluator.write(result, args.out or Path(cfg.run_dir) / f"map_{evaluator.split.name}.json", weights)
        print(f"MAP on {evaluator.split.name} ({weights}):\n{evaluator.table(result)}\nwritten to {out}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.embed and (args.test or not args.attribute):
        parser.error("--embed needs --attribute NAME and cannot be combined with --test")
    cfg = config_from_args(AsenConfig, args)
    apply_backbone_weights(cfg, args.backbone_weights)
    runtime = RuntimeConfig(device=cfg.DEVICE, dist_backend=cfg.DIST.BACKEND, seed=cfg.SEED,
                            num_workers=cfg.DATA.NUM_WORKERS)
    info = start_run(runtime, cfg.run_dir, cfg)
    log = get_logger()
    if info.is_main:
        log.setLevel(cfg.LOGGER.LEVEL)
        if cfg.LOGGER.STREAM != "stdout":
            log.addHandler(logging.FileHandler(cfg.LOGGER.STREAM, encoding="utf-8"))
    schema = schema_from_config(cfg.DATA)
    precision = resolve_precision(PRECISION[cfg.AMP], info.device)
    weights = resume_path(cfg, args.resume)
    if args.test or args.embed:
        return evaluate_only(args, cfg, info, schema, precision, weights)
    return train(cfg, info, schema, precision, weights)


if __name__ == "__main__":
    run_main(main)
