"""The catalogue embedding index (inference/index.py): file round trip, exact search order, resumable
building, one-line refusals, approximate (faiss) search."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from engine.errors import DataError
from inference.index import (
    IndexBuilder,
    build_faiss,
    faiss_path,
    load_faiss,
    parts_folder,
    read_index,
    search,
    write_index,
)

META = {"model": "sha-aaaa", "task": "fine", "kind": "image", "dim": 16, "attribute": None, "attributes": None,
        "source": "gallery/"}


def items(n: int, dim: int = 16, seed: int = 0) -> tuple[list[str], list[str], np.ndarray]:
    """Ids, paths and embeddings whose products are exact in float32 and float16 (many exact ties)."""
    rng = np.random.default_rng(seed)
    emb = rng.integers(-2, 3, size=(n, dim)).astype(np.float32) / 8
    return [f"item{i}" for i in range(n)], [f"img/{i}.jpg" if i % 3 else "" for i in range(n)], emb


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text and text
    return text


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip(tmp_path, dtype):
    ids, paths, emb = items(50)
    ids[3] = "ünï cødé / id"
    path = write_index(tmp_path / "cat.index.npz", ids, paths, torch.from_numpy(emb), META, dtype=dtype)
    index = read_index(path)
    assert (index.ids, index.paths, index.meta, index.dtype, len(index), index.dim) == (ids, paths, META, dtype, 50, 16)
    got = index.embeddings.float().numpy()
    if dtype == "float32":
        assert np.array_equal(got, emb)
    else:
        noise = np.random.default_rng(1).standard_normal((50, 16)).astype(np.float32)
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        write_index(path, ids, paths, noise, META, dtype="float16")
        assert np.abs(read_index(path).embeddings.float().numpy() - noise).max() <= 2 ** -11
    assert write_index(tmp_path / "again.npz", ids, paths, emb, META, dtype=dtype).read_bytes() == \
        write_index(tmp_path / "again2.npz", ids, paths, emb, META, dtype=dtype).read_bytes()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("chunk", [None, 7, 100, 1000])
def test_exact_search_is_the_stable_descending_order(tmp_path, dtype, chunk):
    ids, paths, emb = items(1000)
    index = read_index(write_index(tmp_path / "c.npz", ids, paths, emb, META, dtype=dtype))
    queries = items(9, seed=2)[2]
    ref = torch.sort(torch.from_numpy(queries).double() @ torch.from_numpy(emb).double().T, dim=1,
                     descending=True, stable=True)
    for k in (1, 10, 1000):
        idx, scores = search(index, queries, k, candidate_chunk=chunk, chunk_size=4)
        assert idx.dtype == torch.int64 and scores.dtype == torch.float32 and idx.shape == (9, k)
        assert torch.equal(idx, ref.indices[:, :k])
        assert torch.equal(scores.double(), ref.values[:, :k])
    assert torch.equal(search(index, queries[0], 5000)[0], ref.indices[:1])  # one 1-D query, k capped at N


def build(path, meta, batches, chunk_items, stop_after=None, dtype="float32"):
    """Add (ids, paths, rows) batches from the builder's resume point; stop after `stop_after` add() calls."""
    builder = IndexBuilder(path, meta, dtype, chunk_items=chunk_items)
    skip, calls = builder.done_items, 0
    for ids, paths, rows in batches:
        if skip >= len(ids):
            skip -= len(ids)
            continue
        builder.add(ids[skip:], paths[skip:], rows[skip:])
        skip, calls = 0, calls + 1
        if calls == stop_after:
            return builder
    return builder.finish()


def test_resume_after_an_interruption_gives_the_identical_file(tmp_path):
    ids, paths, emb = items(150)
    batches = [(ids[s:s + 10], paths[s:s + 10], emb[s:s + 10]) for s in range(0, 150, 10)]
    reference = build(tmp_path / "ref.npz", META, batches, chunk_items=32)
    target = tmp_path / "cat.npz"
    interrupted = build(target, META, batches, chunk_items=32, stop_after=7)  # 70 items added, 64 stored
    assert interrupted.done_items == 64 and not target.exists()
    (parts_folder(target) / ".part-000002.npz.0123abcd.tmp").write_bytes(b"half a chunk")  # a killed write
    with pytest.raises(DataError) as refused:
        IndexBuilder(target, {**META, "model": "sha-bbbb"}, chunk_items=32)
    assert "model sha-aaaa vs sha-bbbb" in one_line(refused)
    assert IndexBuilder(target, META, chunk_items=32).done_items == 64
    assert build(target, META, batches, chunk_items=32) == target
    assert target.read_bytes() == reference.read_bytes() and not parts_folder(target).exists()
    assert read_index(target).ids == ids

    interrupted = build(target, META, batches, chunk_items=32, stop_after=10)  # 3 parts stored
    part = parts_folder(target) / "part-000001.npz"
    part.write_bytes(part.read_bytes()[:-50])  # a damaged part: it and the later ones are done again
    assert IndexBuilder(target, META, chunk_items=32).done_items == 32
    assert IndexBuilder(target, {**META, "model": "x"}, chunk_items=32, restart=True).done_items == 0


def test_refusals_are_one_line(tmp_path):
    ids, paths, emb = items(40)
    path = write_index(tmp_path / "cat.npz", ids, paths, emb, {**META, "attribute": "sleeve",
                                                               "attributes": ["sleeve", "collar"]})
    index = read_index(path)
    index.check_compatible({"model": "sha-aaaa", "dim": 16, "attribute": "sleeve", "task": "fine"})
    cases = [({"model": "sha-bbbb"}, "built by model sha-aaaa, this model is sha-bbbb"),
             ({"dim": 128}, "dimension 16 vs 128"),
             ({"attribute": "collar"}, "attribute sleeve embeddings, asked for attribute collar"),
             ({"attribute": "hood", "attributes": ["sleeve", "collar"]}, "unknown attribute 'hood'"),
             ({"kind": "text"}, "kind 'image', expected 'text'")]
    for expected, words in cases:
        with pytest.raises(DataError) as e:
            index.check_compatible(expected)
        assert words in one_line(e) and (str(path) in str(e.value) or "unknown" in words)
    with pytest.raises(DataError) as e:
        search(index, np.zeros((2, 8), np.float32), 5)
    assert "dimension 8" in one_line(e) and "dimension 16" in str(e.value)
    with pytest.raises(DataError) as e:
        write_index(tmp_path / "empty.npz", [], [], np.zeros((0, 16)), META)
    assert "empty gallery gallery/" in one_line(e)
    with pytest.raises(DataError) as e:
        IndexBuilder(tmp_path / "empty2.npz", META).finish()
    assert "empty gallery" in one_line(e) and not (tmp_path / "empty2.npz").exists()
    for cut in (10, len(path.read_bytes()) // 2, len(path.read_bytes()) - 5):
        broken = tmp_path / f"broken{cut}.npz"
        broken.write_bytes(path.read_bytes()[:cut])
        with pytest.raises(DataError) as e:
            read_index(broken)
        assert str(broken) in one_line(e)
    flipped = bytearray(path.read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF  # inside the embeddings: the ZIP CRC catches it
    (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
    with pytest.raises(DataError):
        read_index(tmp_path / "flipped.npz")
    with pytest.raises(FileNotFoundError) as e:
        read_index(tmp_path / "missing.npz")
    assert "missing.npz" in one_line(e)


def clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_search_recall(tmp_path, kind):
    pytest.importorskip("faiss")
    emb = clustered(3000, 32, 30, seed=0)
    ids = [str(i) for i in range(3000)]
    meta = {**META, "dim": 32}
    index = read_index(write_index(tmp_path / "cat.npz", ids, None, emb, meta))
    out = build_faiss(index, kind)
    assert out == faiss_path(index.path) and out.is_file()
    queries = clustered(50, 32, 30, seed=1)
    exact = search(index, queries, 10)[0]
    fresh = read_index(index.path)  # loads the saved faiss file
    approx, scores = search(fresh, queries, 10, approximate=True)
    recall = np.mean([len(set(a.tolist()) & set(e.tolist())) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.9, recall
    assert torch.allclose(scores[:, 0], (torch.from_numpy(queries) @ torch.from_numpy(emb).T).max(1).values,
                          atol=1e-5) or recall < 1

    write_index(index.path, ids, None, clustered(3000, 32, 30, seed=5), meta)  # the index changed
    with pytest.raises(DataError) as e:
        load_faiss(read_index(index.path))
    assert "another version" in one_line(e)
    faiss_path(index.path).unlink()
    with pytest.raises(FileNotFoundError):
        search(read_index(index.path), queries, 10, approximate=True)


def test_without_faiss_the_message_says_how_to_install(tmp_path, monkeypatch):
    ids, paths, emb = items(20)
    index = read_index(write_index(tmp_path / "c.npz", ids, paths, emb, META))
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(DataError) as e:
        build_faiss(index)
    assert "pip install faiss-cpu" in one_line(e)
