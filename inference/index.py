"""Embedding index of a catalogue: store L2-normalised vectors with their ids and paths, search them.

It knows nothing about models: the caller encodes, normalises and supplies a JSON `meta` dict (for
`search.py`: model fingerprint, task, kind, dim, attribute, attributes, source), which `check_compatible`
compares with what a model would produce.

File format (one file, conventionally `<name>.index.npz`): an uncompressed NumPy `.npz` (a ZIP of `.npy`
members, fixed member timestamps, so the same content always gives the same bytes), members:

* `columns`: the embeddings **transposed**, a (D, N) float32 or float16 C-contiguous matrix. A query is
  scored as `q @ columns` (a row-major matrix-vector product, ~2x faster on CPU than `q @ E.T` with E
  stored N x D); `EmbeddingIndex.embeddings` is the (N, D) view.
* `ids`, `paths`: UTF-8 bytes (uint8) of the N strings joined by NUL (strings may not contain NUL; paths
  may be empty strings).
* `header`: UTF-8 JSON: {"format": "fashionfine-index/1", "count": N, "dim": D, "dtype", "meta": {...},
  "digest"}, `digest` a BLAKE2b hash of the content, which an approximate (faiss) index records.

ZIP CRCs make a truncated or corrupt file fail to read (one line naming it). Large galleries are built
with `IndexBuilder` (resumable, chunks in `<path>.parts/`); `build_faiss` writes `<path>.faiss` (an
IVF or HNSW faiss index, inner product, plus the digest of the index it was built from).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.atomic import atomic_write, remove_stale_temps, write_json
from engine.errors import DataError
from evaluation.recall import top_k_candidates

FORMAT = "fashionfine-index/1"
PARTS_FORMAT = "fashionfine-index-parts/1"
FAISS_FORMAT = "fashionfine-faiss/1"
DTYPES = {"float32": np.float32, "float16": np.float16}
DEFAULT_KEYS = ("model", "task", "kind", "dim", "attribute")
# Candidates scored per `top_k_candidates` call on CPU: measured fastest at 1M x 256 (benchmarks/README.md),
# for one query and for batches; float16 chunks are converted into one reused float32 buffer.
CPU_CANDIDATE_CHUNK = 1 << 15
DEFAULT_NPROBE_PER_NLIST = 1 / 125  # IVF: nprobe 32 of nlist 4000 at 1M: recall@10 0.96 (benchmarks/README.md)
MIN_NPROBE = 16  # small galleries: few, large lists; probing at least 16 keeps recall up
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, KeyError, EOFError, OSError, zlib.error,
                UnicodeDecodeError)


# ---------------------------------------------------------------------------------------------- file helpers
def _write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An uncompressed .npz with fixed timestamps (same content, same bytes), written atomically."""
    with atomic_write(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            with z.open(info, "w", force_zip64=True) as out:
                np.lib.format.write_array(out, np.ascontiguousarray(array), allow_pickle=False)


def _read_arrays(path: Path, what: str, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The members `names` (default: all) of an .npz; a missing, truncated or malformed file is one line."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {n: z[n] for n in (names if names is not None else z.files)}
    except _READ_ERRORS as e:
        raise DataError(f"{what} {path} is truncated or malformed ({type(e).__name__}: {e})") from None


def _pack_strings(values: Sequence[str]) -> np.ndarray:
    return np.frombuffer("\x00".join(values).encode("utf-8"), dtype=np.uint8)


def _unpack_strings(blob: np.ndarray, count: int) -> list[str]:
    values = blob.tobytes().decode("utf-8").split("\x00")
    if len(values) != count:
        raise ValueError(f"{len(values)} strings for {count} items")
    return values


def _header(arrays: dict[str, np.ndarray], path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(arrays["header"].tobytes().decode("utf-8"))
    except (KeyError, ValueError) as e:
        raise DataError(f"{what} {path} has no readable header ({e})") from None


def _canonical(meta: dict[str, Any]) -> dict[str, Any]:
    """`meta` as it reads back from JSON (tuples become lists); refuses what JSON cannot hold."""
    try:
        return json.loads(json.dumps(meta, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise ValueError(f"index meta must be JSON-serialisable: {e}") from None


def _digest(header: dict[str, Any], columns: np.ndarray, ids: np.ndarray, paths: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(header, sort_keys=True).encode())
    for part in (columns, ids, paths):
        h.update(np.ascontiguousarray(part).data)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------- the index
@dataclass
class EmbeddingIndex:
    """A loaded index: `columns` (D, N) tensor, `ids`, `paths`, the caller's `meta`, the content `digest`."""

    path: Path
    columns: torch.Tensor
    ids: list[str]
    paths: list[str]
    meta: dict[str, Any]
    digest: str
    _faiss: Any = field(default=None, repr=False, compare=False)
    _buffer: torch.Tensor | None = field(default=None, repr=False, compare=False)  # float16 -> float32 chunks

    def __len__(self) -> int:
        return self.columns.shape[1]

    @property
    def dim(self) -> int:
        return self.columns.shape[0]

    @property
    def dtype(self) -> str:
        return "float16" if self.columns.dtype == torch.float16 else "float32"

    @property
    def embeddings(self) -> torch.Tensor:
        """The (N, D) embeddings (a transposed view of `columns`)."""
        return self.columns.T

    def check_compatible(self, expected: dict[str, Any], keys: Sequence[str] = DEFAULT_KEYS) -> None:
        """Raise DataError (one line: the field and both values) where `expected` (what this model would put in
        the meta) differs from the index's meta in one of `keys` present in `expected`."""
        attribute = expected.get("attribute")
        known = expected.get("attributes") or self.meta.get("attributes")
        if "attribute" in keys and attribute is not None and known and attribute not in known:
            raise DataError(f"unknown attribute {attribute!r} (the model knows {', '.join(map(str, known))})")
        for key in keys:
            if key not in expected:
                continue
            want, have = expected[key], self.meta.get(key)
            if key == "dim":
                have = self.dim if have is None else have
            if _canonical({"v": want}) == _canonical({"v": have}):
                continue
            if key == "model":
                raise DataError(f"index {self.path} was built by model {have}, this model is {want}")
            if key == "dim":
                raise DataError(f"index {self.path}: embedding dimension {have} vs {want} of this model")
            if key == "attribute":
                raise DataError(f"index {self.path} holds attribute {have} embeddings, asked for attribute {want}")
            raise DataError(f"index {self.path} has {key} {have!r}, expected {want!r}")


def read_index(path: str | Path) -> EmbeddingIndex:
    """Load an index file; a missing (FileNotFoundError), truncated or malformed (DataError) file is one line."""
    path = Path(path)
    what = "embedding index"
    arrays = _read_arrays(path, what)
    header = _header(arrays, path, what)
    try:
        if header.get("format") != FORMAT:
            raise ValueError(f"format {header.get('format')!r}, expected {FORMAT!r}")
        columns = arrays["columns"]
        count, dim, dtype = int(header["count"]), int(header["dim"]), header["dtype"]
        if columns.shape != (dim, count) or columns.dtype != DTYPES[dtype]:
            raise ValueError(f"embeddings {columns.shape} {columns.dtype}, header says ({dim}, {count}) {dtype}")
        ids = _unpack_strings(arrays["ids"], count)
        paths = _unpack_strings(arrays["paths"], count)
        meta, digest = header["meta"], str(header["digest"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{what} {path} is malformed ({type(e).__name__}: {e})") from None
    return EmbeddingIndex(path, torch.from_numpy(columns), ids, paths, meta, digest)


def _check_items(ids: Sequence[str], paths: Sequence[str] | None, embeddings: Any, dim: int | None,
                 np_dtype: type) -> tuple[list[str], list[str], np.ndarray]:
    """Validated (ids, paths, (n, D) array of the index dtype) of one batch."""
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().to("cpu", torch.float32).numpy()
    rows = np.asarray(embeddings, dtype=np.float32)
    ids = [str(i) for i in ids]
    paths = [""] * len(ids) if paths is None else [str(p) for p in paths]
    if rows.ndim != 2 or rows.shape[0] != len(ids) or len(paths) != len(ids):
        raise ValueError(f"a batch needs (n, D) embeddings and n ids and paths: got {rows.shape}, "
                         f"{len(ids)} ids, {len(paths)} paths")
    if dim is not None and rows.shape[1] != dim:
        raise DataError(f"embeddings of dimension {rows.shape[1]}, the index holds dimension {dim}")
    if not np.isfinite(rows).all():
        raise DataError(f"non-finite embeddings among items {ids[0]!r}..{ids[-1]!r}")
    if any("\x00" in s for s in ids) or any("\x00" in s for s in paths):
        raise DataError("an id or path contains a NUL character")
    return ids, paths, rows.astype(np_dtype)  # a copy: the caller may reuse its batch buffer


def _write_index_file(path: Path, columns: np.ndarray, ids: list[str], paths: list[str],
                      meta: dict[str, Any], dtype: str) -> Path:
    ids_blob, paths_blob = _pack_strings(ids), _pack_strings(paths)
    header = {"format": FORMAT, "count": columns.shape[1], "dim": columns.shape[0], "dtype": dtype, "meta": meta}
    header["digest"] = _digest(header, columns, ids_blob, paths_blob)
    head = np.frombuffer(json.dumps(header, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    _write_arrays(path, {"header": head, "columns": columns, "ids": ids_blob, "paths": paths_blob})
    return path


def _empty_gallery(meta: dict[str, Any], path: Path) -> DataError:
    source = meta.get("source")
    return DataError(f"empty gallery{f' {source}' if source else ''}: nothing to index into {path}")


def write_index(path: str | Path, ids: Sequence[str], paths: Sequence[str] | None, embeddings: Any,
                meta: dict[str, Any], dtype: str = "float32") -> Path:
    """Write a whole index at once (small galleries; `IndexBuilder` for large ones)."""
    path, meta = Path(path), _canonical(meta)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if len(ids) == 0:
        raise _empty_gallery(meta, path)
    ids, paths, rows = _check_items(ids, paths, embeddings, meta.get("dim"), DTYPES[dtype])
    return _write_index_file(path, np.ascontiguousarray(rows.T), ids, paths, meta, dtype)


# -------------------------------------------------------------------------------------- resumable building
def parts_folder(path: str | Path) -> Path:
    """The side folder where `IndexBuilder` keeps the finished chunks of `path`."""
    path = Path(path)
    return path.with_name(path.name + ".parts")


class IndexBuilder:
    """Build an index batch by batch; finished chunks of `chunk_items` items survive an interruption.

    Re-created with the same arguments after an interruption, `done_items` says how many leading items are
    already stored: the caller skips them and `add`s the rest in the same order. Parts started with another
    meta / dtype / chunk size are refused (DataError), or deleted first with `restart=True`.
    """

    def __init__(self, path: str | Path, meta: dict[str, Any], dtype: str = "float32", *,
                 chunk_items: int = 65536, restart: bool = False) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if chunk_items < 1:
            raise ValueError(f"chunk_items must be >= 1, got {chunk_items}")
        self.path, self.meta, self.dtype, self.chunk_items = Path(path), _canonical(meta), dtype, chunk_items
        self.parts = parts_folder(self.path)
        self.manifest = {"format": PARTS_FORMAT, "meta": self.meta, "dtype": dtype, "chunk_items": chunk_items}
        self.dim: int | None = self.meta.get("dim")
        self._ids: list[str] = []
        self._paths: list[str] = []
        self._rows: list[np.ndarray] = []
        self._buffered = 0
        self.num_parts = self._open(restart)

    @property
    def done_items(self) -> int:
        """Leading items stored in finished chunks (skip them when resuming)."""
        return self.num_parts * self.chunk_items

    @property
    def num_items(self) -> int:
        """Items added so far, stored or buffered."""
        return self.done_items + self._buffered

    def _part(self, i: int) -> Path:
        return self.parts / f"part-{i:06d}.npz"

    def _open(self, restart: bool) -> int:
        """Number of finished chunks of a matching earlier build (0 when none); refuses a mismatching one."""
        if restart and self.parts.exists():
            shutil.rmtree(self.parts)
        if self.parts.is_dir() and any(self.parts.iterdir()):
            manifest_path = self.parts / "manifest.json"
            try:
                manifest = json.loads(manifest_path.read_text())
            except (OSError, ValueError):
                raise DataError(f"{self.parts} is not a readable build folder of {self.path.name}; delete it or "
                                f"restart the build") from None
            if manifest != self.manifest:
                raise DataError(f"{self.parts} holds an interrupted build with other settings "
                                f"({_difference(manifest, self.manifest)}); delete it or restart the build")
            remove_stale_temps(self.parts)
            return self._scan()
        self.parts.mkdir(parents=True, exist_ok=True)
        write_json(self.parts / "manifest.json", self.manifest)
        return 0

    def _scan(self) -> int:
        """Leading finished parts; a part that does not read back (and any after it) is dropped."""
        n = 0
        while self._part(n).is_file():
            try:
                header = _header(_read_arrays(self._part(n), "index part", ["header"]), self._part(n), "index part")
                ok = header.get("count") == self.chunk_items and header.get("start") == n * self.chunk_items
            except DataError:
                ok = False
            if not ok:
                break
            self.dim = self.dim if self.dim is not None else header.get("dim")
            n += 1
        later = sorted(p for p in self.parts.glob("part-*.npz") if p.name >= self._part(n).name)
        for p in later:
            p.unlink()
        return n

    def add(self, ids: Sequence[str], paths: Sequence[str] | None, embeddings: Any) -> None:
        """Append a batch (n ids, n paths or None, (n, D) L2-normalised embeddings, numpy or torch)."""
        if len(ids) == 0:
            return
        ids, paths, rows = _check_items(ids, paths, embeddings, self.dim, DTYPES[self.dtype])
        self.dim = rows.shape[1]
        self._ids += ids
        self._paths += paths
        self._rows.append(rows)
        self._buffered += len(ids)
        while self._buffered >= self.chunk_items:
            self._flush_part()

    def _take(self, n: int) -> tuple[list[str], list[str], np.ndarray]:
        rows = np.concatenate(self._rows) if len(self._rows) > 1 else self._rows[0]
        ids, paths = self._ids[:n], self._paths[:n]
        self._ids, self._paths = self._ids[n:], self._paths[n:]
        self._rows = [rows[n:]] if rows.shape[0] > n else []
        self._buffered -= n
        return ids, paths, rows[:n]

    def _flush_part(self) -> None:
        ids, paths, rows = self._take(self.chunk_items)
        header = {"count": len(ids), "start": self.done_items, "dim": rows.shape[1]}
        head = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
        _write_arrays(self._part(self.num_parts), {"header": head, "rows": rows, "ids": _pack_strings(ids),
                                                   "paths": _pack_strings(paths)})
        self.num_parts += 1

    def finish(self) -> Path:
        """Assemble the stored chunks and the buffered tail into the index file (atomically), remove the parts."""
        total = self.num_items
        if total == 0:
            shutil.rmtree(self.parts, ignore_errors=True)
            raise _empty_gallery(self.meta, self.path)
        columns = np.empty((self.dim, total), dtype=DTYPES[self.dtype])
        ids: list[str] = []
        paths: list[str] = []
        for i in range(self.num_parts):
            part = _read_arrays(self._part(i), "index part")
            rows = part["rows"]
            start = i * self.chunk_items
            if rows.shape != (self.chunk_items, self.dim) or rows.dtype != columns.dtype:
                raise DataError(f"index part {self._part(i)} is malformed; delete {self.parts} and rebuild")
            columns[:, start:start + self.chunk_items] = rows.T
            ids += _unpack_strings(part["ids"], self.chunk_items)
            paths += _unpack_strings(part["paths"], self.chunk_items)
        if self._buffered:
            tail_ids, tail_paths, rows = self._take(self._buffered)
            columns[:, self.done_items:] = rows.T
            ids += tail_ids
            paths += tail_paths
        _write_index_file(self.path, columns, ids, paths, self.meta, self.dtype)
        shutil.rmtree(self.parts, ignore_errors=True)
        return self.path


def _difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """`key old vs new` of the first differing manifest field (meta fields by their own name)."""
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if key == "meta" and isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if a.get(k) != b.get(k):
                    return f"{k} {a.get(k)} vs {b.get(k)}"
        elif a != b:
            return f"{key} {a} vs {b}"
    return "unknown difference"


# ------------------------------------------------------------------------------------------------- search
def _check_queries(index: EmbeddingIndex, queries: Any) -> torch.Tensor:
    q = torch.as_tensor(queries).detach().to("cpu", torch.float32)
    q = q.unsqueeze(0) if q.dim() == 1 else q
    if q.dim() != 2 or q.shape[0] == 0:
        raise DataError(f"queries must be a non-empty (Q, D) matrix, got shape {tuple(q.shape)}")
    if q.shape[1] != index.dim:
        raise DataError(f"queries have dimension {q.shape[1]}, index {index.path} holds dimension {index.dim}")
    if not bool(torch.isfinite(q).all()):
        raise DataError("non-finite query embeddings")
    return q


def search(index: EmbeddingIndex, queries: Any, k: int, device: str | torch.device = "cpu",
           chunk_size: int | None = None, *, approximate: bool = False, candidate_chunk: int | None = None,
           nprobe: int | None = None, ef_search: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's k best items: ((Q, k) int64 item indices, (Q, k) float32 inner products), CPU tensors.

    Exact (default): in the rank order of `evaluation.recall.top_k_candidates` (descending, ties by lower
    index), candidates scored `candidate_chunk` at a time (float16 converted per chunk) and the chunks' best
    merged by the same function. `approximate=True` searches `<index>.faiss` (`build_faiss`); where it finds
    fewer than k items the missing entries are index -1 with score -inf. k is capped at the item count.
    """
    if k < 1:
        raise DataError(f"k must be >= 1, got {k}")
    q = _check_queries(index, queries)
    k = min(k, len(index))
    if approximate:
        return _faiss_search(index, q, k, nprobe, ef_search)
    dev = torch.device(device)
    n = len(index)
    step = candidate_chunk or (CPU_CANDIDATE_CHUNK if dev.type == "cpu" else n)
    if step >= n:
        return top_k_candidates(q, index.embeddings, k, device=dev, chunk_size=chunk_size)
    convert = index.columns.dtype != torch.float32
    buffer = None
    if convert:  # kept on the index: a fresh 32 MiB buffer per call costs more page faults than the search
        if index._buffer is None or index._buffer.shape != (index.dim, step):
            index._buffer = torch.empty(index.dim, step, dtype=torch.float32)
        buffer = index._buffer
    found, scores = [], []
    for start in range(0, n, step):
        end = min(n, start + step)
        part = index.columns[:, start:end]
        if buffer is not None:
            part = buffer[:, : end - start].copy_(part)
        idx, val = top_k_candidates(q, part.T, min(k, end - start), device=dev, chunk_size=chunk_size)
        found.append(idx.add_(start))
        scores.append(val)
    # equal scores stay in ascending item order across chunks, so the merge keeps the one rank order
    pos, val = top_k_candidates(scores=torch.cat(scores, 1), k=k, chunk_size=chunk_size)
    return torch.cat(found, 1).gather(1, pos), val


# -------------------------------------------------------------------------------------- approximate (faiss)
def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise DataError("approximate search needs faiss: pip install faiss-cpu") from None
    return faiss


def faiss_path(index_path: str | Path) -> Path:
    """Where the approximate index of `index_path` lives."""
    index_path = Path(index_path)
    return index_path.with_name(index_path.name + ".faiss")


def build_faiss(index: EmbeddingIndex, kind: str = "ivf", *, nlist: int | None = None, nprobe: int | None = None,
                m: int = 32, ef_construction: int = 80, ef_search: int = 128, train_items: int | None = None,
                seed: int = 0) -> Path:
    """Build an approximate inner-product index (IVF-Flat: nlist ~ 4 sqrt(N), or HNSW-Flat with `m` links) of
    `index` and save it atomically as `<index>.faiss` with the index's digest; returns that path."""
    faiss = _faiss()
    n, d = len(index), index.dim
    vectors = np.ascontiguousarray(index.embeddings.to(torch.float32).numpy())
    if kind == "ivf":
        nlist = nlist or max(1, min(n // 39, round(4 * math.sqrt(n))))
        nprobe = nprobe or min(nlist, max(MIN_NPROBE, math.ceil(nlist * DEFAULT_NPROBE_PER_NLIST)))
        quantizer = faiss.IndexFlatIP(d)
        built = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        built.cp.niter = 10
        built.cp.seed = seed
        train = train_items or min(n, 39 * nlist)
        sample = np.random.default_rng(seed).choice(n, size=min(n, train), replace=False) if train < n else None
        built.train(vectors if sample is None else vectors[np.sort(sample)])
        built.add(vectors)
        params = {"nlist": nlist, "nprobe": nprobe}
    elif kind == "hnsw":
        built = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
        built.hnsw.efConstruction = ef_construction
        built.add(vectors)
        params = {"m": m, "ef_construction": ef_construction, "ef_search": ef_search}
    else:
        raise ValueError(f"faiss index kind must be 'ivf' or 'hnsw', got {kind!r}")
    del vectors
    header = {"format": FAISS_FORMAT, "kind": kind, "params": params, "count": n, "dim": d,
              "index_digest": index.digest, "meta": index.meta}
    head = np.frombuffer(json.dumps(header, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    out = faiss_path(index.path)
    _write_arrays(out, {"header": head, "faiss": faiss.serialize_index(built)})
    index._faiss = (built, header)
    return out


def load_faiss(index: EmbeddingIndex) -> tuple[Any, dict[str, Any]]:
    """(faiss index, header) of `<index>.faiss`, refused (one line) when built from another index or version."""
    if index._faiss is not None:
        return index._faiss
    faiss = _faiss()
    path, what = faiss_path(index.path), "approximate index"
    if not path.is_file():
        raise FileNotFoundError(f"no approximate index {path} (build one for {index.path.name} first)")
    arrays = _read_arrays(path, what)
    header = _header(arrays, path, what)
    if header.get("format") != FAISS_FORMAT or "faiss" not in arrays:
        raise DataError(f"{what} {path} is malformed (format {header.get('format')!r})")
    if header.get("index_digest") != index.digest:
        raise DataError(f"{what} {path} was built from another version of {index.path.name} "
                        f"(model {header.get('meta', {}).get('model')}); rebuild it")
    try:
        built = faiss.deserialize_index(arrays["faiss"])
    except RuntimeError as e:
        raise DataError(f"{what} {path} is malformed ({str(e).splitlines()[0]})") from None
    if built.ntotal != len(index) or built.d != index.dim:
        raise DataError(f"{what} {path} holds {built.ntotal} x {built.d}, the index {len(index)} x {index.dim}")
    index._faiss = (built, header)
    return index._faiss


def _faiss_search(index: EmbeddingIndex, q: torch.Tensor, k: int, nprobe: int | None, ef_search: int | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    built, header = load_faiss(index)
    params = header["params"]
    if header["kind"] == "ivf":
        built.nprobe = int(nprobe or params["nprobe"])
    else:
        built.hnsw.efSearch = max(k, int(ef_search or params["ef_search"]))
    scores, idx = built.search(np.ascontiguousarray(q.numpy()), k)
    scores = torch.from_numpy(scores).float()
    idx = torch.from_numpy(idx).long()
    scores[idx < 0] = float("-inf")
    return idx, scores
