"""Config schema of `train_blip.py` (Fashion-FINE on BLIP, both stages).

Every key is documented here; `python train_blip.py --help-config` lists them with their defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from engine.config import field
from engine.sections import OptimConfig, RuntimeConfig, ScheduleConfig, TrainConfig
from models.blip_config import BlipModelConfig
from models.fine_config import LossConfig
from tasks.compat import CompatConfig
from tasks.fine_schema import CMREvalConfig


@dataclass
class BlipDataConfig:
    """FashionGen annotation JSONs and extracted images (`prepare_dataset.py --extract-images`)."""

    root: str = field("data_root", "FashionGen data root holding annotation/, images/ and <split>/info_data.json")
    annotation_dir: str = field("annotation", "folder of the annotation JSONs, relative to root")
    image_dir: str = field("images", "folder of the image files the annotations name, relative to root")
    train_annotation: str = field(
        "fashiongen_train.json", "per-image training records (stage 1: fashiongen_train_symbol.json)")
    test_annotation: str = field(
        "fashiongen_test.json", "per-product test records (published stage 1: fashiongen_test_symbol.json)")
    tokenizer: str = field("bert-base-uncased", "local folder with a bert-base-uncased (or Fashion-FINE) vocab.txt")
    max_words: int = field(180, "caption word cap of the BLIP cleaner")
    max_length: int = field(180, "token length of every text")
    batch_size: int = field(8, "training batch per GPU")
    eval_batch_size: int = field(64, "feature-extraction batch")
    randaugment_magnitude: int = field(5, "RandAugment magnitude of the training transform")
    select_on: Literal["heldout", "test", "none"] = field(
        "heldout", "model selection on held-out training products (test = published, selects on the test split; "
                   "none = train on every product, no evaluation during training, the last epoch is reported)")
    heldout_products: int = field(1000, "training products (image_ids) held out for selection")
    heldout_seed: int = field(66, "seed of the held-out draw")

    def validate(self) -> None:
        if self.max_length < 8:
            raise ValueError("data.max_length must be >= 8")
        if self.batch_size < 2:
            raise ValueError("data.batch_size must be >= 2 (in-batch negatives)")


@dataclass
class BlipEvalConfig(CMREvalConfig):
    """BLIP-variant CMR evaluation: the published full protocol keeps each query's top `k_test` scores;
    `both` adds the sampled protocol (1,000 queries x 101 candidates) from the same embeddings."""

    protocol: Literal["full", "sampled", "both"] = field("full", "full (published), sampled, or both")
    k_test: int = field(256, "full protocol: scores kept per query (others -100); irrelevant for R@<=10")


@dataclass
class BlipRetrievalConfig:
    """`train_blip.py`: one stage of Fashion-FINE-on-BLIP fine-tuning, or `--evaluate`."""

    output_dir: str = field("output/retrieval_fashionfine_fashiongen_ft_2", "logs, checkpoints, results")
    eval_output_dir: str | None = field(
        None, "folder of an --evaluate run (results, log); null = output_dir + '_eval', so an evaluation never "
              "writes into a training run's folder")
    checkpoint: str | None = field(None, "initial weights: BLIP model_base.pth (stage 1), a stage-1 checkpoint "
                                         "(stage 2), or a Fashion-FINE-on-BLIP model (--evaluate, strict)")
    model: BlipModelConfig = field(BlipModelConfig)
    loss: LossConfig = field(LossConfig)
    compat: CompatConfig = field(CompatConfig)
    data: BlipDataConfig = field(BlipDataConfig)
    eval: BlipEvalConfig = field(BlipEvalConfig)
    train: TrainConfig = field(TrainConfig)
    optim: OptimConfig = field(OptimConfig)
    schedule: ScheduleConfig = field(ScheduleConfig)
    runtime: RuntimeConfig = field(RuntimeConfig)
