"""Config schemas of the Fashion-FINE entry points (pretrain.py, retrieval.py, tgir.py).

Every key is documented here; `python pretrain.py --help-config` lists them with their defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from engine.config import field
from engine.sections import OptimConfig, RuntimeConfig, ScheduleConfig, TrainConfig
from models.fine_config import FineModelConfig, LossConfig
from tasks.compat import CompatConfig


@dataclass
class FashionGenDataConfig:
    """FashionGen data and text processing."""

    root: str = field("data_root", "folder with the two .h5 files and the prepare_dataset.py outputs")
    tokenizer: str = field("fashion_annotation", "local folder holding vocab.txt (scripts/build_vocab.py)")
    max_words: int = field(180, "token length of every text (`--max_word_num`)")
    batch_size: int = field(64, "training batch per GPU")
    eval_batch_size: int = field(256, "feature-extraction batch")
    randaugment_magnitude: int = field(7, "RandAugment magnitude of the training transform")
    wordnet_path: str | None = field(None, "local NLTK data folder with WordNet (pretraining); null = no WordNet")
    select_on: Literal["heldout", "test"] = field(
        "heldout", "model selection on a held-out slice of train products (test = published; docs/compat.md, data.select_on)")
    heldout_products: int = field(1000, "training products held out for selection (select_on: heldout)")
    heldout_seed: int = field(66, "seed of the held-out draw")

    def validate(self) -> None:
        if self.max_words < 8:
            raise ValueError("data.max_words must be >= 8")
        if self.batch_size < 2:
            raise ValueError("data.batch_size must be >= 2 (in-batch negatives)")


@dataclass
class SampledConfig:
    """The sampled ("1,000 queries x 101 candidates") CMR protocol."""

    sets: Literal["fixed", "legacy"] = field("fixed", "fixed: drawn once and saved; legacy: redrawn per evaluation")
    seed: int = field(66, "seed of the draw")
    set_len: int = field(1000, "queries per direction")
    neg_len: int = field(100, "negatives per query")
    exclude_positive_from_t2i_pool: bool = field(True, "false reproduces the published T2I pool defect (docs/compat.md)")


@dataclass
class CMREvalConfig:
    """Cross-modal retrieval evaluation on FashionGen."""

    protocol: Literal["full", "sampled", "both"] = field("both", "which protocols to run")
    sampled: SampledConfig = field(SampledConfig)
    chunk_size: int | None = field(None, "scores per ranking chunk (default: by device)")
    rerank_k: int = field(
        0, "full protocol of every CMR evaluation (selection too): re-rank each query's top k by the ITM head of "
           "the fusion encoder, as the ALBEF / BLIP evaluations do; 0 = embeddings only (published Fashion-FINE)")
    rerank_batch: int = field(256, "query-candidate pairs per ITM forward (eval.rerank_k > 0)")

    def validate(self) -> None:
        if self.rerank_k < 0:
            raise ValueError(f"eval.rerank_k must be >= 0 (0 = off), got {self.rerank_k}")
        if self.rerank_batch < 1:
            raise ValueError(f"eval.rerank_batch must be >= 1, got {self.rerank_batch}")
        if self.rerank_k and self.protocol == "sampled":
            raise ValueError("eval.rerank_k re-ranks the full protocol: use eval.protocol full or both")


@dataclass
class PretrainConfig:
    """`pretrain.py`: Fashion-FINE pretraining on FashionGen."""

    output_dir: str = field("output/FashionFINE_pt", "logs, checkpoints, results")
    eval_output_dir: str | None = field(
        None, "folder of an --evaluate run (results, log); null = output_dir + '_eval', so an evaluation never "
              "writes into a training run's folder")
    checkpoint: str | None = field(None, "initial weights (ALBEF / FashionSAP / Fashion-FINE file)")
    model: FineModelConfig = field(FineModelConfig)
    loss: LossConfig = field(LossConfig)
    compat: CompatConfig = field(CompatConfig)
    data: FashionGenDataConfig = field(FashionGenDataConfig)
    eval: CMREvalConfig = field(CMREvalConfig)
    train: TrainConfig = field(TrainConfig)
    optim: OptimConfig = field(OptimConfig)
    schedule: ScheduleConfig = field(ScheduleConfig)
    runtime: RuntimeConfig = field(RuntimeConfig)


@dataclass
class RetrievalConfig(PretrainConfig):
    """`retrieval.py`: CMR fine-tuning and evaluation on FashionGen."""

    output_dir: str = field("output/FashionFINE_retrieval", "logs, checkpoints, results")


@dataclass
class FashionIQDataConfig:
    """FashionIQ data and text processing."""

    root: str = field("data_root", "FashionIQ folder: captions/, image_splits/, images/")
    image_dir: str = field("images", "image folder name (`tgir_images` in the published scripts)")
    image_ext: str = field(".png", "image file extension")
    tokenizer: str = field("fashion_annotation", "local folder holding vocab.txt")
    max_words: int = field(79, "token length of the query text")
    batch_size: int = field(16, "training batch per GPU")
    eval_batch_size: int = field(256, "feature-extraction batch")
    randaugment_magnitude: int = field(7, "RandAugment magnitude of the training transform")
    train_class: Literal["all", "dress", "shirt", "toptee"] = field("all", "training caption file(s)")
    select_on: Literal["heldout", "val"] = field(
        "heldout", "model selection on held-out train triplets (val = published, selects on the reported split)")
    heldout_fraction: float = field(0.1, "fraction of training reference images held out")
    heldout_seed: int = field(66, "seed of the held-out draw")

    def validate(self) -> None:
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"data.heldout_fraction must be in (0, 1), got {self.heldout_fraction}")


@dataclass
class TGIREvalConfig:
    """FashionIQ evaluation options (recorded with every result)."""

    gallery: Literal["triplets", "split"] = field("triplets", "gallery = triplet images (published) or split files")
    exclude_reference: bool = field(False, "remove each query's reference image from its ranking")
    categories: list[str] = field(["dress", "shirt", "toptee"], "categories evaluated")
    chunk_size: int | None = field(None, "scores per ranking chunk (default: by device)")


@dataclass
class TGIRConfig:
    """`tgir.py`: text-guided image retrieval fine-tuning and evaluation on FashionIQ."""

    output_dir: str = field("output/FashionFINE_tgir", "logs, checkpoints, results")
    eval_output_dir: str | None = field(
        None, "folder of an --evaluate run (results, log); null = output_dir + '_eval', so an evaluation never "
              "writes into a training run's folder")
    checkpoint: str | None = field(None, "initial weights (a Fashion-FINE pretraining checkpoint)")
    model: FineModelConfig = field(FineModelConfig)
    loss: LossConfig = field(LossConfig)
    compat: CompatConfig = field(CompatConfig)
    data: FashionIQDataConfig = field(FashionIQDataConfig)
    eval: TGIREvalConfig = field(TGIREvalConfig)
    train: TrainConfig = field(TrainConfig)
    optim: OptimConfig = field(OptimConfig)
    schedule: ScheduleConfig = field(ScheduleConfig)
    runtime: RuntimeConfig = field(RuntimeConfig)
