"""The Fashion-FINE-on-BLIP run behind `train_blip.py`: annotation data, the BLIP-variant model of one stage,
the engine's training loop with held-out (or test) selection, and the final evaluation (fine-model.md §5).

Evaluation is the published one (full protocol, each query's top `k_test` scores kept, BLIP `r_mean`) and,
with `eval.protocol: both`, the sampled protocol from the same embeddings, through `evaluation.cmr`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from datasets.fashiongen import load_or_create_heldout_products, remaining_products
from datasets.fashiongen_blip import (
    BlipCaptions,
    BlipEvalSet,
    BlipTrainAnnotation,
    FashionGenBlipTrainDataset,
    load_blip_tokenizer,
)
from engine import distributed as du
from engine.logger import get_logger
from engine.precision import resolve_precision
from engine.run import start_run
from evaluation.cmr import CMROptions, CMRResult, evaluate_cmr
from models.blip_retrieval import FineBlipRetrieval
from models.checkpoint_keys import load_blip_checkpoint
from tasks.blip_schema import BlipEvalConfig, BlipRetrievalConfig
from tasks.cmr_eval import TEST_SELECTION_WARNING, CMREvaluator, report_test
from tasks.fine_common import check_queue_size, extract, train_select_report

HELDOUT_FILE = "blip_heldout_products.json"


class BlipCMREvaluator(CMREvaluator):
    """`CMREvaluator` over a `BlipEvalSet`: texts embedded with the set's sign layout, the full protocol
    scored the BLIP way (top `k_test` per query, `r_mean` = mean of the two directions' means), the sampled
    protocol as for the ALBEF variant."""

    eval_set: BlipEvalSet

    def __init__(self, eval_set: BlipEvalSet, cfg: BlipEvalConfig, **kwargs: Any) -> None:
        super().__init__(eval_set, cfg, **kwargs)  # type: ignore[arg-type]
        self.k_test = cfg.k_test

    def embed(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        model.eval()
        has_sign = self.eval_set.text_has_sign
        image_emb = extract(self.images, lambda b: model.encode_image(b["image"]), self.device, self.precision)
        text_emb = extract(self.texts, lambda b: model.encode_text(b["input_ids"], b["attention_mask"], has_sign),
                           self.device, self.precision)
        return text_emb, image_emb

    def run(self, model: nn.Module) -> CMRResult:
        text_emb, image_emb = self.embed(model)
        rows, protocol = self.eval_set.product_rows, self.options.protocol
        common: dict[str, Any] = dict(text_emb=text_emb, image_emb=image_emb, device=self.device,
                                      chunk_size=self.chunk_size)
        parts = []
        if protocol in ("full", "both"):
            parts.append(evaluate_cmr(rows, options=CMROptions(protocol="full", blip=True, k_test=self.k_test),
                                      **common))
        if protocol in ("sampled", "both"):
            options = CMROptions(protocol="sampled", sampled=self.options.sampled)
            parts.append(evaluate_cmr(rows, self.eval_set.row_subcategory, options=options,
                                      sampled_sets=self.provider, product_ids=self.eval_set.product_ids, **common))
        metrics, record, ranks = {}, {}, {}
        for part in parts:
            metrics |= part.metrics
            record |= part.options
            ranks |= part.ranks
        record["protocol"] = protocol
        record["blip"] = True
        return CMRResult(metrics, record, ranks)


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
                                sets_dir=output_dir / "eval_sets")

    def test_set(self) -> BlipEvalSet:
        return BlipEvalSet.from_test_annotation(
            self.annotation(self.cfg.data.test_annotation), self.image_root, self.captions,
            image_res=self.cfg.model.vision.image_res, info_data=self.root / "validation" / "info_data.json")


def build_model(cfg: BlipRetrievalConfig, tokenizer: Any) -> FineBlipRetrieval:
    model = FineBlipRetrieval(cfg.model, cfg.loss, cfg.compat, vocab_size=len(tokenizer),
                              sep_token_id=tokenizer.sep_token_id, enc_token_id=tokenizer.enc_token_id)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    get_logger().info("Fashion-FINE on BLIP, stage %d: %.1fM trainable parameters, vocabulary %d",
                      cfg.model.stage, trainable / 1e6, len(tokenizer))
    return model


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


def heldout_split(cfg: BlipRetrievalConfig, annotation: BlipTrainAnnotation,
                  output_dir: Path) -> tuple[list[int] | None, list[int] | None]:
    """(training products, held-out products) by dense id; (None = all, None) with `select_on: test | none`."""
    if cfg.data.select_on != "heldout":
        if cfg.data.select_on == "test":
            get_logger().warning(TEST_SELECTION_WARNING)
        return None, None
    ids = annotation.image_ids if all(isinstance(i, int) for i in annotation.image_ids) else None
    heldout = None
    if du.is_main_process():
        heldout = load_or_create_heldout_products(output_dir / "eval_sets" / HELDOUT_FILE, annotation.num_products,
                                                  cfg.data.heldout_products, cfg.data.heldout_seed, ids)
    heldout = du.broadcast_object(heldout)
    return remaining_products(annotation.num_products, heldout), heldout


def run_blip(args: Any, cfg: BlipRetrievalConfig) -> int:
    """Train one stage (or with `--evaluate` only evaluate) of Fashion-FINE on BLIP."""
    output_dir = Path(args.output_dir or cfg.output_dir)
    info = start_run(cfg.runtime, output_dir, cfg)
    precision = resolve_precision(cfg.train.precision, info.device)
    sign_tokens = not cfg.compat.is_compat("blip_sign_token")
    tokenizer = load_blip_tokenizer(cfg.data.tokenizer, sign_tokens=sign_tokens)
    data = BlipData(cfg, BlipCaptions(tokenizer, max_words=cfg.data.max_words, max_length=cfg.data.max_length,
                                      sign_tokens=sign_tokens))
    model = build_model(cfg, tokenizer)
    test_eval = data.evaluator(data.test_set(), "test", output_dir, info.device, precision)
    checkpoint = args.checkpoint or cfg.checkpoint
    if args.evaluate:
        if not checkpoint:
            raise FileNotFoundError("--evaluate needs --checkpoint <weights> (e.g. fashionfine_blip_3modules.pth)")
        load_blip_checkpoint(model, checkpoint, strict=True)
        report_test(test_eval, model.to(info.device), output_dir, {"checkpoint": checkpoint})
        return 0

    check_queue_size(cfg.model.queue_size, cfg.data.batch_size * info.world_size)
    if checkpoint:
        load_blip_checkpoint(model, checkpoint)
    else:
        get_logger().warning("no --checkpoint given: training from randomly initialised encoders")
    annotation = BlipTrainAnnotation.load(data.annotation(cfg.data.train_annotation), data.root)
    if cfg.model.stage == 1:
        annotation.require_signs()
    train_products, heldout = heldout_split(cfg, annotation, output_dir)
    dataset = FashionGenBlipTrainDataset(annotation, data.image_root, data.captions,
                                         image_res=cfg.model.vision.image_res,
                                         randaugment_magnitude=cfg.data.randaugment_magnitude,
                                         records=annotation.records_of(train_products), seed=cfg.runtime.seed)
    select: BlipCMREvaluator | None = test_eval if cfg.data.select_on == "test" else None
    if heldout is not None:
        heldout_set = BlipEvalSet.from_train_products(annotation, heldout, data.image_root, data.captions,
                                                      image_res=cfg.model.vision.image_res,
                                                      info_data=data.root / "train" / "info_data.json")
        select = data.evaluator(heldout_set, "heldout", output_dir, info.device, precision)
    train_select_report(resolve_schedule(cfg), info, output_dir, model, dataset, select, args.resume,
                        lambda module, extra: report_test(test_eval, module, output_dir, extra))
    return 0
