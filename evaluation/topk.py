"""Each query's top-K results next to the rank its metric used, and their JSON Lines files.

A `TopK` holds, for every query in evaluation order, the k best candidates in the exact rank order of the
metric (stable descending sort, lower candidate index first; see `evaluation.recall`), their scores, which of
them are positives, and the 0-based rank of the query's best positive (the one the metric used). An index of
-1 pads a row whose candidate set is shorter than k (ASEN++ attributes with few candidates).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.atomic import atomic_write

DEFAULT_K = 10


@dataclass
class TopK:
    """(Q, k) candidate indices, scores and positive flags, and the (Q,) rank of each query's best positive."""

    indices: torch.Tensor  # (Q, k) int64, -1 = padding
    scores: torch.Tensor  # (Q, k) float32
    positive: torch.Tensor  # (Q, k) bool
    ranks: torch.Tensor  # (Q,) int64; -1 = no positive at all (ASEN++ queries without a relevant candidate)

    def __post_init__(self) -> None:
        q, k = self.indices.shape
        if self.scores.shape != (q, k) or self.positive.shape != (q, k) or self.ranks.shape != (q,):
            raise ValueError("TopK: indices, scores, positive must be (Q, k) and ranks (Q,)")

    @property
    def k(self) -> int:
        return self.indices.shape[1]

    def __len__(self) -> int:
        return self.indices.shape[0]


def check_k(k: int) -> int:
    """A usable K (0 = no top-K lists)."""
    if k < 0:
        raise ValueError(f"top-K needs K >= 0, got {k}")
    return k


def _float32(value: float) -> float | None:
    """The shortest decimal that reads back as the same float32 (9 significant digits); None for -inf/NaN."""
    return float(f"{value:.9g}") if math.isfinite(value) else None


def topk_lines(top: TopK, query_ids: Sequence[Any], candidate_ids: Sequence[Any],
               extra: Callable[[int], Mapping[str, Any]] | None = None) -> list[str]:
    """One JSON line per query: `query` (its data-set id), `rank` (null: no positive), `ids`, `scores`,
    `positive` (+ the fields of `extra(q)`)."""
    if len(query_ids) != len(top):
        raise ValueError(f"{len(query_ids)} query ids for {len(top)} top-K rows")
    indices, scores = top.indices.tolist(), top.scores.tolist()
    positive, ranks = top.positive.tolist(), top.ranks.tolist()
    lines = []
    for q in range(len(top)):
        keep = [j for j, i in enumerate(indices[q]) if i >= 0]
        record: dict[str, Any] = {"query": query_ids[q], "rank": ranks[q] if ranks[q] >= 0 else None}
        if extra is not None:
            record.update(extra(q))
        record["ids"] = [candidate_ids[indices[q][j]] for j in keep]
        # an excluded candidate (score -inf) can only fill the list's tail: written as null
        record["scores"] = [_float32(scores[q][j]) for j in keep]
        record["positive"] = [positive[q][j] for j in keep]
        lines.append(json.dumps(record, ensure_ascii=False, allow_nan=False))
    return lines


def write_topk(path: str | Path, top: TopK, query_ids: Sequence[Any], candidate_ids: Sequence[Any],
               extra: Callable[[int], Mapping[str, Any]] | None = None) -> Path:
    """Write the queries' top-K as JSON Lines, atomically (engine.atomic)."""
    lines = topk_lines(top, query_ids, candidate_ids, extra)
    with atomic_write(path) as f:
        f.write("".join(line + "\n" for line in lines))
    return Path(path)


def read_topk(path: str | Path) -> list[dict[str, Any]]:
    """The records of a top-K JSON Lines file."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line]
