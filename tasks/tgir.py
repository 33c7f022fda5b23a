"""The FashionIQ text-guided image retrieval task behind `tgir.py`: data, model, training with held-out (or
val) selection, and the per-category evaluation (table + JSON, `results_val.json`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from datasets.fashioniq import (
    HELDOUT_FILENAME,
    FashionIQLayout,
    GalleryImageDataset,
    TGIRQueryDataset,
    TGIRTrainDataset,
    Triplet,
    check_merged_caption_file,
    load_image,
    load_or_create_heldout_triplets,
    read_caption_file,
    read_image_split,
)
from datasets.heldout import check_batch_fits
from datasets.text import TGIR_PREFIX, load_tokenizer
from datasets.transforms import TestTransform, TrainTransform
from engine import distributed as du
from engine.config import check_select_metric
from engine.data import build_eval_loader
from engine.logger import get_logger
from engine.sections import require_device
from evaluation.tgir import (
    QuerySet,
    TGIROptions,
    build_gallery,
    evaluate_tgir,
    format_tgir_table,
    metric_names,
    write_tgir_report,
)
from models.fine_tgir import FineTGIRModel
from tasks.base import RunRequest
from tasks.fine_common import FineTask, SelectionEvaluator, extract, fine_model
from tasks.fine_schema import TGIRConfig
from tasks.published_flags import TGIR_FLAGS
from tasks.views import TGIRSetMedia, ViewOptions, write_tgir_views

VAL_SELECTION_WARNING = "model selection on FashionIQ val, the reported split; numbers are not a clean test estimate"


class TGIREvaluator(SelectionEvaluator):
    """Embeds the galleries once (the union of their images) and the queries of each set, then ranks."""

    reported_split, reported_warning = "val", VAL_SELECTION_WARNING
    view = ViewOptions()  # what the final report writes besides results_val.json (tasks.views)
    top_k = 0  # the top-K lists `run` keeps (the final report's only)

    def __init__(self, sets: Mapping[str, tuple[TGIRQueryDataset, list[str]]], layout: FashionIQLayout,
                 options: TGIROptions, *, image_res: int, batch_size: int, num_workers: int, device: torch.device,
                 precision: str, chunk_size: int | None, name: str, output_dir: Path, progress_bar: bool) -> None:
        self.sets, self.options, self.name, self.output_dir = dict(sets), options, name, Path(output_dir)
        self.batch_size, self.workers, self.device, self.precision = batch_size, num_workers, device, precision
        self.chunk_size, self.progress_bar = chunk_size, progress_bar
        names = sorted({n for _, gallery in self.sets.values() for n in gallery})
        self.gallery = GalleryImageDataset(names, layout, TestTransform(image_res), source=f"{name} gallery")

    def run(self, model: nn.Module) -> Any:
        model.eval()
        loader = build_eval_loader(self.gallery, self.batch_size, self.workers)
        gallery_emb = extract(loader, lambda b: model.encode_image(b["image"]), self.device, self.precision,
                              progress_bar=self.progress_bar, desc=f"{self.name} gallery")
        by_name = dict(zip(self.gallery.names, gallery_emb))
        query_sets = {}
        for set_name, (queries, gallery_names) in self.sets.items():
            loader = build_eval_loader(queries, self.batch_size, self.workers)
            query_emb = extract(loader, lambda b: model.encode_query(b["input_ids"], b["attention_mask"],
                                                                     b["ref_image"]), self.device, self.precision,
                                progress_bar=self.progress_bar, desc=f"{self.name} {set_name} queries")
            query_sets[set_name] = QuerySet(query_emb, queries.reference_names, queries.target_names,
                                            gallery_names, by_name)
        return evaluate_tgir(query_sets, self.options, device=self.device, chunk_size=self.chunk_size,
                             top_k=self.top_k)

    def media(self) -> dict[str, TGIRSetMedia]:
        """Each query set's triplets and gallery names, and the FashionIQ image reader."""
        layout = self.gallery.layout
        return {name: TGIRSetMedia(queries.triplets, gallery, lambda n: load_image(layout.image_path(n)))
                for name, (queries, gallery) in self.sets.items()}

    def report(self, model: nn.Module, extra: dict) -> dict[str, float]:
        """Evaluate once, print the table and write `results_val.json` (rank 0)."""
        if not du.is_main_process():
            return {}
        self.top_k = self.view.topk
        try:
            result = self.run(model)
        finally:
            self.top_k = 0
        path = write_tgir_report(self.output_dir / "results_val.json", result, extra=extra)
        write_tgir_views(self.output_dir, self.name, result.top, self.media(), self.view,
                         f"FashionIQ {self.name}: text-guided image retrieval")
        get_logger().info("FashionIQ val (gallery: %s, exclude_reference: %s):\n%s\nwritten to %s",
                          self.options.gallery, self.options.exclude_reference,
                          format_tgir_table(result.metrics, list(self.sets)), path)
        return result.metrics


def val_sets(cfg: TGIRConfig, layout: FashionIQLayout, tokenizer: Any, add_sep: bool,
             image_res: int) -> dict[str, tuple[TGIRQueryDataset, list[str]]]:
    """Per-category val query sets with their galleries (`eval.gallery`: triplet images or split files)."""
    sets = {}
    for category in cfg.eval.categories:
        triplets = read_caption_file(layout, category, "val")
        split_names = read_image_split(layout, category, "val") if cfg.eval.gallery == "split" else None
        queries = TGIRQueryDataset(triplets, layout, tokenizer, TestTransform(image_res),
                                   max_length=cfg.data.max_words, add_sep=add_sep)
        gallery = build_gallery(cfg.eval.gallery, queries.reference_names, queries.target_names, split_names,
                                source=str(layout.caption_path(category, "val")))
        sets[category] = (queries, gallery)
    return sets


def heldout_set(cfg: TGIRConfig, triplets: Sequence[Triplet], indices: list[int], layout: FashionIQLayout,
                tokenizer: Any, add_sep: bool, image_res: int) -> dict[str, tuple[TGIRQueryDataset, list[str]]]:
    """The held-out training triplets as one query set; gallery = their images (no split file exists)."""
    queries = TGIRQueryDataset(triplets, layout, tokenizer, TestTransform(image_res), max_length=cfg.data.max_words,
                               add_sep=add_sep, indices=indices)
    return {"heldout": (queries, build_gallery("triplets", queries.reference_names, queries.target_names))}


class TGIRTask(FineTask):
    """Fine-tune (or with `--evaluate` only evaluate) the TGIR model on FashionIQ."""

    name, schema, default_config = "tgir", TGIRConfig, "configs/tgir.yaml"
    queue_images_per_sample = 2  # the image queue takes targets and references
    published_flags = TGIR_FLAGS
    cfg: TGIRConfig

    @classmethod
    def selection_metrics(cls, cfg: TGIRConfig) -> tuple[str, ...]:
        """The metrics the selection evaluation returns (what train.select_metric may name)."""
        return metric_names(["heldout"] if cfg.data.select_on == "heldout" else cfg.eval.categories)

    @classmethod
    def check_inputs(cls, cfg: TGIRConfig, request: RunRequest) -> None:
        """Device, selection metric, weights, tokenizer, the FashionIQ folders and the merged caption files the
        run reads (not stale), before anything is built."""
        require_device(cfg.runtime.device)
        if not request.evaluate:
            check_select_metric(cfg.train.select_metric, cls.selection_metrics(cfg),
                                f"the FashionIQ evaluation (data.select_on {cfg.data.select_on})")
        super().check_inputs(cfg, request)
        layout = FashionIQLayout.open(cfg.data.root, cfg.data.image_dir, cfg.data.image_ext)
        if not request.evaluate and cfg.data.train_class == "all":
            check_merged_caption_file(layout, "train")
        if "all" in cfg.eval.categories:
            check_merged_caption_file(layout, "val")

    @cached_property
    def layout(self) -> FashionIQLayout:
        data = self.cfg.data
        return FashionIQLayout.open(data.root, data.image_dir, data.image_ext)

    @cached_property
    def tokenizer(self) -> Any:
        return load_tokenizer(self.cfg.data.tokenizer)

    @cached_property
    def triplets(self) -> list[Triplet]:
        return read_caption_file(self.layout, self.cfg.data.train_class, "train")

    @property
    def add_sep(self) -> bool:
        return not self.cfg.compat.is_compat("text_layout")  # train and eval texts are built alike either way

    def evaluator(self, sets: Mapping[str, tuple[TGIRQueryDataset, list[str]]], options: TGIROptions,
                  name: str) -> TGIREvaluator:
        cfg, run = self.cfg, self.run
        return TGIREvaluator(sets, self.layout, options, name=name, image_res=cfg.model.vision.image_res,
                             batch_size=cfg.data.eval_batch_size, num_workers=cfg.runtime.num_workers,
                             device=run.device, precision=run.precision, chunk_size=cfg.eval.chunk_size,
                             output_dir=run.output_dir, progress_bar=cfg.train.progress_bar)

    def build_model(self) -> nn.Module:
        return self.inference_model(self.cfg, self.tokenizer)

    text_prefix = TGIR_PREFIX

    @classmethod
    def inference_model(cls, cfg: TGIRConfig, tokenizer: Any) -> nn.Module:
        return fine_model(FineTGIRModel, cfg, tokenizer)

    @classmethod
    def text_card(cls, cfg: TGIRConfig) -> dict[str, Any]:
        """Relative captions joined with ' and ' after the prefix; the published layout has no [SEP]."""
        return {"prefix": TGIR_PREFIX, "cleaner": "pre_caption", "join": " and ", "max_length": cfg.data.max_words,
                "add_sep": not cfg.compat.is_compat("text_layout"), "sign_prefix": None}

    @cached_property
    def val_evaluator(self) -> TGIREvaluator:
        cfg = self.cfg
        options = TGIROptions(gallery=cfg.eval.gallery, exclude_reference=cfg.eval.exclude_reference)
        sets = val_sets(cfg, self.layout, self.tokenizer, self.add_sep, cfg.model.vision.image_res)
        return self.evaluator(sets, options, "val")

    def final_report(self) -> TGIREvaluator:
        self.val_evaluator.view = self.final_view()
        return self.val_evaluator

    def heldout_split(self) -> Any:
        """Held-out training triplets (`select_on: heldout`), or None when selecting on val."""
        data = self.cfg.data
        if data.select_on != "heldout":
            get_logger().warning(VAL_SELECTION_WARNING)
            return None
        path = self.run.output_dir / "eval_sets" / HELDOUT_FILENAME
        return load_or_create_heldout_triplets(path, self.triplets, data.heldout_fraction, data.heldout_seed)

    def train_set(self, heldout: Any) -> TGIRTrainDataset:
        cfg = self.cfg
        dataset = TGIRTrainDataset(self.triplets, self.layout, self.tokenizer,
                                   TrainTransform(cfg.model.vision.image_res, cfg.data.randaugment_magnitude),
                                   max_length=cfg.data.max_words, add_sep=self.add_sep, seed=cfg.runtime.seed,
                                   indices=heldout.train if heldout is not None else None)
        held = f"{len(heldout.heldout)} triplets" if heldout is not None else ""
        check_batch_fits(len(dataset), cfg.data.batch_size, self.run.info.world_size,
                         f"triplets of {self.layout.caption_path(cfg.data.train_class, 'train')}", held)
        return dataset

    def selection_evaluator(self, heldout: Any) -> TGIREvaluator:
        if heldout is None:
            return self.val_evaluator
        cfg = self.cfg
        sets = heldout_set(cfg, self.triplets, heldout.heldout, self.layout, self.tokenizer, self.add_sep,
                           cfg.model.vision.image_res)
        return self.evaluator(sets, TGIROptions("triplets", cfg.eval.exclude_reference), "heldout")
