"""FashionIQ text-guided image retrieval evaluation: galleries (docs/compat.md, eval.gallery), R@K, report.

Model independent: each query set (a category, `all`, or a held-out slice) is given as query embeddings
(one per triplet, in file order), the reference and target image names of the triplets, and the gallery
(names + one embedding per name). Ranking goes through `evaluation.recall` (stable descending order).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.errors import DataError
from evaluation.recall import IndexSets, best_positive_ranks, recall_at_k, top_k_candidates
from evaluation.report import format_table, write_report
from evaluation.topk import TopK, check_k

TASK = "fashioniq_tgir"
CATEGORIES = ("dress", "shirt", "toptee")
KS = (1, 5, 10, 50)
GALLERY_MODES = ("triplets", "split")
TIE_BREAK = "stable descending sort over the sorted gallery, lower gallery index first"


@dataclass(frozen=True)
class TGIROptions:
    """`gallery`: `triplets` (union of the val file's images, published) or `split` (official split file);
    `exclude_reference`: give the query's own reference image a score of -inf."""

    gallery: str = "triplets"
    exclude_reference: bool = False

    def __post_init__(self) -> None:
        if self.gallery not in GALLERY_MODES:
            raise ValueError(f"gallery must be one of {GALLERY_MODES}, got {self.gallery!r}")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tie_break": TIE_BREAK}


def build_gallery(mode: str, reference_names: Sequence[str], target_names: Sequence[str],
                  split_names: Iterable[str] | None = None, source: str = "gallery") -> list[str]:
    """Sorted gallery: union of the triplets' images (`triplets`) or the split list (`split`, which must
    contain every target; for `all` pass the union of the three split files)."""
    if mode == "triplets":
        names = set(reference_names) | set(target_names)
    elif mode == "split":
        if split_names is None:
            raise ValueError("gallery 'split' needs the image split names")
        names = set(split_names)
        missing = sorted(set(target_names) - names)
        if missing:
            raise DataError(f"{source}: {len(missing)} target image(s) not in the split gallery "
                            f"(e.g. {', '.join(missing[:5])})")
    else:
        raise ValueError(f"gallery must be one of {GALLERY_MODES}, got {mode!r}")
    if not names:
        raise DataError(f"{source}: empty gallery")
    return sorted(names)


def gallery_matrix(names: Sequence[str], embeddings: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Stack the embedding of every gallery name, in gallery order."""
    missing = [n for n in names if n not in embeddings]
    if missing:
        raise KeyError(f"no embedding for {len(missing)} gallery image(s), e.g. {missing[:5]}")
    return torch.stack([embeddings[n] for n in names])


@dataclass
class QuerySet:
    """One evaluated set: query embeddings (Q x D) with their triplets' image names, and the gallery."""

    query_emb: torch.Tensor
    reference_names: Sequence[str]
    target_names: Sequence[str]
    gallery_names: Sequence[str]
    gallery_emb: torch.Tensor | Mapping[str, torch.Tensor]


def _ground_truth(query_emb: torch.Tensor, gallery_emb: torch.Tensor, gallery_names: Sequence[str],
                  target_names: Sequence[str], reference_names: Sequence[str] | None, exclude_reference: bool,
                  source: str) -> tuple[IndexSets, IndexSets | None]:
    """(the target of each query, the candidates it excludes) as gallery positions, inputs checked."""
    if len(target_names) == 0:
        raise DataError(f"{source}: empty query set")
    if query_emb.shape[0] != len(target_names):
        raise ValueError(f"{source}: {query_emb.shape[0]} query embeddings for {len(target_names)} triplets")
    if gallery_emb.shape[0] != len(gallery_names):
        raise ValueError(f"{source}: {gallery_emb.shape[0]} gallery embeddings for {len(gallery_names)} names")
    position = {name: i for i, name in enumerate(gallery_names)}
    if len(position) != len(gallery_names):
        raise ValueError(f"{source}: duplicate gallery names")
    missing = [t for t in target_names if t not in position]
    if missing:
        raise DataError(f"{source}: {len(missing)} target(s) not in the gallery, e.g. {missing[:5]}")
    positives = IndexSets.single([position[t] for t in target_names])
    exclude = None
    if exclude_reference:
        if reference_names is None or len(reference_names) != len(target_names):
            raise ValueError(f"{source}: exclude_reference needs one reference name per query")
        exclude = IndexSets.from_lists([[position[r]] if r in position else [] for r in reference_names])
    return positives, exclude


def tgir_ranks(query_emb: torch.Tensor, gallery_emb: torch.Tensor, gallery_names: Sequence[str],
               target_names: Sequence[str], reference_names: Sequence[str] | None = None, *,
               exclude_reference: bool = False, device: torch.device | str | None = None,
               chunk_size: int | None = None, source: str = "queries") -> torch.Tensor:
    """0-based rank of each query's target in the gallery (reference at -inf with `exclude_reference`).

    A reference absent from the gallery has nothing to exclude; a reference equal to its target is kept.
    """
    positives, exclude = _ground_truth(query_emb, gallery_emb, gallery_names, target_names, reference_names,
                                       exclude_reference, source)
    return best_positive_ranks(positives, query_emb, gallery_emb, exclude=exclude, device=device,
                               chunk_size=chunk_size)


def tgir_top_k(query_emb: torch.Tensor, gallery_emb: torch.Tensor, gallery_names: Sequence[str],
               target_names: Sequence[str], ranks: torch.Tensor, k: int,
               reference_names: Sequence[str] | None = None, *, exclude_reference: bool = False,
               device: torch.device | str | None = None, chunk_size: int | None = None,
               source: str = "queries") -> TopK:
    """Each query's k best gallery images in the order of `tgir_ranks` (same exclusions); `ranks` are its ranks."""
    positives, exclude = _ground_truth(query_emb, gallery_emb, gallery_names, target_names, reference_names,
                                       exclude_reference, source)
    idx, scores = top_k_candidates(query_emb, gallery_emb, k, positives=positives, exclude=exclude, device=device,
                                   chunk_size=chunk_size)
    return TopK(idx, scores, idx == positives.indices[:, None], ranks)


def set_metric_names(name: str) -> tuple[str, ...]:
    """The keys `set_metrics` returns for query set `name`."""
    return (*(f"{name}_r{k}" for k in KS), f"{name}_img_r_mean")


AVERAGE_METRICS = ("avg_r10", "avg_r50", "avg", "sum")  # the keys of `average_metrics`


def metric_names(set_names: Sequence[str]) -> tuple[str, ...]:
    """The keys `evaluate_tgir` returns for these query sets (also what `train.select_metric` may name)."""
    return (*(m for name in set_names for m in set_metric_names(name)), *AVERAGE_METRICS)


def set_metrics(ranks: torch.Tensor, name: str) -> dict[str, float]:
    """`{name}_r1/5/10/50` and `{name}_img_r_mean` (mean of R@1/5/10)."""
    m = recall_at_k(ranks, KS, f"{name}_r")
    m[f"{name}_img_r_mean"] = sum(m[f"{name}_r{k}"] for k in (1, 5, 10)) / 3
    return {key: m[key] for key in set_metric_names(name)}


def averaged_sets(names: Sequence[str]) -> list[str]:
    """Sets entering the averages: the three categories present, else every set given."""
    cats = [c for c in CATEGORIES if c in names]
    return cats or list(names)


def average_metrics(metrics: Mapping[str, float], names: Sequence[str]) -> dict[str, float]:
    """`avg_r10`, `avg_r50`, their mean `avg`, and the selection score `sum` = sum of R@10 + R@50."""
    if not names:
        raise ValueError("no query sets to average")
    r10 = [metrics[f"{n}_r10"] for n in names]
    r50 = [metrics[f"{n}_r50"] for n in names]
    out = {"avg_r10": sum(r10) / len(names), "avg_r50": sum(r50) / len(names)}
    out["avg"] = (out["avg_r10"] + out["avg_r50"]) / 2
    out["sum"] = sum(r10) + sum(r50)
    return {key: out[key] for key in AVERAGE_METRICS}


@dataclass
class TGIRResult:
    metrics: dict[str, float]
    options: dict[str, Any]
    ranks: dict[str, torch.Tensor]
    top: dict[str, TopK] = field(default_factory=dict)  # per query set, with `top_k` > 0


def evaluate_tgir(sets: Mapping[str, QuerySet], options: TGIROptions = TGIROptions(), *,
                  device: torch.device | str | None = None, chunk_size: int | None = None,
                  top_k: int = 0) -> TGIRResult:
    """Rank every query set (e.g. dress, shirt, toptee, all) and compute per-set and averaged metrics;
    `top_k` > 0 also keeps each query's `top_k` best gallery images (`TGIRResult.top`)."""
    if not sets:
        raise ValueError("no query sets to evaluate")
    metrics: dict[str, float] = {}
    ranks: dict[str, torch.Tensor] = {}
    top: dict[str, TopK] = {}
    sizes: dict[str, dict[str, int]] = {}
    for name, qs in sets.items():
        gallery = qs.gallery_emb
        if isinstance(gallery, Mapping):
            gallery = gallery_matrix(qs.gallery_names, gallery)
        ranks[name] = tgir_ranks(qs.query_emb, gallery, qs.gallery_names, qs.target_names, qs.reference_names,
                                 exclude_reference=options.exclude_reference, device=device,
                                 chunk_size=chunk_size, source=name)
        metrics |= set_metrics(ranks[name], name)
        if check_k(top_k):
            top[name] = tgir_top_k(qs.query_emb, gallery, qs.gallery_names, qs.target_names, ranks[name], top_k,
                                   qs.reference_names, exclude_reference=options.exclude_reference,
                                   device=device, chunk_size=chunk_size, source=name)
        sizes[name] = {"queries": len(qs.target_names), "gallery": len(qs.gallery_names)}
    averaged = averaged_sets(list(sets))
    metrics |= average_metrics(metrics, averaged)
    record = {**options.as_dict(), "sets": sizes, "averaged_over": averaged}
    return TGIRResult(metrics, record, ranks, top)


def format_tgir_table(metrics: Mapping[str, float], names: Sequence[str]) -> str:
    """Rows = query sets, columns R@1/5/10/50 and mean(R@1,5,10); an `average` row with R@10, R@50."""
    header = ["", *(f"R@{k}" for k in KS), "mean R@1-10"]
    rows: list[list[Any]] = [[n, *(metrics[f"{n}_r{k}"] for k in KS), metrics[f"{n}_img_r_mean"]] for n in names]
    rows.append(["average", None, None, metrics["avg_r10"], metrics["avg_r50"], None])
    return format_table(header, rows) + f"\navg={metrics['avg']:.2f}  sum={metrics['sum']:.2f}"


def write_tgir_report(path: str | Path, result: TGIRResult, extra: Mapping[str, Any] | None = None) -> Path:
    """Result JSON with the metrics and the options (gallery mode, reference exclusion, set sizes)."""
    return write_report(path, TASK, result.metrics, result.options, extra)
