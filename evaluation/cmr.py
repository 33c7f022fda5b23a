"""FashionGen cross-modal retrieval evaluation: full and sampled protocols, report.

Inputs are plain: `product_rows[p]` = rows (images) of product p in evaluation order, `row_subcategory[r]`
= subcategory name of row r, and either the embeddings (texts P x D, images N x D) or the score matrix
S (P x N, texts x images; image->text uses S^T). All ranking goes through `evaluation.recall`.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from engine.atomic import write_json
from engine.errors import DataError
from evaluation.recall import IndexSets, best_positive_ranks, recall_at_k, top_k_candidates
from evaluation.report import format_table, write_report
from evaluation.topk import TopK, check_k

TASK = "fashiongen_cmr"
KS = (1, 5, 10)
PROTOCOLS = ("full", "sampled", "both")
SAMPLED_MODES = ("fixed", "legacy")
LEGACY_POOL_THRESHOLD = 100  # hard-coded in the published sampler whatever the number of negatives
SETS_NAME = "fashiongen_sampled"
TIE_BREAK = "stable descending sort, lower candidate index first"


# ----------------------------------------------------------------------------- ground truth


@dataclass(frozen=True)
class ProductIndex:
    """Ground truth of the full protocol: the text of each image row and the images of each product text."""

    product_rows: list[list[int]]
    num_rows: int
    text_of_row: torch.Tensor  # (N,) product index of every row
    images_of_text: IndexSets  # rows of every product

    @classmethod
    def build(cls, product_rows: Sequence[Sequence[int]], num_rows: int | None = None) -> ProductIndex:
        """Check that every row 0..N-1 belongs to exactly one non-empty product."""
        rows = [[int(r) for r in group] for group in product_rows]
        if not rows:
            raise DataError("no products to evaluate")
        empty = [p for p, group in enumerate(rows) if not group]
        if empty:
            raise DataError(f"product {empty[0]} has no image rows")
        n = sum(len(g) for g in rows) if num_rows is None else num_rows
        owner = [-1] * n
        for p, group in enumerate(rows):
            for r in group:
                if not 0 <= r < n:
                    raise DataError(f"product {p}: row {r} outside [0, {n})")
                if owner[r] >= 0:
                    raise DataError(f"row {r} belongs to products {owner[r]} and {p}")
                owner[r] = p
        orphans = [r for r, p in enumerate(owner) if p < 0]
        if orphans:
            raise DataError(f"{len(orphans)} row(s) belong to no product (first: row {orphans[0]})")
        return cls(rows, n, torch.tensor(owner, dtype=torch.long), IndexSets.from_lists(rows))

    @property
    def num_products(self) -> int:
        return len(self.product_rows)


# ----------------------------------------------------------------------------- full protocol


def _check_inputs(index: ProductIndex, scores: torch.Tensor | None, text_emb: torch.Tensor | None,
                  image_emb: torch.Tensor | None) -> None:
    if scores is not None:
        if text_emb is not None or image_emb is not None:
            raise ValueError("give either the score matrix or the embeddings, not both")
        if tuple(scores.shape) != (index.num_products, index.num_rows):
            raise ValueError(f"score matrix must be texts x images = ({index.num_products}, {index.num_rows}), "
                             f"got {tuple(scores.shape)}")
    else:
        if text_emb is None or image_emb is None:
            raise ValueError("give the score matrix or both text and image embeddings")
        if text_emb.shape[0] != index.num_products or image_emb.shape[0] != index.num_rows:
            raise ValueError(f"embeddings: {text_emb.shape[0]} texts / {image_emb.shape[0]} images for "
                             f"{index.num_products} products / {index.num_rows} rows")


def full_ranks(index: ProductIndex, *, scores: torch.Tensor | None = None, text_emb: torch.Tensor | None = None,
               image_emb: torch.Tensor | None = None, keep_top_k: int | None = None,
               device: torch.device | str | None = None, chunk_size: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Protocol A ranks: (image->text over all N rows, text->image over all P products, min over poses)."""
    _check_inputs(index, scores, text_emb, image_emb)
    common: dict[str, Any] = dict(keep_top_k=keep_top_k, device=device, chunk_size=chunk_size)
    i2t_pos = IndexSets.single(index.text_of_row)
    if scores is not None:
        i2t = best_positive_ranks(i2t_pos, scores=scores.T, **common)
        t2i = best_positive_ranks(index.images_of_text, scores=scores, **common)
    else:
        i2t = best_positive_ranks(i2t_pos, image_emb, text_emb, **common)
        t2i = best_positive_ranks(index.images_of_text, text_emb, image_emb, **common)
    return i2t, t2i


def full_candidates(index: ProductIndex, k: int, *, scores: torch.Tensor | None = None,
                    text_emb: torch.Tensor | None = None, image_emb: torch.Tensor | None = None,
                    keep_top_k: int | None = None, device: torch.device | str | None = None,
                    chunk_size: int | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each query's k best candidates (indices, scores) in both directions (`i2t`: texts of every image row,
    `t2i`: image rows of every product), in the rank order of `full_ranks` (`evaluation.recall`)."""
    common: dict[str, Any] = dict(keep_top_k=keep_top_k, device=device, chunk_size=chunk_size)
    if scores is not None:
        return {"i2t": top_k_candidates(k=k, scores=scores.T, **common),
                "t2i": top_k_candidates(k=k, scores=scores, **common)}
    return {"i2t": top_k_candidates(image_emb, text_emb, k, **common),
            "t2i": top_k_candidates(text_emb, image_emb, k, **common)}


def positive_flags(index: ProductIndex, direction: str, candidates: torch.Tensor) -> torch.Tensor:
    """(Q, k) bool: which of each query's listed candidates (`i2t`: texts, `t2i`: image rows) are positives."""
    owner = index.text_of_row
    if direction == "i2t":
        return candidates == owner[:, None]  # the text of the query row
    return owner[candidates] == torch.arange(index.num_products)[:, None]  # a row of the query product


def full_top_k(index: ProductIndex, k: int, ranks: Mapping[str, torch.Tensor], *,
               candidates: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
               **scoring: Any) -> dict[str, TopK]:
    """Each query's k best of the full protocol in both directions (`i2t`, `t2i`), from the scores, top-k
    filling and rank order of `full_ranks` (`scoring`: its keyword arguments), or the first k columns of
    `candidates` (e.g. re-ranked ones); `ranks` are the ranks the metrics used."""
    if candidates is None:
        candidates = full_candidates(index, k, **scoring)
    top = {}
    for d, (idx, val) in candidates.items():
        idx, val = idx[:, :k], val[:, :k]
        top[d] = TopK(idx, val, positive_flags(index, d, idx), ranks[d])
    return top


# ----------------------------------------------------------------------------- full protocol: re-ranking

PairScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(text indices (M,), image rows (M,)) int64 -> (M,) float scores of those pairs, higher = better match."""

RERANK_ORDER = ("each query's top rerank_k candidates by embedding score, re-ordered by the pair score (stable "
                "descending: ties keep the embedding order), then every other candidate in embedding order")


def rerank_full(index: ProductIndex, candidates: Mapping[str, tuple[torch.Tensor, torch.Tensor]], k: int,
                pair_scores: PairScorer, ranks: Mapping[str, torch.Tensor]
                ) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]], int]:
    """Re-rank the full protocol (`RERANK_ORDER`): (new ranks, `candidates` with their first k columns
    re-ordered, distinct pairs scored). Each distinct (text, image) pair of both directions is scored once;
    `ranks` are the embedding ranks, kept where no positive is among the k (they are >= k there)."""
    pairs = {}
    for d, (idx, _) in candidates.items():
        head = idx[:, : min(k, idx.shape[1])]
        query = torch.arange(head.shape[0])[:, None].expand_as(head)
        pairs[d] = (head, query) if d == "i2t" else (query, head)  # (texts, rows), each (Q, k)
    texts = torch.cat([t.reshape(-1) for t, _ in pairs.values()])
    rows = torch.cat([r.reshape(-1) for _, r in pairs.values()])
    keys, inverse = torch.unique(texts * index.num_rows + rows, return_inverse=True)
    unique_scores = torch.as_tensor(pair_scores(keys // index.num_rows, keys % index.num_rows)).float().cpu()
    if unique_scores.shape != keys.shape:
        raise ValueError(f"the pair scorer returned {tuple(unique_scores.shape)} scores for {keys.numel()} pairs")
    if not bool(torch.isfinite(unique_scores).all()):
        raise ValueError("the pair scorer returned NaN or infinite scores")
    flat = unique_scores[inverse]
    new_ranks, new_candidates, offset = {}, {}, 0
    for d, (idx, val) in candidates.items():
        q, kk = pairs[d][0].shape
        score = flat[offset : offset + q * kk].view(q, kk)
        offset += q * kk
        order = torch.sort(score, dim=1, descending=True, stable=True).indices
        idx = torch.cat([idx[:, :kk].gather(1, order), idx[:, kk:]], dim=1)
        val = torch.cat([val[:, :kk].gather(1, order), val[:, kk:]], dim=1)
        positive = positive_flags(index, d, idx[:, :kk])
        found = positive.any(1)
        if bool((ranks[d][~found] < kk).any()):
            raise ValueError(f"{d}: a query ranked a positive in its top {kk} but none is among its candidates")
        new_ranks[d] = torch.where(found, positive.int().argmax(1), ranks[d])
        new_candidates[d] = (idx, val)
    return new_ranks, new_candidates, keys.numel()


def full_metric_names(blip: bool = False) -> tuple[str, ...]:
    """The keys `full_metrics` returns (also what `train.select_metric` may name), in order."""
    recalls = tuple(f"{d}_r{k}" for d in ("txt", "img") for k in KS)
    return (*recalls, "txt_r_mean", "img_r_mean", "r_mean", *(() if blip else ("full_sum",)))


def sampled_metric_names() -> tuple[str, ...]:
    """The keys `sampled_metrics` returns, in order."""
    return (*(f"tiny_{d}_r{k}" for d in ("txt", "img") for k in KS), "tiny_sum")


def metric_names(protocol: str, blip: bool = False) -> tuple[str, ...]:
    """The keys an evaluation of `protocol` (full, sampled, both) returns."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    full = full_metric_names(blip) if protocol in ("full", "both") else ()
    return full + (sampled_metric_names() if protocol in ("sampled", "both") else ())


def full_metrics(i2t_ranks: torch.Tensor, t2i_ranks: torch.Tensor, blip: bool = False) -> dict[str, float]:
    """Full-protocol metrics under the published key names; `blip=True` gives the BLIP variant (r_mean = mean
    of means, no sum)."""
    m = recall_at_k(i2t_ranks, KS, "txt_r") | recall_at_k(t2i_ranks, KS, "img_r")
    m["txt_r_mean"] = sum(m[f"txt_r{k}"] for k in KS) / len(KS)
    m["img_r_mean"] = sum(m[f"img_r{k}"] for k in KS) / len(KS)
    if blip:
        m["r_mean"] = (m["txt_r_mean"] + m["img_r_mean"]) / 2
    else:
        m["r_mean"] = (m["txt_r1"] + m["img_r1"]) / 2
        m["full_sum"] = sum(m[f"{d}_r{k}"] for d in ("txt", "img") for k in KS)
    return {name: m[name] for name in full_metric_names(blip)}


# ----------------------------------------------------------------------------- sampled protocol: drawing


@dataclass(frozen=True)
class SampledOptions:
    """Protocol B options. `sets`: `fixed` (drawn once from random.Random(seed), saved, reused) or `legacy`
    (Python's global generator, seeded once with `seed`, redrawn at every evaluation, as published).
    `pool_threshold` None means `neg_len` for fixed sets and the published hard-coded 100 for legacy."""

    sets: str = "fixed"
    seed: int = 66
    set_len: int = 1000
    neg_len: int = 100
    exclude_positive_from_t2i_pool: bool = True
    pool_threshold: int | None = None

    def __post_init__(self) -> None:
        if self.sets not in SAMPLED_MODES:
            raise ValueError(f"sampled_sets must be one of {SAMPLED_MODES}, got {self.sets!r}")
        if self.set_len < 1 or self.neg_len < 1:
            raise ValueError("set_len and neg_len must be positive")
        if self.threshold < self.neg_len:
            raise ValueError(f"pool_threshold {self.threshold} < neg_len {self.neg_len}: the pool could be "
                             "too small to draw the negatives")

    @property
    def threshold(self) -> int:
        if self.pool_threshold is not None:
            return self.pool_threshold
        return LEGACY_POOL_THRESHOLD if self.sets == "legacy" else self.neg_len

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pool_threshold"] = self.threshold
        return d


@dataclass(frozen=True)
class SampledSet:
    """One direction of protocol B: query indices and their candidates, the positive last.

    i2t: query = image row, candidates = product (text) indices; t2i: query = product, candidates = rows.
    """

    direction: str
    queries: list[int]
    candidates: list[list[int]]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(self.queries, dtype=torch.long), torch.tensor(self.candidates, dtype=torch.long)


def subcategory_pools(product_rows: Sequence[Sequence[int]], row_subcategory: Sequence[str],
                      product_ids: Sequence[int] | None = None) -> dict[str, list[int]]:
    """Subcategory -> product indices, built as the published code does (exact replay needs this order).

    Keys in first-appearance row order; each value is a Python set of integer product ids filled in row
    order and turned into a list (its order, which feeds `random.sample`, depends on the id values, so
    pass the real `input_productID`s as `product_ids` for a bit-exact replay; default: product indices).
    """
    ids = list(range(len(product_rows))) if product_ids is None else [int(i) for i in product_ids]
    if len(ids) != len(product_rows) or len(set(ids)) != len(ids):
        raise DataError("product_ids must hold one distinct id per product")
    product_of_row: dict[int, int] = {r: p for p, rows in enumerate(product_rows) for r in rows}
    if len(product_of_row) != len(row_subcategory):
        raise DataError(f"{len(row_subcategory)} row subcategories for {len(product_of_row)} product rows")
    groups: dict[str, set[int]] = {}
    for row, sub in enumerate(row_subcategory):
        if row not in product_of_row:
            raise DataError(f"row {row} belongs to no product")
        groups.setdefault(sub, set()).add(ids[product_of_row[row]])
    index_of = {pid: p for p, pid in enumerate(ids)}
    return {sub: [index_of[pid] for pid in members] for sub, members in groups.items()}


def _negative_pool(pools: Mapping[str, list[int]], sub: str, product: int, remaining: list[str],
                   threshold: int, clean: bool) -> list[int]:
    """Products of `sub` minus `product`, topped up from the end of `remaining` while below `threshold`.

    `clean` keeps the positive product and duplicates out of the top-up (the published pools keep them;
    docs/compat.md, eval.sampled.exclude_positive_from_t2i_pool).
    """
    pool = list(pools[sub])
    pool.remove(product)
    seen = set(pool) | {product} if clean else set()
    while len(pool) < threshold:
        if not remaining:
            raise DataError(f"cannot fill a negative pool of {threshold} products: only {len(pool)} "
                            "available (the legacy threshold of 100 needs at least 101 products)")
        extra = pools[remaining.pop()]
        if clean:
            extra = [q for q in extra if q not in seen]
            seen.update(extra)
        pool.extend(extra)
    return pool


def draw_sampled_sets(product_rows: Sequence[Sequence[int]], row_subcategory: Sequence[str],
                      rng: random.Random | ModuleType,
                      options: SampledOptions = SampledOptions(), product_ids: Sequence[int] | None = None
                      ) -> tuple[SampledSet, SampledSet]:
    """Draw the I2T then the T2I set from `rng` in exactly the published draw order."""
    num_products = len(product_rows)
    if not options.neg_len < num_products - 1:
        raise ValueError(f"neg_len ({options.neg_len}) must be < number of products - 1 ({num_products - 1})")
    pools = subcategory_pools(product_rows, row_subcategory, product_ids)
    subcats = list(pools)
    neg_len, threshold = options.neg_len, options.threshold
    clean = options.exclude_positive_from_t2i_pool

    order = list(range(num_products))
    rng.shuffle(order)
    i2t_q, i2t_c = [], []
    for p in order[: options.set_len]:
        row = rng.choice(product_rows[p])
        remaining = list(subcats)
        rng.shuffle(remaining)
        sub = row_subcategory[row]
        remaining.remove(sub)
        negatives = rng.sample(_negative_pool(pools, sub, p, remaining, threshold, clean), neg_len)
        i2t_q.append(int(row))
        i2t_c.append([*negatives, p])

    order = list(range(num_products))
    rng.shuffle(order)
    t2i_q, t2i_c = [], []
    for p in order[: options.set_len]:
        remaining = list(subcats)
        rng.shuffle(remaining)
        row = rng.choice(product_rows[p])
        sub = row_subcategory[row]
        if clean:  # published: `sub` stays in the list, so p and its subcategory can re-enter the pool
            remaining.remove(sub)
        negatives = rng.sample(_negative_pool(pools, sub, p, remaining, threshold, clean), neg_len)
        t2i_q.append(p)
        t2i_c.append([int(rng.choice(product_rows[q])) for q in negatives] + [int(row)])
    return SampledSet("i2t", i2t_q, i2t_c), SampledSet("t2i", t2i_q, t2i_c)


def data_fingerprint(product_rows: Sequence[Sequence[int]], row_subcategory: Sequence[str],
                     product_ids: Sequence[int] | None = None) -> str:
    """SHA-256 of the inputs the sets depend on, so saved sets are never applied to other data."""
    blob = json.dumps([[list(map(int, r)) for r in product_rows], list(row_subcategory),
                       None if product_ids is None else list(map(int, product_ids))], separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class SampledSetProvider:
    """Hands out the protocol-B sets for an evaluation.

    fixed: drawn once per (data, options) from a dedicated `random.Random(seed)`, saved to
    `<directory>/<name>_{i2t,t2i}.json` and loaded from there afterwards (same sets for every epoch and
    model; a file drawn for other data or options is an error). legacy: Python's global `random`,
    seeded once here (start-up) with `seed`, redrawn at every call and never saved.
    """

    def __init__(self, options: SampledOptions = SampledOptions(), directory: str | Path | None = None,
                 name: str = SETS_NAME) -> None:
        self.options = options
        self.directory = Path(directory) if directory is not None else None
        self.name = name
        self._cache: tuple[str, SampledSet, SampledSet] | None = None
        if options.sets == "legacy":
            random.seed(options.seed)

    def paths(self) -> dict[str, Path] | None:
        if self.directory is None:
            return None
        return {d: self.directory / f"{self.name}_{d}.json" for d in ("i2t", "t2i")}

    def get(self, product_rows: Sequence[Sequence[int]], row_subcategory: Sequence[str],
            product_ids: Sequence[int] | None = None) -> tuple[SampledSet, SampledSet]:
        if self.options.sets == "legacy":
            # The module-level functions are the global generator's methods, so the module itself serves.
            return draw_sampled_sets(product_rows, row_subcategory, random, self.options, product_ids)
        fingerprint = data_fingerprint(product_rows, row_subcategory, product_ids)
        if self._cache is not None and self._cache[0] == fingerprint:
            return self._cache[1], self._cache[2]
        meta = {"options": self.options.as_dict(), "num_products": len(product_rows),
                "num_rows": len(row_subcategory), "fingerprint": fingerprint}
        paths = self.paths()
        if paths is not None and all(p.is_file() for p in paths.values()):
            i2t, t2i = (load_sampled_set(paths[d], d, meta) for d in ("i2t", "t2i"))
        else:
            rng = random.Random(self.options.seed)
            i2t, t2i = draw_sampled_sets(product_rows, row_subcategory, rng, self.options, product_ids)
            if paths is not None:
                for sset in (i2t, t2i):
                    save_sampled_set(paths[sset.direction], sset, meta)
        self._cache = (fingerprint, i2t, t2i)
        return i2t, t2i


def save_sampled_set(path: str | Path, sset: SampledSet, meta: Mapping[str, Any]) -> Path:
    """JSON with the direction, how the set was drawn (`meta`), query indices and candidate lists."""
    payload = {"direction": sset.direction, **meta, "queries": sset.queries, "candidates": sset.candidates}
    return write_json(path, payload, indent=None, sort_keys=True)


def load_sampled_set(path: str | Path, direction: str, meta: Mapping[str, Any] | None = None) -> SampledSet:
    """Read a saved set; with `meta`, it must have been drawn with the same options from the same data."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        queries, candidates = payload["queries"], payload["candidates"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: unreadable sampled set ({exc})") from None
    if payload.get("direction") != direction:
        raise DataError(f"{path}: direction {payload.get('direction')!r}, expected {direction!r}")
    if meta is not None:
        stale = [k for k in meta if json.loads(json.dumps(meta[k])) != payload.get(k)]
        if stale:
            raise DataError(f"{path}: drawn with other data or options ({', '.join(stale)} differ); delete "
                            "it (and its twin) to redraw, or use another eval_sets folder")
    if len(queries) != len(candidates) or not queries or len({len(c) for c in candidates}) != 1:
        raise DataError(f"{path}: malformed sampled set (queries and candidate lists do not match)")
    return SampledSet(direction, [int(q) for q in queries], [[int(c) for c in row] for row in candidates])


# ----------------------------------------------------------------------------- sampled protocol: scoring


def sampled_scores(sset: SampledSet, *, scores: torch.Tensor | None = None, text_emb: torch.Tensor | None = None,
                   image_emb: torch.Tensor | None = None, chunk: int = 128) -> torch.Tensor:
    """The (M, K+1) scores of each query against its candidates, gathered from S (P x N) or embeddings."""
    q, c = sset.tensors()
    if scores is not None:
        q, c = q.to(scores.device), c.to(scores.device)
        return scores[c, q[:, None]] if sset.direction == "i2t" else scores[q[:, None], c]
    if text_emb is None or image_emb is None:
        raise ValueError("give the score matrix or both text and image embeddings")
    queries, cands = (image_emb, text_emb) if sset.direction == "i2t" else (text_emb, image_emb)
    q, c = q.to(queries.device), c.to(cands.device)
    parts = [torch.einsum("md,mkd->mk", queries[q[a : a + chunk]].float(), cands[c[a : a + chunk]].float())
             for a in range(0, q.numel(), chunk)]
    return torch.cat(parts)


def sampled_ranks(sset: SampledSet, **kwargs: Any) -> torch.Tensor:
    """Rank of the positive (last candidate) of every sampled query, via the shared recall function."""
    sub = sampled_scores(sset, **kwargs)
    positives = IndexSets.single(torch.full((sub.shape[0],), sub.shape[1] - 1, dtype=torch.long))
    return best_positive_ranks(positives, scores=sub)


def sampled_metrics(i2t_ranks: torch.Tensor, t2i_ranks: torch.Tensor) -> dict[str, float]:
    """`tiny_txt_r*`, `tiny_img_r*` and `tiny_sum` (the published key names)."""
    m = recall_at_k(i2t_ranks, KS, "tiny_txt_r") | recall_at_k(t2i_ranks, KS, "tiny_img_r")
    m["tiny_sum"] = sum(m[f"tiny_{d}_r{k}"] for d in ("txt", "img") for k in KS)
    return {name: m[name] for name in sampled_metric_names()}


# ----------------------------------------------------------------------------- driver and report


@dataclass(frozen=True)
class CMROptions:
    """Which protocols to run; `blip` = BLIP-variant full protocol (top-`k_test` scores kept per query);
    `rerank_k` > 0 re-ranks each full-protocol query's top `rerank_k` by a pair scorer (`rerank_full`; 0 =
    embeddings only, as published)."""

    protocol: str = "both"
    blip: bool = False
    k_test: int = 256
    sampled: SampledOptions = field(default_factory=SampledOptions)
    rerank_k: int = 0

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.blip and self.protocol != "full":
            raise ValueError("the BLIP variant evaluates the full protocol only (protocol: full)")
        if self.rerank_k < 0:
            raise ValueError(f"rerank_k must be >= 0 (0 = off), got {self.rerank_k}")
        if self.rerank_k and (self.blip or self.protocol == "sampled"):
            raise ValueError("rerank_k re-ranks the full protocol of the ALBEF variant only")


@dataclass
class CMRResult:
    metrics: dict[str, float]
    options: dict[str, Any]
    ranks: dict[str, torch.Tensor]
    top: dict[str, TopK] = field(default_factory=dict)  # full protocol `i2t` / `t2i` with `top_k` > 0


def evaluate_cmr(product_rows: Sequence[Sequence[int]], row_subcategory: Sequence[str] | None = None, *,
                 scores: torch.Tensor | None = None, text_emb: torch.Tensor | None = None,
                 image_emb: torch.Tensor | None = None, options: CMROptions = CMROptions(),
                 sampled_sets: SampledSetProvider | None = None, product_ids: Sequence[int] | None = None,
                 device: torch.device | str | None = None, chunk_size: int | None = None,
                 top_k: int = 0, pair_scores: PairScorer | None = None) -> CMRResult:
    """Run the requested protocols on one score matrix / embedding set; metrics under the published names.
    `top_k` > 0 also keeps each full-protocol query's `top_k` best (`CMRResult.top`). With
    `options.rerank_k` the full-protocol metrics, ranks and top lists are the re-ranked ones (`pair_scores`
    scores the pairs; `rerank_full`), `options["rerank"]` records the rule and the embedding-only metrics
    and `ranks` keeps the embedding ranks as `i2t_embedding` / `t2i_embedding`."""
    index = ProductIndex.build(product_rows, len(row_subcategory) if row_subcategory is not None else None)
    _check_inputs(index, scores, text_emb, image_emb)
    feats = dict(scores=scores, text_emb=text_emb, image_emb=image_emb)
    metrics: dict[str, float] = {}
    ranks: dict[str, torch.Tensor] = {}
    top: dict[str, TopK] = {}
    record: dict[str, Any] = {"protocol": options.protocol, "blip": options.blip, "tie_break": TIE_BREAK,
                              "num_products": index.num_products, "num_rows": index.num_rows}
    if options.protocol in ("full", "both"):
        keep = options.k_test if options.blip else None
        ranks["i2t"], ranks["t2i"] = full_ranks(index, keep_top_k=keep, device=device, chunk_size=chunk_size,
                                                **feats)
        scoring: dict[str, Any] = dict(keep_top_k=keep, device=device, chunk_size=chunk_size, **feats)
        candidates = None
        if options.rerank_k:
            if pair_scores is None:
                raise ValueError("rerank_k needs a pair scorer (pair_scores)")
            embedding_metrics = full_metrics(ranks["i2t"], ranks["t2i"])
            candidates = full_candidates(index, max(options.rerank_k, check_k(top_k)), **scoring)
            new_ranks, candidates, scored = rerank_full(index, candidates, options.rerank_k, pair_scores, ranks)
            ranks["i2t_embedding"], ranks["t2i_embedding"] = ranks["i2t"], ranks["t2i"]
            ranks |= new_ranks
            record["rerank"] = {"k": options.rerank_k, "order": RERANK_ORDER, "applies_to": "full protocol",
                                "top_k_scores": "embedding similarities, listed in the re-ranked order",
                                "pairs_scored": scored, "embedding_metrics": embedding_metrics}
        metrics |= full_metrics(ranks["i2t"], ranks["t2i"], blip=options.blip)
        if check_k(top_k):
            top = full_top_k(index, top_k, ranks, candidates=candidates, **scoring)
        if options.blip:
            record["k_test"] = options.k_test
    if options.protocol in ("sampled", "both"):
        if row_subcategory is None:
            raise ValueError("the sampled protocol needs row_subcategory")
        provider = sampled_sets if sampled_sets is not None else SampledSetProvider(options.sampled)
        i2t, t2i = provider.get(index.product_rows, row_subcategory, product_ids)
        ranks["tiny_i2t"] = sampled_ranks(i2t, **feats)
        ranks["tiny_t2i"] = sampled_ranks(t2i, **feats)
        metrics |= sampled_metrics(ranks["tiny_i2t"], ranks["tiny_t2i"])
        paths = provider.paths()
        record["sampled"] = {**provider.options.as_dict(), "queries": [len(i2t.queries), len(t2i.queries)],
                             "files": None if paths is None else {k: str(v) for k, v in paths.items()}}
    return CMRResult(metrics, record, ranks, top)


def format_cmr_table(metrics: Mapping[str, float]) -> str:
    """The paper's table: rows I2T / T2I, columns R@1/5/10 of the full and the sampled protocol."""
    header = ["", *(f"full R@{k}" for k in KS), *(f"sampled R@{k}" for k in KS)]
    rows = [[name, *(metrics.get(f"{d}_r{k}") for k in KS), *(metrics.get(f"tiny_{d}_r{k}") for k in KS)]
            for name, d in (("I2T", "txt"), ("T2I", "img"))]
    summary = [f"{k}={metrics[k]:.2f}" for k in ("r_mean", "full_sum", "tiny_sum") if k in metrics]
    return format_table(header, rows) + ("\n" + "  ".join(summary) if summary else "")


def write_cmr_report(path: str | Path, result: CMRResult, extra: Mapping[str, Any] | None = None) -> Path:
    """Result JSON with the metrics and the protocol options used (see evaluation.report)."""
    return write_report(path, TASK, result.metrics, result.options, extra)
