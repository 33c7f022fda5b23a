"""The Fashion-FINE-on-BLIP task behind `train_blip.py`: annotation data, the BLIP-variant model of one stage,
training with held-out (or test) selection, and the final evaluation.

Evaluation is the published one (full protocol, each query's top `k_test` scores kept, BLIP `r_mean`) and,
with `eval.protocol: both`, the sampled protocol from the same embeddings, through `evaluation.cmr`.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from datasets.fashiongen_blip import (
    BlipCaptions,
    BlipEvalSet,
    BlipTrainAnnotation,
    FashionGenBlipTrainDataset,
    blip_tokenizer_from_vocab,
    load_blip_tokenizer,
    load_image,
)
from datasets.heldout import check_batch_fits, fingerprint_of, load_or_create_heldout
from engine.config import check_select_metric
from engine.logger import get_logger
from engine.sections import require_device
from evaluation.cmr import CMROptions, CMRResult, evaluate_cmr, metric_names
from models.fine_blip import FineBlipRetrieval
from tasks.base import RunRequest
from tasks.blip_schema import BlipEvalConfig, BlipRetrievalConfig
from tasks.cmr_eval import TEST_SELECTION_WARNING, CMREvaluator
from tasks.fine_common import FineTask, extract, fine_model, optimizer_and_schedule
from tasks.published_flags import BLIP_FLAGS
from tasks.views import CMRMedia

HELDOUT_FILE = "blip_heldout_products.json"


class BlipCMREvaluator(CMREvaluator):
    """`CMREvaluator` over a `BlipEvalSet`: texts embedded with the set's sign layout, the full protocol
    scored the BLIP way (top `k_test` per query, `r_mean` = mean of the two directions' means), the sampled
    protocol as for the ALBEF variant."""

    eval_set: BlipEvalSet
    supports_rerank = False  # eval.rerank_k: the ALBEF variant only

    def __init__(self, eval_set: BlipEvalSet, cfg: BlipEvalConfig, **kwargs: Any) -> None:
        super().__init__(eval_set, cfg, **kwargs)  # type: ignore[arg-type]
        self.k_test = cfg.k_test

    def embed(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        model.eval()
        has_sign = self.eval_set.text_has_sign
        image_emb = extract(self.images, lambda b: model.encode_image(b["image"]), self.device, self.precision,
                            progress_bar=self.progress_bar, desc=f"{self.name} images")
        text_emb = extract(self.texts, lambda b: model.encode_text(b["input_ids"], b["attention_mask"], has_sign),
                           self.device, self.precision, progress_bar=self.progress_bar, desc=f"{self.name} texts")
        return text_emb, image_emb

    def run(self, model: nn.Module) -> CMRResult:
        text_emb, image_emb = self.embed(model)
        rows, protocol = self.eval_set.product_rows, self.options.protocol
        common: dict[str, Any] = dict(text_emb=text_emb, image_emb=image_emb, device=self.device,
                                      chunk_size=self.chunk_size)
        parts = []
        if protocol in ("full", "both"):
            parts.append(evaluate_cmr(rows, options=CMROptions(protocol="full", blip=True, k_test=self.k_test),
                                      top_k=self.top_k, **common))
        if protocol in ("sampled", "both"):
            options = CMROptions(protocol="sampled", sampled=self.options.sampled)
            parts.append(evaluate_cmr(rows, self.eval_set.row_subcategory, options=options,
                                      sampled_sets=self.provider, product_ids=self.eval_set.product_ids, **common))
        metrics, record, ranks, top = {}, {}, {}, {}
        for part in parts:
            metrics |= part.metrics
            record |= part.options
            ranks |= part.ranks
            top |= part.top
        record["protocol"] = protocol
        record["blip"] = True
        return CMRResult(metrics, record, ranks, top)

    def media(self) -> CMRMedia:
        """Ids (product ids when the image names carry them, else positions; image file names) and readers."""
        s = self.eval_set
        products = s.product_ids if s.product_ids is not None else list(range(s.num_products))
        return CMRMedia(products, s.image_names, lambda i: load_image(s.images.image_root / s.image_names[i],
                                                                      s.source), lambda p: s.texts.captions[p])


@dataclasses.dataclass
class BlipData:
    """Paths and text processing of a run."""

    cfg: BlipRetrievalConfig
    captions: BlipCaptions

    @property
    def root(self) -> Path:
        return Path(self.cfg.data.root)

    def annotation(self, name: str) -> Path:
        return self.root / self.cfg.data.annotation_dir / name

    @property
    def image_root(self) -> Path:
        return self.root / self.cfg.data.image_dir

    def evaluator(self, eval_set: BlipEvalSet, name: str, output_dir: Path, device: torch.device,
                  precision: str) -> BlipCMREvaluator:
        return BlipCMREvaluator(eval_set, self.cfg.eval, name=name, batch_size=self.cfg.data.eval_batch_size,
                                num_workers=self.cfg.runtime.num_workers, device=device, precision=precision,
                                output_dir=output_dir, progress_bar=self.cfg.train.progress_bar)

    def test_set(self) -> BlipEvalSet:
        return BlipEvalSet.from_test_annotation(
            self.annotation(self.cfg.data.test_annotation), self.image_root, self.captions,
            image_res=self.cfg.model.vision.image_res, info_data=self.root / "validation" / "info_data.json")


def resolve_schedule(cfg: BlipRetrievalConfig) -> BlipRetrievalConfig:
    """`compat.blip_stage1_schedule`: compat keeps `train.schedule_epochs` (published: a 20-epoch cosine of
    which 5 epochs run); fixed makes the cosine span the epochs that run."""
    train = cfg.train
    if train.schedule_epochs is None or train.schedule_epochs == train.epochs:
        return cfg
    if cfg.compat.is_compat("blip_stage1_schedule"):
        get_logger().info("lr schedule spans %d epochs, the loop stops after %d (published stage 1)",
                          train.schedule_epochs, train.epochs)
        return cfg
    get_logger().info("lr schedule spans the %d epochs that run (train.schedule_epochs %d applies only with "
                      "compat.blip_stage1_schedule: compat)", train.epochs, train.schedule_epochs)
    return dataclasses.replace(cfg, train=dataclasses.replace(train, schedule_epochs=None))


def uses_sign_tokens(cfg: BlipRetrievalConfig) -> bool:
    """Fixed sign mode: the nine signs are single tokens (compat: the published words)."""
    return not cfg.compat.is_compat("blip_sign_token")


def heldout_split(cfg: BlipRetrievalConfig, annotation: BlipTrainAnnotation,
                  output_dir: Path) -> tuple[list[int] | None, list[int] | None]:
    """(training products, held-out products) by dense id; (None = all, None) with `select_on: test | none`."""
    if cfg.data.select_on != "heldout":
        if cfg.data.select_on == "test":
            get_logger().warning(TEST_SELECTION_WARNING)
        return None, None
    ids = annotation.image_ids
    split = load_or_create_heldout(output_dir / "eval_sets" / HELDOUT_FILE, annotation.num_products,
                                   kind="blip-train-image-ids", fingerprint=fingerprint_of(ids),
                                   count=cfg.data.heldout_products, seed=cfg.data.heldout_seed, labels=ids)
    return split.train, split.heldout


class FineBlipTask(FineTask):
    """One stage of Fashion-FINE-on-BLIP fine-tuning (or, with `--evaluate`, the published evaluation)."""

    name, schema, default_config = "fine_blip", BlipRetrievalConfig, "configs/blip/retrieval_fashionfine_2.yaml"
    weight_family = "blip"
    published_flags = BLIP_FLAGS
    cfg: BlipRetrievalConfig

    @classmethod
    def selection_metrics(cls, cfg: BlipRetrievalConfig) -> tuple[str, ...]:
        """The metrics the selection evaluation returns (what train.select_metric may name); none with
        `data.select_on: none`."""
        return () if cfg.data.select_on == "none" else metric_names(cfg.eval.protocol, blip=True)

    @classmethod
    def check_inputs(cls, cfg: BlipRetrievalConfig, request: RunRequest) -> None:
        """Device and selection metric (from the config alone), then weights and tokenizer."""
        require_device(cfg.runtime.device)
        if not request.evaluate and cfg.data.select_on != "none":
            check_select_metric(cfg.train.select_metric, cls.selection_metrics(cfg),
                                f"the BLIP-variant CMR evaluation (eval.protocol {cfg.eval.protocol})")
        super().check_inputs(cfg, request)

    @cached_property
    def sign_tokens(self) -> bool:
        return uses_sign_tokens(self.cfg)

    @cached_property
    def tokenizer(self) -> Any:
        return load_blip_tokenizer(self.cfg.data.tokenizer, sign_tokens=self.sign_tokens)

    @cached_property
    def data(self) -> BlipData:
        cfg = self.cfg
        return BlipData(cfg, BlipCaptions(self.tokenizer, max_words=cfg.data.max_words,
                                          max_length=cfg.data.max_length, sign_tokens=self.sign_tokens))

    @cached_property
    def annotation(self) -> BlipTrainAnnotation:
        annotation = BlipTrainAnnotation.load(self.data.annotation(self.cfg.data.train_annotation), self.data.root)
        if self.cfg.model.stage == 1:
            annotation.require_signs()
        return annotation

    def build_model(self) -> FineBlipRetrieval:
        get_logger().info("Fashion-FINE on BLIP, stage %d", self.cfg.model.stage)
        return self.inference_model(self.cfg, self.tokenizer)

    @classmethod
    def inference_model(cls, cfg: BlipRetrievalConfig, tokenizer: Any) -> FineBlipRetrieval:
        return fine_model(FineBlipRetrieval, cfg, tokenizer, enc_token_id=tokenizer.enc_token_id)

    @classmethod
    def inference_tokenizer(cls, cfg: BlipRetrievalConfig, vocab: dict[str, int] | None, source: str) -> Any:
        return blip_tokenizer_from_vocab(vocab or {}, source, sign_tokens=uses_sign_tokens(cfg))

    @classmethod
    def text_card(cls, cfg: BlipRetrievalConfig) -> dict[str, Any]:
        """BLIP cleaner; a leading sign name is the [xxx_sign] token in fixed sign mode (stripped from evaluation
        queries), plain words in compat (kept)."""
        return {"prefix": "", "cleaner": "pre_caption_blip", "max_words": cfg.data.max_words,
                "max_length": cfg.data.max_length, "add_sep": True,
                "sign_prefix": "stripped" if uses_sign_tokens(cfg) else "words"}

    @cached_property
    def test_evaluator(self) -> BlipCMREvaluator:
        return self.data.evaluator(self.data.test_set(), "test", self.run.output_dir, self.run.device,
                                   self.run.precision)

    def final_report(self) -> BlipCMREvaluator:
        self.test_evaluator.view = self.final_view()
        return self.test_evaluator

    def heldout_split(self) -> tuple[list[int] | None, list[int] | None]:
        return heldout_split(self.cfg, self.annotation, self.run.output_dir)

    def train_set(self, heldout: tuple[list[int] | None, list[int] | None]) -> FashionGenBlipTrainDataset:
        cfg, data = self.cfg, self.data
        dataset = FashionGenBlipTrainDataset(self.annotation, data.image_root, data.captions,
                                             image_res=cfg.model.vision.image_res,
                                             randaugment_magnitude=cfg.data.randaugment_magnitude,
                                             records=self.annotation.records_of(heldout[0]), seed=cfg.runtime.seed)
        held = f"{len(heldout[1])} products" if heldout[1] else ""
        check_batch_fits(len(dataset), cfg.data.batch_size, self.run.info.world_size,
                         f"records of {data.annotation(cfg.data.train_annotation)}", held)
        return dataset

    def selection_evaluator(self, heldout: tuple[list[int] | None, list[int] | None]) -> BlipCMREvaluator | None:
        cfg, data, run = self.cfg, self.data, self.run
        if heldout[1] is None:
            return self.test_evaluator if cfg.data.select_on == "test" else None
        heldout_set = BlipEvalSet.from_train_products(self.annotation, heldout[1], data.image_root, data.captions,
                                                      image_res=cfg.model.vision.image_res,
                                                      info_data=data.root / "train" / "info_data.json")
        return data.evaluator(heldout_set, "heldout", run.output_dir, run.device, run.precision)

    def optimizer(self, model: nn.Module, iters_per_epoch: int) -> tuple[torch.optim.Optimizer, Any]:
        cfg = resolve_schedule(self.cfg)
        return optimizer_and_schedule(model, cfg.optim, cfg.schedule, cfg.compat,
                                      cfg.train.schedule_epochs or cfg.train.epochs, iters_per_epoch)
