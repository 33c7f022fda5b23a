"""Attribute-conditioned MAP (the ASEN++ protocol), vectorised and chunked over queries on the device.

For each query, all candidates of the query's attribute are sorted by decreasing score; ties are broken
by ascending candidate position (a stable sort). A candidate is relevant iff it has the query's value.
AP = (1/R) * sum over relevant ranks j of (relevant in ranks 1..j) / j, and AP = 0 when R = 0.
MAP_k is the mean AP of attribute k's queries; the total is query-weighted (the mean AP over all
queries), and the unweighted attribute mean is reported as a secondary number.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evaluation.ranking import descending_order
from evaluation.topk import TopK, check_k

DEFAULT_CHUNK_ELEMENTS = 1 << 24  # scores ranked at once per chunk on GPU
CPU_CHUNK_ELEMENTS = 1 << 22  # smaller blocks stay in cache on CPU


def _mean_precision(rel: torch.Tensor, first_relevant: torch.Tensor | None = None) -> torch.Tensor:
    """Per row of a (B, C) relevance-in-rank-order block: the mean precision at the relevant ranks (0 if none).

    Works on the relevant positions only: the k-th relevant item at 0-based position p adds k / (p + 1).
    `first_relevant` (B,) int64, if given, receives each row's first relevant position (-1 if none).
    """
    rows, pos = rel.nonzero(as_tuple=True)  # row-major: each row's relevant positions in rank order
    counts = torch.bincount(rows, minlength=rel.shape[0])
    first = torch.cumsum(counts, 0) - counts  # index of each row's first relevant item in `rows`
    if first_relevant is not None:
        first_relevant.fill_(-1)
        first_relevant[rows[first[counts > 0]]] = pos[first[counts > 0]]
    kth = torch.arange(1, rows.numel() + 1, device=rel.device) - first[rows]
    precision = kth.double() / (pos + 1).double()
    total = torch.zeros(rel.shape[0], dtype=torch.float64, device=rel.device).index_add_(0, rows, precision)
    return total / counts.clamp(min=1)


@dataclass
class RankedTop:
    """The head of the MAP's own ranking: each query's first relevant position (-1: none) and its k best
    candidates (positions within the candidates given, -1 = padding) with their scores."""

    first_relevant: torch.Tensor  # (Q,) int64
    indices: torch.Tensor  # (Q, k) int64
    scores: torch.Tensor  # (Q, k) float32


def average_precision(
    query: torch.Tensor | None = None,
    candidates: torch.Tensor | None = None,
    query_labels: torch.Tensor | None = None,
    candidate_labels: torch.Tensor | None = None,
    *,
    scores: torch.Tensor | None = None,
    chunk_queries: int = 0,
    device: torch.device | str | None = None,
    top: RankedTop | None = None,
) -> torch.Tensor:
    """AP of every query against all candidates; returns a (Q,) float64 tensor on `device`.

    Scores are `query @ candidates.T` in float32 (computed per chunk) or rows of a precomputed (Q, C)
    `scores` matrix. Labels are integer class ids; a candidate is relevant iff its label equals the query's.
    `top` (tensors on `device`, k = its width), if given, receives the head of the same ranking.
    """
    if (scores is None) == (query is None or candidates is None):
        raise ValueError("give either query and candidate embeddings, or a precomputed score matrix")
    if query_labels is None or candidate_labels is None:
        raise ValueError("query_labels and candidate_labels are required")
    if scores is not None:
        num_q, num_c = scores.shape
        dev = torch.device(device) if device is not None else scores.device
    else:
        if query.shape[1] != candidates.shape[1]:
            raise ValueError(f"embedding widths differ: {tuple(query.shape)} vs {tuple(candidates.shape)}")
        num_q, num_c = query.shape[0], candidates.shape[0]
        dev = torch.device(device) if device is not None else candidates.device
        cand = candidates.to(dev, torch.float32)
    if query_labels.numel() != num_q or candidate_labels.numel() != num_c:
        raise ValueError("one label per query and per candidate is required")
    out = torch.zeros(num_q, dtype=torch.float64, device=dev)
    if num_q == 0 or num_c == 0:
        return out
    # int32 labels keep the per-score workspace small (about 30 bytes per ranked score: scores, keys, order)
    q_lab = query_labels.to(dev).reshape(-1).to(torch.int32)
    c_lab = candidate_labels.to(dev).reshape(-1).to(torch.int32)
    budget = DEFAULT_CHUNK_ELEMENTS if dev.type == "cuda" else CPU_CHUNK_ELEMENTS
    step = chunk_queries if chunk_queries > 0 else max(1, budget // num_c)
    transposed = None  # CPU: (C, chunk) product buffer, reused by every full chunk
    for start in range(0, num_q, step):
        end = min(num_q, start + step)
        if scores is not None:
            block = scores[start:end].to(dev, torch.float32)
        elif dev.type == "cpu":
            # MKL's sgemm runs these skinny products ~1.4x faster as candidates x queries (measured on the
            # project's AMD CPUs); the ranking reads the transposed view, no copy
            if transposed is None or transposed.shape[1] != end - start:
                transposed = torch.empty(num_c, end - start)
            block = torch.mm(cand, query[start:end].to(dev, torch.float32).T, out=transposed).T
        else:
            block = query[start:end].to(dev, torch.float32) @ cand.T
        order = descending_order(block)  # = the stable descending sort's indices, several times faster
        if top is not None:
            take = min(top.indices.shape[1], num_c)
            top.indices[start:end, :take] = order[:, :take]
            top.scores[start:end, :take] = block.gather(1, order[:, :take])
        del block
        rel = c_lab[order] == q_lab[start:end, None]
        del order
        out[start:end] = _mean_precision(rel, None if top is None else top.first_relevant[start:end])
    return out


@dataclass
class MapResult:
    """Per-attribute and overall MAP as fractions in [0, 1]."""

    per_attribute: list[float | None]  # None: no queries for that attribute (excluded from the total)
    num_queries: list[int]
    num_candidates: list[int]
    total: float  # query-weighted (= mean AP over all queries)
    attribute_mean: float  # unweighted mean over attributes with queries
    ap: torch.Tensor  # (Q,) float64 CPU, AP of each query in input order
    top: TopK | None = None  # with `top_k` > 0: each query's best candidates (indices into all candidates)


def attribute_map(
    query: torch.Tensor,
    query_attr: torch.Tensor,
    query_value: torch.Tensor,
    candidates: torch.Tensor,
    candidate_attr: torch.Tensor,
    candidate_value: torch.Tensor,
    num_attributes: int,
    *,
    chunk_queries: int = 0,
    device: torch.device | str | None = None,
    top_k: int = 0,
) -> MapResult:
    """MAP of attribute-conditioned retrieval: queries rank the candidates of their own attribute.

    `top_k` > 0 also keeps each query's `top_k` best candidates of its attribute in the MAP's rank order
    (`MapResult.top`; `ranks` = the first relevant position, -1 when none is relevant)."""
    dev = torch.device(device) if device is not None else query.device
    q_attr, c_attr = query_attr.to(dev).reshape(-1), candidate_attr.to(dev).reshape(-1)
    ap = torch.zeros(query.shape[0], dtype=torch.float64, device=dev)
    head = None
    if check_k(top_k):
        head = RankedTop(torch.full((query.shape[0],), -1, dtype=torch.long, device=dev),
                         torch.full((query.shape[0], top_k), -1, dtype=torch.long, device=dev),
                         torch.full((query.shape[0], top_k), float("-inf"), dtype=torch.float32, device=dev))
    per_attr: list[float | None] = []
    nq, nc = [], []
    for k in range(num_attributes):
        qi = (q_attr == k).nonzero().squeeze(1)
        ci = (c_attr == k).nonzero().squeeze(1)
        nq.append(int(qi.numel()))
        nc.append(int(ci.numel()))
        if qi.numel() == 0:
            per_attr.append(None)
            continue
        qi_src, ci_src = qi.to(query.device), ci.to(candidates.device)
        part = None
        if head is not None:
            n = qi.numel()
            part = RankedTop(head.first_relevant.new_empty(n), head.indices.new_full((n, top_k), -1),
                             head.scores.new_full((n, top_k), float("-inf")))
        ap_k = average_precision(query[qi_src], candidates[ci_src], query_value[qi_src], candidate_value[ci_src],
                                 chunk_queries=chunk_queries, device=dev, top=part)
        ap[qi] = ap_k
        if part is not None:
            ci_dev = ci.to(dev)
            head.first_relevant[qi] = part.first_relevant
            head.indices[qi] = torch.where(part.indices >= 0, ci_dev[part.indices.clamp(min=0)], -1)
            head.scores[qi] = part.scores
        per_attr.append(float(ap_k.mean()))
    counted = [v for v in per_attr if v is not None]
    if not counted:
        raise ValueError("no queries for any attribute")
    weights = torch.tensor([n for n, v in zip(nq, per_attr) if v is not None], dtype=torch.float64)
    total = float((torch.tensor(counted, dtype=torch.float64) * weights).sum() / weights.sum())
    top = None
    if head is not None:
        idx = head.indices.cpu()
        c_val = candidate_value.reshape(-1).cpu()
        positive = (c_val[idx.clamp(min=0)] == query_value.reshape(-1).cpu()[:, None]) & (idx >= 0)
        top = TopK(idx, head.scores.cpu(), positive, head.first_relevant.cpu())
    return MapResult(per_attr, nq, nc, total, sum(counted) / len(counted), ap.cpu(), top)
