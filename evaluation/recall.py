"""The one ranking / recall routine shared by every retrieval protocol (CMR full and sampled, TGIR).

Rank convention (used everywhere in the framework): candidates are ordered by a **stable descending
sort of the scores, candidate position breaking ties** (lower index first). The rank of a query is the
0-based position of its best-ranked positive in that order, i.e.

    rank = #{j : s_j > s*} + #{j : s_j == s* and j < j*}

where s* is the highest positive score and j* the lowest index of a positive scoring s*. R@K is
100 * (fraction of queries with rank < K). The published code ranks with NumPy's (unstable) argsort
reversed; with float scores ties are rare, so both agree except on exact ties.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

# Scores held at once per chunk: 16 MiB (float32) on CPU, where small blocks stay cache friendly (measured
# fastest at real FashionGen size), 128 MiB on accelerators, where fewer, larger kernels win.
CPU_CHUNK_ELEMENTS = 1 << 22
DEVICE_CHUNK_ELEMENTS = 1 << 25


@dataclass(frozen=True)
class IndexSets:
    """Per-query sets of candidate indices in CSR form: query q owns `indices[offsets[q]:offsets[q+1]]`.

    Used for the positives of each query (several allowed) and for score masks (excluded candidates).
    """

    offsets: torch.Tensor  # (Q + 1,) int64, non-decreasing, offsets[0] == 0
    indices: torch.Tensor  # (nnz,) int64 candidate indices

    def __post_init__(self) -> None:
        if self.offsets.dim() != 1 or self.offsets.numel() < 1 or self.indices.dim() != 1:
            raise ValueError("IndexSets: offsets must be (Q+1,) and indices (nnz,)")
        if int(self.offsets[0]) != 0 or int(self.offsets[-1]) != self.indices.numel():
            raise ValueError("IndexSets: offsets must start at 0 and end at len(indices)")
        if self.offsets.numel() > 1 and bool((self.offsets[1:] < self.offsets[:-1]).any()):
            raise ValueError("IndexSets: offsets must be non-decreasing")

    @property
    def num_queries(self) -> int:
        return self.offsets.numel() - 1

    def counts(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    @classmethod
    def from_lists(cls, sets: Sequence[Sequence[int]]) -> IndexSets:
        """From one list of candidate indices per query."""
        counts = torch.tensor([len(s) for s in sets], dtype=torch.long)
        offsets = torch.zeros(len(sets) + 1, dtype=torch.long)
        torch.cumsum(counts, 0, out=offsets[1:])
        flat = [int(i) for s in sets for i in s]
        return cls(offsets, torch.tensor(flat, dtype=torch.long))

    @classmethod
    def single(cls, targets: torch.Tensor | Sequence[int]) -> IndexSets:
        """Exactly one candidate per query (`targets[q]`)."""
        t = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
        return cls(torch.arange(t.numel() + 1, dtype=torch.long), t.clone())

    def to_lists(self) -> list[list[int]]:
        flat, offs = self.indices.tolist(), self.offsets.tolist()
        return [flat[offs[q] : offs[q + 1]] for q in range(self.num_queries)]

    def rows(self, start: int, end: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(local query row, candidate index) pairs of queries start..end-1, on `device`."""
        a, b = int(self.offsets[start]), int(self.offsets[end])
        cols = self.indices[a:b].to(device)
        counts = self.offsets[start + 1 : end + 1] - self.offsets[start:end]
        local = torch.repeat_interleave(torch.arange(end - start), counts).to(device)
        return local, cols

    def check(self, num_queries: int, num_candidates: int, what: str, nonempty: bool) -> None:
        if self.num_queries != num_queries:
            raise ValueError(f"{what}: {self.num_queries} query sets for {num_queries} queries")
        if self.indices.numel() and (int(self.indices.min()) < 0 or int(self.indices.max()) >= num_candidates):
            raise ValueError(f"{what}: candidate index out of range [0, {num_candidates})")
        if nonempty and num_queries and bool((self.counts() == 0).any()):
            q = int((self.counts() == 0).nonzero()[0])
            raise ValueError(f"{what}: query {q} has no positive candidate")


def _keep_top_k_(scores: torch.Tensor, k: int, fill_value: float) -> None:
    """In place: keep each row's k highest scores, set the others to `fill_value` (BLIP `k_test`)."""
    if k >= scores.shape[1]:
        return
    vals, idx = scores.topk(k, dim=1)
    scores.fill_(fill_value).scatter_(1, idx, vals)


def _chunk_ranks(scores: torch.Tensor, pos_rows: torch.Tensor, pos_cols: torch.Tensor, mask: torch.Tensor
                 ) -> torch.Tensor:
    """Best-positive rank of every row of a (B, C) score block (stable descending order).

    `mask` is a reusable (B, C) boolean workspace.
    """
    b, c = scores.shape
    device = scores.device
    pos_scores = scores[pos_rows, pos_cols]
    best = torch.full((b,), float("-inf"), dtype=scores.dtype, device=device)
    best.scatter_reduce_(0, pos_rows, pos_scores, reduce="amax", include_self=True)
    is_best = pos_scores == best[pos_rows]
    cand = torch.where(is_best, pos_cols, torch.full_like(pos_cols, c))
    best_idx = torch.full((b,), c, dtype=torch.long, device=device)
    best_idx.scatter_reduce_(0, pos_rows, cand, reduce="amin", include_self=True)
    # int32 sums: summing booleans to the default int64 materialises a (B, C) int64 copy (8x the memory).
    higher = torch.gt(scores, best[:, None], out=mask).sum(1, dtype=torch.int32)
    equal = torch.eq(scores, best[:, None], out=mask)
    tied = (equal.sum(1, dtype=torch.int32) > 1).nonzero().squeeze(1)  # rows with a tie at the best score
    if tied.numel():
        position = torch.arange(c, device=device)
        before = equal[tied] & (position[None, :] < best_idx[tied, None])
        higher[tied] += before.sum(1, dtype=torch.int32)
    return higher.long()


def score_blocks(
    query: torch.Tensor | None = None,
    candidates: torch.Tensor | None = None,
    *,
    scores: torch.Tensor | None = None,
    positives: IndexSets | None = None,
    exclude: IndexSets | None = None,
    keep_top_k: int | None = None,
    top_k_fill: float = -100.0,
    device: torch.device | str | None = None,
    chunk_size: int | None = None,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """The chunked score matrix every ranking reads: yields (start, end, block) with block = the float32
    scores of queries start..end-1 against all candidates (`query @ candidates.T`, or rows of `scores`), after
    `exclude` (set to -inf, except where a candidate is also a positive of the query) and `keep_top_k`.

    The block is a reused buffer: consume it before the next one is yielded. Chunks hold `chunk_size` x C
    scores (default: 2^22 scores on CPU, 2^25 on accelerators); there is no Python loop over queries.
    """
    if (scores is None) == (query is None or candidates is None):
        raise ValueError("give either query and candidate embeddings, or a precomputed score matrix")
    if scores is not None:
        if scores.dim() != 2:
            raise ValueError("scores must be a 2-D (queries x candidates) matrix")
        num_q, num_c = scores.shape
        dev = torch.device(device) if device is not None else scores.device
    else:
        if query.dim() != 2 or candidates.dim() != 2 or query.shape[1] != candidates.shape[1]:
            raise ValueError(f"embedding shapes do not match: {tuple(query.shape)} vs {tuple(candidates.shape)}")
        num_q, num_c = query.shape[0], candidates.shape[0]
        dev = torch.device(device) if device is not None else candidates.device
        cand = candidates.to(dev, torch.float32)
    if num_q == 0:
        raise ValueError("no queries to rank")
    if num_c == 0:
        raise ValueError("no candidates to rank against")
    if positives is not None:
        positives.check(num_q, num_c, "positives", nonempty=True)
    if exclude is not None:
        exclude.check(num_q, num_c, "exclude", nonempty=False)
    budget = CPU_CHUNK_ELEMENTS if dev.type == "cpu" else DEVICE_CHUNK_ELEMENTS
    step = min(num_q, chunk_size or max(1, budget // num_c))
    # One score block reused by every chunk: fresh large allocations per chunk cost page faults each time
    # (dominant on some virtual machines) and allocator churn everywhere.
    block_buf = torch.empty(step, num_c, dtype=torch.float32, device=dev)
    for start in range(0, num_q, step):
        end = min(num_q, start + step)
        block = block_buf[: end - start]
        if scores is not None:
            block.copy_(scores[start:end])  # a private copy: exclusions never write into the caller's matrix
        else:
            torch.matmul(query[start:end].to(dev, torch.float32), cand.T, out=block)
        if torch.isnan(block.amax()):  # max propagates NaN: a cheap full check without a mask
            raise ValueError(f"NaN scores for queries {start}..{end - 1}")
        if exclude is not None:
            ex_rows, ex_cols = exclude.rows(start, end, dev)
            if positives is not None:
                pos_rows, pos_cols = positives.rows(start, end, dev)
                kept = block[pos_rows, pos_cols]
                block[ex_rows, ex_cols] = float("-inf")
                block[pos_rows, pos_cols] = kept
            else:
                block[ex_rows, ex_cols] = float("-inf")
        if keep_top_k is not None:
            _keep_top_k_(block, keep_top_k, top_k_fill)
        yield start, end, block


def best_positive_ranks(
    positives: IndexSets,
    query: torch.Tensor | None = None,
    candidates: torch.Tensor | None = None,
    *,
    scores: torch.Tensor | None = None,
    exclude: IndexSets | None = None,
    keep_top_k: int | None = None,
    top_k_fill: float = -100.0,
    device: torch.device | str | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """0-based rank of each query's best-ranked positive; returns a (Q,) int64 CPU tensor.

    Scores are `query @ candidates.T` (Q x D, C x D; computed per chunk of queries, in float32) or, when
    `scores` is given, rows of that precomputed (Q x C) matrix. `exclude` lists candidates whose score
    is set to -inf for that query (a candidate that is also a positive of the query is not excluded).
    `keep_top_k` keeps only each query's k best scores, the others becoming `top_k_fill` (BLIP variant).
    Chunked as `score_blocks`.
    """
    out: torch.Tensor | None = None
    mask_buf: torch.Tensor | None = None
    for start, end, block in score_blocks(query, candidates, scores=scores, positives=positives, exclude=exclude,
                                          keep_top_k=keep_top_k, top_k_fill=top_k_fill, device=device,
                                          chunk_size=chunk_size):
        if out is None:
            num_q = scores.shape[0] if scores is not None else query.shape[0]
            out = torch.empty(num_q, dtype=torch.long, device=block.device)
            mask_buf = torch.empty_like(block, dtype=torch.bool)
        pos_rows, pos_cols = positives.rows(start, end, block.device)
        out[start:end] = _chunk_ranks(block, pos_rows, pos_cols, mask_buf[: end - start])
    return out.cpu()


def _block_top_k(block: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) indices of each row's k highest scores in stable descending order (ties by lower index), exact
    whatever `torch.topk` does with ties: every score at or above the row's k-th value is kept (ties at the
    threshold included), then ordered by (row, score descending, index) with two stable sorts of those few.
    About 2-3x faster than a top-k of unique int64 keys (evaluation.ranking.descending_keys) over the block."""
    threshold = torch.topk(block, k, dim=1, sorted=False).values.amin(1, keepdim=True)
    kept = block >= threshold
    counts = kept.sum(1)
    rows, cols = kept.nonzero(as_tuple=True)  # row-major: ascending index within a row
    order = torch.sort(block[rows, cols], descending=True, stable=True).indices
    order = order[torch.sort(rows[order], stable=True).indices]
    starts = torch.cumsum(counts, 0) - counts
    return cols[order[(starts[:, None] + torch.arange(k, device=block.device)).reshape(-1)]].view(-1, k)


def top_k_candidates(
    query: torch.Tensor | None = None,
    candidates: torch.Tensor | None = None,
    k: int = 10,
    *,
    scores: torch.Tensor | None = None,
    positives: IndexSets | None = None,
    exclude: IndexSets | None = None,
    keep_top_k: int | None = None,
    top_k_fill: float = -100.0,
    device: torch.device | str | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's k best candidates in the rank order of `best_positive_ranks` (stable descending):
    ((Q, k) int64 candidate indices, (Q, k) float32 scores), CPU tensors; k is capped at the candidate count.
    Chunked as `score_blocks` (same scores, exclusions and top-k filling as the ranks; `positives` only
    keeps an excluded candidate that is also a positive, as the ranks do)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    indices, values = [], []
    for _, _, block in score_blocks(query, candidates, scores=scores, positives=positives, exclude=exclude,
                                    keep_top_k=keep_top_k,
                                    top_k_fill=top_k_fill, device=device, chunk_size=chunk_size):
        idx = _block_top_k(block, min(k, block.shape[1]))
        indices.append(idx.cpu())
        values.append(block.gather(1, idx).cpu())
    return torch.cat(indices), torch.cat(values)


def recall_at_k(ranks: torch.Tensor | Sequence[int], ks: Sequence[int] = (1, 5, 10), prefix: str = "r") -> dict[str, float]:
    """R@K = 100 * fraction of queries with rank < K, keyed `f"{prefix}{K}"` (e.g. prefix "txt_r" -> "txt_r1")."""
    r = torch.as_tensor(ranks)
    n = r.numel()
    if n == 0:
        raise ValueError("recall over an empty query set is undefined")
    return {f"{prefix}{k}": 100.0 * int((r < k).sum()) / n for k in ks}
