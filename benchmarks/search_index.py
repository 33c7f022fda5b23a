"""Catalogue search at scale: build, read and query an `inference.index` embedding index (what `search.py index`
and `search.py query` do after encoding), exact and with faiss.

The vectors are synthetic and clustered, so that approximate recall means something: `--clusters` random
Gaussian centres; each item (and each query) is a random centre plus isotropic Gaussian noise of norm ~`--spread`
relative to the centre, L2-normalised. Items are generated and added in batches of `--batch` (as an encoder
would), through `IndexBuilder` with `--chunk-items` items per resumable chunk.

Reported per dtype (float32, float16): build (add + finish: parts written, assembled, final file written), read
(`read_index`), the latency of one query per call (median of `--single` calls) and of `--queries` queries per
call (total / queries, median of `--repeat`), k = 10. With faiss (`--faiss ivf hnsw`): build time (train + add +
write), latency at each `--nprobe` (IVF) / `--ef` (HNSW) and recall@10 against the exact top 10.

    python benchmarks/search_index.py                                   # 1M x 256, float32 and float16, IVF
    python benchmarks/search_index.py --items 100000 --faiss ivf hnsw --nprobe 8 16 32
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.index import IndexBuilder, build_faiss, read_index, search  # noqa: E402


def clustered_batches(n: int, dim: int, clusters: int, spread: float, batch: int, seed: int):
    """(start, (b, dim) float32 unit rows) batches of clustered vectors."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(12345).standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    for start in range(0, n, batch):
        b = min(batch, n - start)
        x = centres[rng.integers(0, clusters, b)]
        x += (spread / np.sqrt(dim)) * rng.standard_normal((b, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield start, x


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def latency(fn, calls: int) -> float:
    """Median milliseconds of `calls` calls after one warm-up."""
    fn(0)
    times = []
    for i in range(calls):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def recall_at(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return float(np.mean([len(set(a.tolist()) & set(e.tolist())) / exact.shape[1] for a, e in zip(approx, exact)]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=64, help="queries per batched call (and for the recall)")
    p.add_argument("--single", type=int, default=20, help="one-query calls timed")
    p.add_argument("--repeat", type=int, default=3, help="batched calls timed")
    p.add_argument("--clusters", type=int, default=10000)
    p.add_argument("--spread", type=float, default=1.0, help="noise norm relative to the unit centre")
    p.add_argument("--batch", type=int, default=8192, help="items per add() call")
    p.add_argument("--chunk-items", type=int, default=65536)
    p.add_argument("--dtype", nargs="+", default=["float32", "float16"])
    p.add_argument("--faiss", nargs="*", default=["ivf"], help="approximate kinds: ivf hnsw (none: no faiss)")
    p.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    p.add_argument("--ef", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--dir", help="work folder (default: a temporary one, removed at the end)")
    args = p.parse_args(argv)

    work = Path(args.dir or tempfile.mkdtemp(prefix="search_index_"))
    work.mkdir(parents=True, exist_ok=True)
    queries = torch.from_numpy(next(clustered_batches(args.queries, args.dim, args.clusters, args.spread,
                                                      args.queries, seed=99))[1])
    meta = {"model": "benchmark", "task": "synthetic", "kind": "image", "dim": args.dim, "attribute": None,
            "attributes": None, "source": "synthetic clustered"}
    print(f"{args.items:,} x {args.dim} clustered unit vectors ({args.clusters} clusters, spread {args.spread}), "
          f"k = 10, torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"load {load()}")
    print("| step | float32 | float16 |\n|---|---:|---:|" if args.dtype == ["float32", "float16"] else "")
    rows: dict[str, dict[str, str]] = {}
    exact_top = None
    index32 = None
    try:
        for dtype in args.dtype:
            path = work / f"catalogue_{dtype}.index.npz"
            builder = IndexBuilder(path, meta, dtype, chunk_items=args.chunk_items, restart=True)
            build_s = 0.0  # add() and finish() only, not the generation of the vectors
            for s, x in clustered_batches(args.items, args.dim, args.clusters, args.spread, args.batch, seed=0):
                ids = [f"item{i}" for i in range(s, s + len(x))]
                start = time.perf_counter()
                builder.add(ids, None, x)
                build_s += time.perf_counter() - start
            start = time.perf_counter()
            builder.finish()
            build_s += time.perf_counter() - start
            start = time.perf_counter()
            index = read_index(path)
            read_s = time.perf_counter() - start
            one = latency(lambda i, ix=index: search(ix, queries[i % len(queries)], 10), args.single)
            batched = latency(lambda i, ix=index: search(ix, queries, 10), args.repeat) / len(queries)
            top = search(index, queries, 10)[0]
            if exact_top is None:
                exact_top = top
            same = recall_at(top, exact_top)
            r = rows.setdefault
            r("build (add + finish), s", {})[dtype] = f"{build_s:.1f}"
            r("file size, MiB", {})[dtype] = f"{path.stat().st_size / 2**20:,.0f}"
            r("read_index, s", {})[dtype] = f"{read_s:.2f}"
            r("exact, 1 query per call, ms", {})[dtype] = f"{one:.1f}"
            r(f"exact, {len(queries)} queries per call, ms per query", {})[dtype] = f"{batched:.1f}"
            r("top-10 overlap with float32", {})[dtype] = f"{same:.3f}"
            r("load average after", {})[dtype] = load()
            print(f"  {dtype}: build {build_s:.1f} s, read {read_s:.2f} s, 1 query {one:.1f} ms, "
                  f"batched {batched:.1f} ms/query, overlap {same:.3f}, peak RSS {peak_gib():.1f} GiB, "
                  f"load {load()}", flush=True)
            if dtype == "float32":
                index32 = index
            else:
                del index
        for name, values in rows.items():
            print(f"| {name} | " + " | ".join(values.get(d, "-") for d in args.dtype) + " |")

        if args.faiss and index32 is not None:
            print("\n| faiss | build, s | setting | 1 query, ms | batched, ms/query | recall@10 |\n|---|---:|---|---:|---:|---:|")
            for kind in args.faiss:
                start = time.perf_counter()
                build_faiss(index32, kind, m=args.hnsw_m)
                build_s = time.perf_counter() - start
                params = index32._faiss[1]["params"]
                settings = args.nprobe if kind == "ivf" else args.ef
                for value in settings:
                    opts = {"nprobe": value} if kind == "ivf" else {"ef_search": value}
                    run = lambda i, o=opts: search(index32, queries[i % len(queries)], 10, approximate=True, **o)  # noqa: E731
                    one = latency(run, args.single)
                    batched = latency(lambda i, o=opts: search(index32, queries, 10, approximate=True, **o),
                                      args.repeat) / len(queries)
                    rec = recall_at(search(index32, queries, 10, approximate=True, **opts)[0], exact_top)
                    name = "nprobe" if kind == "ivf" else "efSearch"
                    shown = f"nlist {params['nlist']}" if kind == "ivf" else f"M {params['m']}, efC {params['ef_construction']}"
                    print(f"| {kind} ({shown}) | {build_s:.1f} | {name} {value} | {one:.2f} | {batched:.3f} | "
                          f"{rec:.3f} |", flush=True)
                index32._faiss = None
        print(f"\npeak RSS {peak_gib():.1f} GiB, load {load()}")
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
