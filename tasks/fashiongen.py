"""The FashionGen tasks: Fashion-FINE pretraining (`pretrain.py`) and cross-modal retrieval fine-tuning and
evaluation (`retrieval.py`). Both select on held-out training products (or the test split) and report one
evaluation of the selected checkpoint on the test split (`results_test.json`)."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from torch import nn

from datasets.fashiongen import FashionGenCMRTrainDataset, FashionGenPretrainDataset, FashionGenSplit
from datasets.fashiongen_h5 import h5_path
from datasets.heldout import check_batch_fits
from datasets.text import load_tokenizer
from engine.config import check_select_metric
from engine.sections import require_device
from evaluation.cmr import metric_names
from models.fine_pretrain import FinePretrainModel
from models.fine_retrieval import FineRetrievalModel
from tasks.base import RunRequest
from tasks.cmr_eval import CMREvaluator, selection_evaluator, split_products, test_evaluator
from tasks.fine_common import FineTask, fine_model
from tasks.fine_schema import PretrainConfig, RetrievalConfig
from tasks.published_flags import PRETRAIN_FLAGS


class FashionGenTask(FineTask):
    """What pretraining and retrieval share: tokenizer, splits, evaluators, held-out products."""

    model_cls: type[nn.Module]
    cfg: PretrainConfig
    published_flags = PRETRAIN_FLAGS  # pretrain.py and retrieval.py have the same published argparse

    @classmethod
    def selection_metrics(cls, cfg: Any) -> tuple[str, ...]:
        """The metrics the selection evaluation returns (what train.select_metric may name)."""
        return metric_names(cfg.eval.protocol)

    @classmethod
    def check_inputs(cls, cfg: Any, request: RunRequest) -> None:
        """Device, selection metric, weights, tokenizer and the FashionGen files of the splits the run reads."""
        require_device(cfg.runtime.device)
        if not request.evaluate:
            check_select_metric(cfg.train.select_metric, cls.selection_metrics(cfg),
                                f"the FashionGen CMR evaluation (eval.protocol {cfg.eval.protocol})")
        super().check_inputs(cfg, request)
        for split in ("validation",) if request.evaluate else ("train", "validation"):
            h5_path(cfg.data.root, split)

    def check_fits(self, num_samples: int, samples: str, heldout: tuple[list[int] | None, list[int] | None]) -> None:
        """The training set (after the held-out products) fills at least one batch per process."""
        held = f"{len(heldout[1])} products" if heldout[1] else ""
        check_batch_fits(num_samples, self.cfg.data.batch_size, self.run.info.world_size, samples, held)

    @cached_property
    def tokenizer(self) -> Any:
        return load_tokenizer(self.cfg.data.tokenizer)

    @cached_property
    def test_split(self) -> FashionGenSplit:
        return FashionGenSplit(self.cfg.data.root, "validation")

    @cached_property
    def train_split(self) -> FashionGenSplit:  # evaluation alone needs only the test split's files
        return FashionGenSplit(self.cfg.data.root, "train")

    def build_model(self) -> nn.Module:
        return self.inference_model(self.cfg, self.tokenizer)

    @classmethod
    def inference_model(cls, cfg: Any, tokenizer: Any) -> nn.Module:
        return fine_model(cls.model_cls, cfg, tokenizer)

    def final_report(self) -> CMREvaluator:
        cfg, run = self.cfg, self.run
        evaluator = test_evaluator(cfg.data, cfg.eval, self.tokenizer, cfg.model.vision.image_res, self.test_split,
                                   run.output_dir, cfg.runtime.num_workers, run.device, run.precision,
                                   cfg.train.progress_bar)
        evaluator.view = self.final_view()
        return evaluator

    def heldout_split(self) -> tuple[list[int] | None, list[int] | None]:
        """(training products, held-out products); (None = all, None) when selecting on the test split."""
        return split_products(self.cfg.data, self.train_split, self.run.output_dir)

    def selection_evaluator(self, heldout: tuple[list[int] | None, list[int] | None]) -> CMREvaluator:
        cfg, run = self.cfg, self.run
        return selection_evaluator(cfg.data, cfg.eval, self.tokenizer, cfg.model.vision.image_res,
                                   self.train_split, self.test_split, heldout[1], run.output_dir,
                                   cfg.runtime.num_workers, run.device, run.precision, cfg.train.progress_bar)


class PretrainTask(FashionGenTask):
    """Five losses (contrastive, matching, symbol, masked-LM, replaced-token) on every training row."""

    name, schema, default_config = "pretrain", PretrainConfig, "configs/pretrain.yaml"
    model_cls = FinePretrainModel

    def train_set(self, heldout: tuple[list[int] | None, list[int] | None]) -> FashionGenPretrainDataset:
        cfg = self.cfg
        dataset = FashionGenPretrainDataset(
            self.train_split, self.tokenizer, image_res=cfg.model.vision.image_res,
            randaugment_magnitude=cfg.data.randaugment_magnitude, products=heldout[0], seed=cfg.runtime.seed,
            max_length=cfg.data.max_words, text_options=cfg.compat.pretrain_text_options(cfg.data.wordnet_path))
        self.check_fits(len(dataset), f"rows of {self.train_split.h5_path}", heldout)
        return dataset


class RetrievalTask(FashionGenTask):
    """Contrastive and matching losses, one item per training product (a random row of it each epoch)."""

    name, schema, default_config = "cmr", RetrievalConfig, "configs/retrieval.yaml"
    model_cls = FineRetrievalModel

    def train_set(self, heldout: tuple[list[int] | None, list[int] | None]) -> FashionGenCMRTrainDataset:
        cfg = self.cfg
        dataset = FashionGenCMRTrainDataset(
            self.train_split, self.tokenizer, image_res=cfg.model.vision.image_res,
            randaugment_magnitude=cfg.data.randaugment_magnitude, products=heldout[0], seed=cfg.runtime.seed,
            max_length=cfg.data.max_words, legacy_tokenization=cfg.compat.is_compat("text_layout"))
        self.check_fits(len(dataset), f"products of {self.train_split.h5_path}", heldout)
        return dataset
