"""The FashionIQ text-guided image retrieval run behind `tgir.py`: data, model, training with held-out (or
val) selection, and the per-category evaluation (table + JSON)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from datasets.fashioniq import (
    FashionIQLayout,
    GalleryImageDataset,
    TGIRQueryDataset,
    TGIRTrainDataset,
    Triplet,
    load_or_create_heldout,
    read_caption_file,
    read_image_split,
)
from datasets.text import load_tokenizer
from datasets.transforms import TestTransform, TrainTransform
from engine import distributed as du
from engine.data import build_eval_loader
from engine.logger import get_logger
from engine.precision import resolve_precision
from engine.run import start_run
from evaluation.tgir import (
    QuerySet,
    TGIROptions,
    build_gallery,
    evaluate_tgir,
    format_tgir_table,
    write_tgir_report,
)
from models.fine_tgir import FineTGIRModel
from tasks.fine_common import (
    SelectionEvaluator,
    build_model,
    check_queue_size,
    extract,
    initialise,
    train_select_report,
)
from tasks.fine_schema import TGIRConfig

VAL_SELECTION_WARNING = "model selection on FashionIQ val, the reported split; numbers are not a clean test estimate"


class TGIREvaluator(SelectionEvaluator):
    """Embeds the galleries once (the union of their images) and the queries of each set, then ranks."""

    reported_split, reported_warning = "val", VAL_SELECTION_WARNING

    def __init__(self, sets: Mapping[str, tuple[TGIRQueryDataset, list[str]]], layout: FashionIQLayout,
                 options: TGIROptions, *, image_res: int, batch_size: int, num_workers: int, device: torch.device,
                 precision: str, chunk_size: int | None, name: str) -> None:
        self.sets, self.options, self.name = dict(sets), options, name
        self.batch_size, self.workers, self.device, self.precision = batch_size, num_workers, device, precision
        self.chunk_size = chunk_size
        names = sorted({n for _, gallery in self.sets.values() for n in gallery})
        self.gallery = GalleryImageDataset(names, layout, TestTransform(image_res), source=f"{name} gallery")

    def run(self, model: nn.Module) -> Any:
        model.eval()
        loader = build_eval_loader(self.gallery, self.batch_size, self.workers)
        gallery_emb = extract(loader, lambda b: model.encode_image(b["image"]), self.device, self.precision)
        by_name = dict(zip(self.gallery.names, gallery_emb))
        query_sets = {}
        for set_name, (queries, gallery_names) in self.sets.items():
            loader = build_eval_loader(queries, self.batch_size, self.workers)
            query_emb = extract(loader, lambda b: model.encode_query(b["input_ids"], b["attention_mask"],
                                                                     b["ref_image"]), self.device, self.precision)
            query_sets[set_name] = QuerySet(query_emb, queries.reference_names, queries.target_names,
                                            gallery_names, by_name)
        return evaluate_tgir(query_sets, self.options, device=self.device, chunk_size=self.chunk_size)


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


def report(evaluator: TGIREvaluator, model: nn.Module, output_dir: Path, extra: dict) -> dict[str, float]:
    """Evaluate on FashionIQ val, print the table and write `results_val.json` (rank 0)."""
    if not du.is_main_process():
        return {}
    result = evaluator.run(model)
    path = write_tgir_report(output_dir / "results_val.json", result, extra=extra)
    get_logger().info("FashionIQ val (gallery: %s, exclude_reference: %s):\n%s\nwritten to %s",
                      evaluator.options.gallery, evaluator.options.exclude_reference,
                      format_tgir_table(result.metrics, list(evaluator.sets)), path)
    return result.metrics


def run_tgir(args: Any, cfg: TGIRConfig) -> int:
    """Fine-tune (or with `--evaluate` only evaluate) the TGIR model on FashionIQ."""
    output_dir = Path(args.output_dir or cfg.output_dir)
    info = start_run(cfg.runtime, output_dir, cfg)
    precision = resolve_precision(cfg.train.precision, info.device)
    data, image_res, workers = cfg.data, cfg.model.vision.image_res, cfg.runtime.num_workers
    checkpoint = args.checkpoint or cfg.checkpoint
    add_sep = not cfg.compat.is_compat("text_layout")  # TGIR train and eval texts are built alike either way

    layout = FashionIQLayout.open(data.root, data.image_dir, data.image_ext)
    tokenizer = load_tokenizer(data.tokenizer)
    model = build_model(FineTGIRModel, cfg.model, cfg.loss, cfg.compat, tokenizer)
    options = TGIROptions(gallery=cfg.eval.gallery, exclude_reference=cfg.eval.exclude_reference)
    common = dict(image_res=image_res, batch_size=data.eval_batch_size, num_workers=workers, device=info.device, precision=precision,
                  chunk_size=cfg.eval.chunk_size)
    val_eval = TGIREvaluator(val_sets(cfg, layout, tokenizer, add_sep, image_res), layout, options, name="val",
                             **common)
    if args.evaluate:
        if not checkpoint:
            raise FileNotFoundError("--evaluate needs --checkpoint <weights> (a fine-tuned or released checkpoint)")
        initialise(model, checkpoint, strict=True)
        report(val_eval, model.to(info.device), output_dir, {"checkpoint": checkpoint})
        return 0

    check_queue_size(cfg.model.queue_size, 2 * data.batch_size * info.world_size)
    initialise(model, checkpoint)
    triplets = read_caption_file(layout, data.train_class, "train")
    train_idx, select = None, val_eval
    if data.select_on == "heldout":
        path = output_dir / "eval_sets" / "fashioniq_heldout.json"
        split = load_or_create_heldout(path, triplets, data.heldout_fraction, data.heldout_seed) \
            if du.is_main_process() else None
        split = du.broadcast_object(split)
        train_idx = split.train_indices
        select = TGIREvaluator(heldout_set(cfg, triplets, split.heldout_indices, layout, tokenizer, add_sep,
                                           image_res), layout, TGIROptions("triplets", cfg.eval.exclude_reference),
                               name="heldout", **common)
    else:
        get_logger().warning(VAL_SELECTION_WARNING)
    dataset = TGIRTrainDataset(triplets, layout, tokenizer, TrainTransform(image_res, data.randaugment_magnitude),
                               max_length=data.max_words, add_sep=add_sep, seed=cfg.runtime.seed, indices=train_idx)
    train_select_report(cfg, info, output_dir, model, dataset, select, args.resume,
                        lambda module, extra: report(val_eval, module, output_dir, extra))
    return 0
