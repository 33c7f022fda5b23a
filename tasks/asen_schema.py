"""Config schema of `asen_main.py` (ASEN++): the published yacs keys plus FashionFINE's engineering keys.

Field names are the published upper-case keys so the published YAML files (configs/asen/**) load unchanged;
the defaults are the published defaults, except `DEVICE` (`auto` instead of `cuda`, so CPU machines work).
The MODEL section is the model's own config (models/asen_config.py); `python asen_main.py --help-config`
lists every key with its default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from engine.config import field
from models.asen_config import AsenModelConfig


@dataclass
class InputConfig:
    PIXEL_MEAN: list[float] = field([0.485, 0.456, 0.406], "normalisation mean (RGB, [0, 1] scale)")
    PIXEL_STD: list[float] = field([0.229, 0.224, 0.225], "normalisation std")
    GLOBAL_SIZE: int = field(224, "S: resize short side to S, centre-crop S x S")
    LOCAL_SIZE: int = field(112, "side of the local crop after resizing")
    THRESHOLD: float = field(0.4, "tau: attention threshold of the local crop (0.1 in every published s2)")

    def validate(self) -> None:
        if len(self.PIXEL_MEAN) != 3 or len(self.PIXEL_STD) != 3:
            raise ValueError("INPUT.PIXEL_MEAN and INPUT.PIXEL_STD need 3 values (RGB)")
        if not 0.0 <= self.THRESHOLD < 1.0:
            raise ValueError(f"INPUT.THRESHOLD must lie in [0, 1), got {self.THRESHOLD}")


@dataclass
class AttributesConfig:
    NAME: list[str] = field([], "attribute names, in index order")
    NUM: list[int] = field([], "V_k, number of values of each attribute")


@dataclass
class PathFileConfig:
    TRAIN: str = field("", "image list of the training split")
    VALID: str = field("", "image list of the validation split")
    TEST: str = field("", "image list of the test split")


@dataclass
class SplitFilesConfig:
    VALID: str = field("", "validation split file")
    TEST: str = field("", "test split file")


@dataclass
class GroundTruthConfig:
    TRAIN: str = field("", "training labels (fid a1 v1 [a2 v2 ...])")
    QUERY: SplitFilesConfig = field(SplitFilesConfig, "query lines (fid a v)")
    CANDIDATE: SplitFilesConfig = field(SplitFilesConfig, "candidate lines (fid a v)")


@dataclass
class DataConfig:
    NUM_WORKERS: int = field(4, "DataLoader processes per rank")
    NUM_TRIPLETS: int = field(100000, "triplets per epoch")
    TRAIN_BATCHSIZE: int = field(16, "triplets per optimizer step (global batch under DDP, see DIST)")
    TEST_BATCHSIZE: int = field(64, "query/candidate lines per evaluation batch")
    BASE_PATH: str = field("data", "data root")
    DATASET: str = field("", "dataset folder under BASE_PATH")
    NUM_ATTRIBUTES: int = field(-1, "K")
    ATTRIBUTES: AttributesConfig = field(AttributesConfig, "attribute names and value counts")
    PATH_FILE: PathFileConfig = field(PathFileConfig, "image lists")
    GROUNDTRUTH: GroundTruthConfig = field(GroundTruthConfig, "label, query and candidate files")
    RESTRICT_VALUES: bool = field(
        False, "sample positives only from values with >= 2 training images and negatives from non-empty "
        "values, instead of failing at start-up (not faithful)")
    CHECK_IMAGES: Literal["all", "sample", "none"] = field(
        "sample", "check the referenced image files before training or evaluating: all (each one exists and "
        "decodes), sample (a fixed sample of 1000 exists), or none")

    def validate(self) -> None:
        if self.NUM_TRIPLETS < 1 or self.TRAIN_BATCHSIZE < 1 or self.TEST_BATCHSIZE < 1:
            raise ValueError("DATA.NUM_TRIPLETS, TRAIN_BATCHSIZE and TEST_BATCHSIZE must be >= 1")
        if self.NUM_WORKERS < 0:
            raise ValueError(f"DATA.NUM_WORKERS must be >= 0 (0 = load in the main process), got {self.NUM_WORKERS}")
        names, nums = self.ATTRIBUTES.NAME, self.ATTRIBUTES.NUM
        if self.NUM_ATTRIBUTES != -1 and (len(nums) != self.NUM_ATTRIBUTES or len(names) != self.NUM_ATTRIBUTES):
            raise ValueError(
                f"DATA.NUM_ATTRIBUTES is {self.NUM_ATTRIBUTES} but DATA.ATTRIBUTES has {len(names)} names and "
                f"{len(nums)} value counts")
        if any(n < 2 for n in nums):
            raise ValueError(f"every attribute needs >= 2 values (DATA.ATTRIBUTES.NUM = {nums})")


@dataclass
class SolverConfig:
    EVAL_STEPS: int = field(1, "validate every N epochs")
    OPTIMIZER_NAME: Literal["Adam", "AdamW", "SGD"] = field("Adam", "torch optimizer (PyTorch defaults)")
    STEP_SIZE: int = field(3, "StepLR step, in epochs")
    DECAY_RATE: float = field(0.9, "StepLR gamma")
    EPOCHS: int = field(50, "training epochs")
    LOG_PERIOD: int = field(800, "iterations between log lines")
    BASE_LR: float = field(1e-4, "lr (stage 1: all parameters; stage 2: the local branch)")
    BASE_LR_SLOW: float = field(1e-5, "stage 2: lr of the global branch and the attribute table")
    ALIGN_WEIGHT: float = field(1.0, "w_al, global-local alignment loss weight")
    LOCAL_WEIGHT: float = field(1.0, "w_l, local triplet loss weight")
    GLOBAL_WEIGHT: float = field(1.0, "w_g, global triplet loss weight")
    MARGIN: float = field(0.2, "triplet margin on cosine similarity")
    BETA: float = field(0.6, "test-time fusion weight of the global embedding")
    SKIP_NONFINITE_STEPS: int = field(
        0, "optimizer steps with a NaN/inf loss or gradient norm that may be skipped over the whole run (each "
           "logged; counted in the train records and checkpoints); one more stops the run (0 = stop at the first)")

    def validate(self) -> None:
        if self.SKIP_NONFINITE_STEPS < 0:
            raise ValueError(f"SOLVER.SKIP_NONFINITE_STEPS must be >= 0, got {self.SKIP_NONFINITE_STEPS}")
        if self.EPOCHS < 1 or self.STEP_SIZE < 1 or self.EVAL_STEPS < 0 or self.LOG_PERIOD < 1:
            raise ValueError("SOLVER.EPOCHS, STEP_SIZE, LOG_PERIOD must be >= 1 and EVAL_STEPS >= 0")
        if not 0.0 <= self.BETA <= 1.0:
            raise ValueError(f"SOLVER.BETA must lie in [0, 1], got {self.BETA}")
        for name in ("BASE_LR", "BASE_LR_SLOW"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SOLVER.{name} must be > 0, got {getattr(self, name)}")


@dataclass
class LoggerConfig:
    LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = field("INFO", "log level of rank 0")
    STREAM: str = field("stdout", "stdout, or a file that also receives the log lines")
    PROGRESS_BAR: bool = field(
        True, "rank 0 progress of training epochs and evaluation embedding: a bar on a terminal, a log line "
        "every 30 s otherwise")
    REPORT_TO: list[Literal["tensorboard", "wandb"]] = field(
        [], "also send the log.jsonl scalars to these trackers (tensorboard: SAVE_DIR/NAME/tensorboard/; wandb: "
            "offline unless WANDB_MODE is set); --report-to overrides")


@dataclass
class DistConfig:
    BACKEND: Literal["auto", "nccl", "gloo"] = field("auto", "auto = NCCL on GPU, gloo on CPU")
    BATCH_MODE: Literal["global", "per_rank"] = field(
        "global", "global: TRAIN_BATCHSIZE triplets per step split over ranks (faithful); "
        "per_rank: TRAIN_BATCHSIZE per rank, fewer steps per epoch (faster, not faithful)")
    SYNC_BN: bool = field(True, "SyncBatchNorm under DDP on CUDA, so BN sees each whole triplet part")
    TIMEOUT_S: int = field(
        1800, "seconds a collective waits for the other ranks before the run stops and names the rank(s) that "
              "stopped responding (30 min as published)")
    STALL_TIMEOUT_S: int = field(
        300, "seconds without a heartbeat from another rank (stopped, hung, host gone) after which the run stops "
             "and names it; heartbeats go on during evaluations; 0 = off")

    def validate(self) -> None:
        if self.STALL_TIMEOUT_S < 0:
            raise ValueError(f"DIST.STALL_TIMEOUT_S must be >= 0 (0 = off), got {self.STALL_TIMEOUT_S}")
        if self.TIMEOUT_S < 1:
            raise ValueError(f"DIST.TIMEOUT_S must be >= 1, got {self.TIMEOUT_S}")


@dataclass
class EvalConfig:
    CHUNK_QUERIES: int = field(0, "queries ranked at once by the MAP routine (0 = from a memory budget)")


@dataclass
class CheckpointConfig:
    EVERY_ITERS: int = field(0, "also write the last checkpoint every N iterations (0 = epoch ends only)")
    STOP_AFTER_STEPS: int | None = field(None, "write a checkpoint and stop after N steps (tests)")


@dataclass
class AsenConfig:
    """Root of an ASEN++ run config."""

    NAME: str = field("", "run name (sub-folder of SAVE_DIR)")
    SAVE_DIR: str = field("", "checkpoint root; the run writes to SAVE_DIR/NAME")
    DEVICE: Literal["auto", "cpu", "cuda"] = field("auto", "torch device (published default: cuda)")
    CPU_THREADS: int | None = field(
        None, "intra-op threads on CPU; null = cores per process minus data-loader workers (at least 1)")
    MODEL: AsenModelConfig = field(AsenModelConfig, "model")
    INPUT: InputConfig = field(InputConfig, "image transforms and crop")
    DATA: DataConfig = field(DataConfig, "data files and loading")
    SOLVER: SolverConfig = field(SolverConfig, "optimisation")
    LOGGER: LoggerConfig = field(LoggerConfig, "logging")
    INIT_FROM: str = field("", "checkpoint whose matching weights initialise the model (stage 1 -> stage 2)")
    RESUME: str = field("", "'' = fresh run, 'auto' = SAVE_DIR/NAME/checkpoint.pth.tar if present, or a path")
    SEED: int = field(0, "base seed (triplets, workers, torch)")
    AMP: Literal["auto", "bf16", "none"] = field("auto", "auto = bf16 autocast on CUDA, fp32 on CPU")
    DIST: DistConfig = field(DistConfig, "multi-process training")
    EVAL: EvalConfig = field(EvalConfig, "evaluation")
    CKPT: CheckpointConfig = field(CheckpointConfig, "checkpointing")

    @property
    def run_dir(self) -> str:
        """SAVE_DIR/NAME, where checkpoints, logs and results go."""
        return os.path.join(self.SAVE_DIR or "runs", self.NAME or "asen")
