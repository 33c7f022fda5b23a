"""FashionGen CMR evaluation inside training and at the end: features once per model, both protocols,
held-out or test selection, table and JSON report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader

from datasets.fashiongen import HELDOUT_FILENAME, HELDOUT_KIND, FashionGenEvalSet, FashionGenSplit
from datasets.heldout import fingerprint_of, load_or_create_heldout
from engine import distributed as du
from engine.config import ConfigError
from engine.data import build_eval_loader, move_to_device
from engine.logger import get_logger
from engine.precision import autocast
from engine.progress import track
from evaluation.cmr import (
    CMROptions,
    CMRResult,
    SampledOptions,
    SampledSetProvider,
    evaluate_cmr,
    format_cmr_table,
    write_cmr_report,
)
from tasks.fine_common import SelectionEvaluator, extract
from tasks.fine_schema import CMREvalConfig, FashionGenDataConfig
from tasks.views import CMRMedia, ViewOptions, write_cmr_views

TEST_SELECTION_WARNING = "model selection on the test split; numbers are not a clean test estimate"


def stored_dtype(precision: str) -> torch.dtype:
    """The dtype cached states are kept in: the autocast dtype (half the memory of fp32), else fp32."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


@torch.no_grad()
def extract_states(loader: DataLoader, encode: Callable[[dict], tuple[torch.Tensor, ...]], device: torch.device,
                   precision: str, *, progress_bar: bool, desc: str) -> tuple[torch.Tensor, ...]:
    """`encode` over every batch (under the run's precision) into tensors preallocated on `device` for the whole
    set: the first output (the embedding) in fp32, the others in `stored_dtype` (masks and ids as they are)."""
    total = len(loader.dataset)  # type: ignore[arg-type]
    outs: list[torch.Tensor] = []
    start = 0
    for batch in track(loader, desc, progress_bar, unit="batch"):
        batch = move_to_device(batch, device)
        with autocast(precision, device):
            parts = encode(batch)
        if not outs:
            dtypes = [torch.float32] + [p.dtype if not p.is_floating_point() else stored_dtype(precision)
                                        for p in parts[1:]]
            outs = [torch.empty(total, *p.shape[1:], dtype=dt, device=device) for p, dt in zip(parts, dtypes)]
        end = start + parts[0].shape[0]
        for out, part in zip(outs, parts):
            out[start:end] = part
        start = end
    if start != total:
        raise RuntimeError(f"{desc}: the loader gave {start} items for a set of {total}")
    return tuple(outs)


class ITMScorer:
    """`evaluation.cmr.PairScorer` over cached image tokens and text states: `model.itm_scores` on `batch_size`
    pairs per forward, the pairs taken shortest text first so that each forward is cut to its longest text
    (padding is masked out, so the cut does not change a score beyond float rounding)."""

    def __init__(self, model: nn.Module, image_tokens: torch.Tensor, text_states: torch.Tensor,
                 text_mask: torch.Tensor, *, batch_size: int, device: torch.device, precision: str,
                 progress_bar: bool = False) -> None:
        self.model, self.image_tokens, self.text_states, self.text_mask = model, image_tokens, text_states, text_mask
        self.batch_size, self.device, self.precision, self.progress_bar = batch_size, device, precision, progress_bar
        positions = torch.arange(1, text_mask.shape[1] + 1, device=text_mask.device)
        self.text_end = (text_mask.bool() * positions).amax(1).cpu()  # 1 + last attended position of each text

    @torch.no_grad()
    def __call__(self, texts: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        texts, rows = texts.cpu(), rows.cpu()
        order = torch.sort(self.text_end[texts], stable=True).indices
        out = torch.empty(texts.numel(), dtype=torch.float32)
        starts = range(0, texts.numel(), self.batch_size)
        for start in track(starts, "ITM re-ranking", self.progress_bar, unit="batch"):
            sel = order[start : start + self.batch_size]
            t, r = texts[sel], rows[sel]
            length = int(self.text_end[t].max())
            t, r = t.to(self.device), r.to(self.device)
            with autocast(self.precision, self.device):
                scores = self.model.itm_scores(self.image_tokens[r], self.text_states[t, :length],
                                               self.text_mask[t, :length])
            out[sel] = scores.float().cpu()
        return out


class CMREvaluator(SelectionEvaluator):
    """Embeds one FashionGen evaluation set with a model and scores the configured protocols (rank 0 only)."""

    reported_split, reported_warning = "test", TEST_SELECTION_WARNING
    view = ViewOptions()  # what the final report writes besides results_test.json (tasks.views)
    top_k = 0  # the top-K lists `run` keeps (the final report's only)
    supports_rerank: ClassVar[bool] = True  # eval.rerank_k (ITM re-ranking of the full protocol)

    def __init__(self, eval_set: FashionGenEvalSet, cfg: CMREvalConfig, *, name: str, batch_size: int,
                 num_workers: int, device: torch.device, precision: str, output_dir: str | Path,
                 progress_bar: bool) -> None:
        self.eval_set, self.name, self.device, self.precision = eval_set, name, device, precision
        self.progress_bar = progress_bar
        self.output_dir = Path(output_dir)
        sampled = cfg.sampled
        if cfg.protocol != "full" and not sampled.neg_len < eval_set.num_products - 1:  # fail before training
            raise ConfigError(f"eval.sampled.neg_len {sampled.neg_len} needs at least {sampled.neg_len + 2} products "
                              f"in the {name} set, which has {eval_set.num_products}; lower eval.sampled.neg_len"
                              + (" or raise data.heldout_products" if name == "heldout" else ""))
        if cfg.rerank_k and not self.supports_rerank:
            raise ConfigError(f"eval.rerank_k: {type(self).__name__} has no ITM re-ranking; set eval.rerank_k: 0")
        self.options = CMROptions(protocol=cfg.protocol, sampled=SampledOptions(
            sets=sampled.sets, seed=sampled.seed, set_len=min(sampled.set_len, eval_set.num_products),
            neg_len=sampled.neg_len, exclude_positive_from_t2i_pool=sampled.exclude_positive_from_t2i_pool),
            rerank_k=cfg.rerank_k)
        self.rerank_batch = cfg.rerank_batch
        sets_name = "fashiongen_sampled" if name == "test" else f"fashiongen_{name}_sampled"  # the published file names
        self.provider = SampledSetProvider(self.options.sampled, directory=self.output_dir / "eval_sets", name=sets_name)
        self.chunk_size = cfg.chunk_size
        self.images = build_eval_loader(eval_set.images, batch_size, num_workers)
        self.texts = build_eval_loader(eval_set.texts, batch_size, num_workers)

    def embed(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """(text embeddings P x D, image embeddings N x D) on the evaluation device."""
        model.eval()
        image_emb = extract(self.images, lambda b: model.encode_image(b["image"]), self.device, self.precision,
                            progress_bar=self.progress_bar, desc=f"{self.name} images")
        text_emb = extract(self.texts, lambda b: model.encode_text(b["input_ids"], b["attention_mask"]),
                           self.device, self.precision, progress_bar=self.progress_bar, desc=f"{self.name} texts")
        return text_emb, image_emb

    def embed_for_rerank(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, ITMScorer]:
        """`embed` keeping the image tokens and text states as well, with the ITM scorer over them."""
        model.eval()
        image_emb, tokens = extract_states(self.images, lambda b: model.encode_image_tokens(b["image"]), self.device,
                                           self.precision, progress_bar=self.progress_bar, desc=f"{self.name} images")
        text_emb, states, mask = extract_states(
            self.texts, lambda b: (*model.encode_text_states(b["input_ids"], b["attention_mask"]), b["attention_mask"]),
            self.device, self.precision, progress_bar=self.progress_bar, desc=f"{self.name} texts")
        scorer = ITMScorer(model, tokens, states, mask, batch_size=self.rerank_batch, device=self.device,
                           precision=self.precision, progress_bar=self.progress_bar)
        return text_emb, image_emb, scorer

    def run(self, model: nn.Module) -> CMRResult:
        scorer = None
        if self.options.rerank_k:
            text_emb, image_emb, scorer = self.embed_for_rerank(model)
        else:
            text_emb, image_emb = self.embed(model)
        return evaluate_cmr(self.eval_set.product_rows, self.eval_set.row_subcategory, text_emb=text_emb,
                            image_emb=image_emb, options=self.options, sampled_sets=self.provider,
                            product_ids=self.eval_set.product_ids, device=self.device, chunk_size=self.chunk_size,
                            top_k=self.top_k, pair_scores=scorer)

    def media(self) -> CMRMedia:
        """Ids (FashionGen product ids, HDF5 rows) and readers of the evaluated images and texts."""
        s = self.eval_set
        return CMRMedia(s.product_ids, s.rows.tolist(), lambda i: s.split.read_image(int(s.rows[i])), s.texts.text)

    def run_with_top(self, model: nn.Module) -> CMRResult:
        """`run` keeping each query's top `view.topk` results."""
        self.top_k = self.view.topk
        try:
            return self.run(model)
        finally:
            self.top_k = 0

    def report(self, model: nn.Module, extra: dict) -> dict[str, float]:
        """Evaluate once, print the paper's table and write `results_test.json` (rank 0), with the top-K files
        and the gallery page of `view` (tasks.views)."""
        if not du.is_main_process():
            return {}
        result = self.run_with_top(model)
        path = write_cmr_report(self.output_dir / "results_test.json", result, extra=extra)
        write_cmr_views(self.output_dir, self.name, result.top, self.media(), self.view,
                        f"FashionGen {self.name} split: cross-modal retrieval")
        get_logger().info("FashionGen %s split (%d products, %d images):\n%s\nwritten to %s", self.name,
                          self.eval_set.num_products, self.eval_set.num_images, format_cmr_table(result.metrics),
                          path)
        return result.metrics


def split_products(data: FashionGenDataConfig, train: FashionGenSplit,
                   output_dir: str | Path) -> tuple[list[int] | None, list[int] | None]:
    """(training products, held-out products) for `select_on: heldout`; (None = all, None) for `test`."""
    if data.select_on == "test":
        get_logger().warning(TEST_SELECTION_WARNING)
        return None, None
    ids = train.product_ids.tolist()
    split = load_or_create_heldout(Path(output_dir) / "eval_sets" / HELDOUT_FILENAME, train.num_products,
                                   kind=HELDOUT_KIND, fingerprint=fingerprint_of(ids), count=data.heldout_products,
                                   seed=data.heldout_seed, labels=ids)
    return split.train, split.heldout


def selection_evaluator(data: FashionGenDataConfig, cfg: CMREvalConfig, tokenizer: Any, image_res: int,
                        train: FashionGenSplit, test: FashionGenSplit, heldout: list[int] | None,
                        output_dir: str | Path, num_workers: int, device: torch.device,
                        precision: str, progress_bar: bool) -> CMREvaluator:
    """The evaluator that selects checkpoints: held-out train products, or the test split (published)."""
    split, products, name = (train, heldout, "heldout") if heldout is not None else (test, None, "test")
    eval_set = FashionGenEvalSet(split, tokenizer, products=products, image_res=image_res,
                                 max_length=data.max_words)
    return CMREvaluator(eval_set, cfg, name=name, batch_size=data.eval_batch_size, num_workers=num_workers,
                        device=device, precision=precision, output_dir=output_dir, progress_bar=progress_bar)


def test_evaluator(data: FashionGenDataConfig, cfg: CMREvalConfig, tokenizer: Any, image_res: int,
                   test: FashionGenSplit, output_dir: str | Path, num_workers: int, device: torch.device,
                   precision: str, progress_bar: bool) -> CMREvaluator:
    """The evaluator over the whole FashionGen validation (= test) split."""
    eval_set = FashionGenEvalSet(test, tokenizer, image_res=image_res, max_length=data.max_words)
    return CMREvaluator(eval_set, cfg, name="test", batch_size=data.eval_batch_size, num_workers=num_workers,
                        device=device, precision=precision, output_dir=output_dir, progress_bar=progress_bar)
