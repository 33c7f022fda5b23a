"""ASEN++ evaluator: embed query/candidate lines (sharded over ranks, gathered), per-attribute MAP
(evaluation.map), the `--test` table/JSON, and embedding arbitrary images for one attribute."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from datasets.asen import AsenImages, AsenLines, AsenSchema, EvalSplit, collate, load_eval_split
from datasets.images import IMAGE_SUFFIXES, image_files
from engine import distributed as du
from engine.atomic import atomic_write
from engine.data import build_eval_loader, move_to_device
from engine.distributed import DistInfo
from engine.errors import DataError
from engine.logger import get_logger
from engine.precision import autocast
from engine.progress import track
from evaluation.map import MapResult, attribute_map
from evaluation.report import format_table, write_report
from tasks.asen_schema import AsenConfig
from tasks.views import AsenMedia

SUMMARY_METRICS = ("map", "map_attr_mean")  # query-weighted total MAP (selects checkpoints) and attribute mean


def attribute_metric(name: str) -> str:
    """The metric key of one attribute's MAP: `map/<name>` (spaces to underscores)."""
    return f"map/{name.replace(' ', '_')}"


def metric_names(schema: AsenSchema) -> tuple[str, ...]:
    """The keys `AsenEvaluator.metrics` can return (an attribute without queries has no `map/<name>`)."""
    return (*SUMMARY_METRICS, *(attribute_metric(n) for n in schema.names))


def _shard(n: int, info: DistInfo) -> list[int]:
    """Positions r, r + W, ... of this rank, padded (with the last position) to ceil(n / W) entries."""
    per_rank = -(-n // info.world_size)
    mine = list(range(info.rank, n, info.world_size))
    return mine + [n - 1] * (per_rank - len(mine))


def _unshard(local: torch.Tensor, n: int, world_size: int) -> torch.Tensor:
    """Inverse of `_shard` after an all-gather: rows back in their original order, padding dropped."""
    full = du.all_gather_nograd(local)
    per_rank = local.shape[0]
    return full.view(world_size, per_rank, *local.shape[1:]).transpose(0, 1).reshape(-1, *local.shape[1:])[:n]


@torch.no_grad()
def embed_dataset(model: nn.Module, dataset: Any, cfg: AsenConfig, info: DistInfo, precision: str,
                  with_parts: bool = False, *, progress_bar: bool, desc: str = "embedding") -> dict[str, torch.Tensor]:
    """Encode every item of `dataset` (this rank's shard), gather all ranks; tensors on this rank's device.
    `progress_bar`: show rank 0's progress (engine.progress)."""
    n = len(dataset)
    positions = _shard(n, info)
    shard = torch.utils.data.Subset(dataset, positions)
    loader = build_eval_loader(shard, cfg.DATA.TEST_BATCHSIZE, cfg.DATA.NUM_WORKERS, collate,
                               pin_memory=info.device.type == "cuda")
    # without SyncBatchNorm every rank keeps its own BN statistics; evaluate rank 0's model everywhere
    du.broadcast_buffers(model)
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in track(loader, desc, progress_bar, unit="batch"):
        batch = move_to_device(batch, info.device)
        with autocast(precision, info.device):
            out = model.encode(batch, with_parts=with_parts)
        for key, value in out.items():
            parts.setdefault(key, []).append(value.float() if value.is_floating_point() else value)
    model.train(was_training)
    return {k: _unshard(torch.cat(v), n, info.world_size) for k, v in parts.items()}


class AsenEvaluator:
    """MAP on the validation (or test) split; callable as the trainer's `evaluate(module, epoch)`."""

    def __init__(self, cfg: AsenConfig, schema: AsenSchema, split: str, info: DistInfo, precision: str, *,
                 progress_bar: bool) -> None:
        self.cfg, self.schema, self.info, self.precision = cfg, schema, info, precision
        self.progress_bar = progress_bar
        self.split: EvalSplit = load_eval_split(cfg.DATA, split, schema)
        s = self.split
        self.name = s.name
        images = AsenImages(s.root, s.images, s.list_path, cfg.INPUT.GLOBAL_SIZE, cfg.INPUT.PIXEL_MEAN,
                            cfg.INPUT.PIXEL_STD, keep_original=cfg.MODEL.LOCAL.ENABLE)
        fids = np.concatenate([s.queries.fid, s.candidates.fid]).tolist()
        attrs = np.concatenate([s.queries.attr, s.candidates.attr]).tolist()
        self.lines = AsenLines(images, fids, attrs)
        self.last: MapResult | None = None
        self._fallbacks_logged = 0
        self.top_k = 0  # the top-K lists `compute` keeps (the `--test` report's)

    def compute(self, model: nn.Module) -> MapResult:
        """Embed all query and candidate lines and rank them."""
        emb = embed_dataset(model, self.lines, self.cfg, self.info, self.precision, progress_bar=self.progress_bar,
                            desc=f"{self.name} lines")["fused"]
        q, c = self.split.queries, self.split.candidates
        nq = len(q)
        t = lambda a: torch.as_tensor(a, dtype=torch.long)  # noqa: E731
        self.last = attribute_map(emb[:nq], t(q.attr), t(q.value), emb[nq:], t(c.attr), t(c.value),
                                  self.schema.num_attributes, chunk_queries=self.cfg.EVAL.CHUNK_QUERIES,
                                  device=self.info.device, top_k=self.top_k)
        return self.last

    def media(self) -> AsenMedia:
        """Image paths, query and candidate lines, attribute names and the image reader of the split."""
        s, images = self.split, self.lines.images
        return AsenMedia(s.images, s.queries.fid.tolist(), s.queries.attr.tolist(), s.queries.value.tolist(),
                         s.candidates.fid.tolist(), self.schema.names, images.load)

    def metrics(self, result: MapResult) -> dict[str, float]:
        """Flat metric dict in percent: `map` (query-weighted total), `map_attr_mean`, `map/<attribute>`."""
        out = dict(zip(SUMMARY_METRICS, (100 * result.total, 100 * result.attribute_mean)))
        for name, value in zip(self.schema.names, result.per_attribute):
            if value is not None:
                out[attribute_metric(name)] = 100 * value
        return out

    def __call__(self, model: nn.Module, epoch: int | None = None) -> dict[str, float]:
        metrics = self.metrics(self.compute(model))
        total = getattr(model, "crop_fallbacks", 0)
        if total > self._fallbacks_logged:
            get_logger().warning("%d local crops (training and evaluation, epoch %s) fell back to the whole image: "
                                 "constant attention map", total - self._fallbacks_logged, epoch)
            self._fallbacks_logged = total
        return metrics

    def table(self, result: MapResult) -> str:
        """The per-attribute MAP table (percent, 4 decimals)."""
        rows: list[list[Any]] = [
            [name, nq, nc, None if v is None else 100 * v]
            for name, nq, nc, v in zip(self.schema.names, result.num_queries, result.num_candidates,
                                       result.per_attribute)
        ]
        rows.append(["total (query-weighted)", sum(result.num_queries), sum(result.num_candidates),
                     100 * result.total])
        rows.append(["attribute mean (secondary)", None, None, 100 * result.attribute_mean])
        return format_table(["attribute", "queries", "candidates", "MAP %"], rows, decimals=4)

    def write(self, result: MapResult, path: str | Path, checkpoint: str) -> Path:
        """Result JSON: metrics plus the protocol options they were computed with."""
        options = {"split": self.split.name, "embedding": "fused" if self.cfg.MODEL.LOCAL.ENABLE else "global",
                   "beta": self.cfg.SOLVER.BETA, "threshold": self.cfg.INPUT.THRESHOLD,
                   "ties": "stable descending sort, lower candidate index first", "total": "query-weighted"}
        per_attr = {name: {"map": None if v is None else 100 * v, "queries": nq, "candidates": nc}
                    for name, v, nq, nc in zip(self.schema.names, result.per_attribute, result.num_queries,
                                               result.num_candidates)}
        return write_report(path, "asen_map", self.metrics(result), options,
                            {"per_attribute": per_attr, "checkpoint": checkpoint})


class FolderImages(torch.utils.data.Dataset):
    """All images under a folder (sorted relative paths), each for one attribute."""

    def __init__(self, folder: str | Path, attr: int, cfg: AsenConfig) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"{folder}: not a folder of images")
        self.paths = image_files(folder)
        if not self.paths:
            raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
        self.images = AsenImages(folder, self.paths, folder, cfg.INPUT.GLOBAL_SIZE, cfg.INPUT.PIXEL_MEAN,
                                 cfg.INPUT.PIXEL_STD, keep_original=cfg.MODEL.LOCAL.ENABLE)
        self.attr = attr

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.images[(index, self.attr)]


def embed_folder(model: nn.Module, folder: str | Path, attribute: str, schema: AsenSchema, cfg: AsenConfig,
                 info: DistInfo, precision: str, out: str | Path, *, progress_bar: bool) -> Path:
    """Write `out` (.npz): paths, attribute, fused/global/local embeddings, attention maps, crop boxes."""
    attr = schema.attribute_index(attribute)
    data = FolderImages(folder, attr, cfg)
    result = embed_dataset(model, data, cfg, info, precision, with_parts=True, progress_bar=progress_bar,
                           desc=f"{Path(folder).name} images")
    out = Path(out)
    if info.is_main:
        arrays = {k: v.cpu().numpy() for k, v in result.items()}
        with atomic_write(out, "wb") as f:  # exactly `out` (np.savez on a name would append .npz)
            np.savez(f, paths=np.array(data.paths), attribute=np.array(schema.names[attr]), **arrays)
        get_logger().info("embedded %d images of %s for attribute %s -> %s (%s)", len(data), folder,
                          schema.names[attr], out, ", ".join(f"{k} {tuple(v.shape)}" for k, v in arrays.items()))
    return out
