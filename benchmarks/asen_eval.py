"""Time the vectorised ASEN++ MAP over a DARN-sized query/candidate set on the device at hand.

The embeddings are random (what is timed does not depend on their values); the shapes follow DARN:
9 attributes with the published value counts, the test split taken as 10 % of the 214,619 DARN images,
every image labelled for every attribute (an upper bound: DARN images carry several but not always all
attributes), `--query-fraction` of each attribute's lines as queries, fused stage-2 embeddings (2048-d).
The published per-query Python loop is timed on a few queries and extrapolated for comparison.

    python benchmarks/asen_eval.py                      # full DARN size on CUDA if present, else CPU
    python benchmarks/asen_eval.py --scale 0.25 --device cpu
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.map import attribute_map  # noqa: E402

DARN_VALUES = (20, 13, 55, 7, 28, 11, 26, 8, 17)
DARN_IMAGES = 214_619


def make_lines(images: int, query_fraction: float, dim: int, device: torch.device, seed: int = 0):
    """Query and candidate embeddings/attributes/values with DARN's attribute layout."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    qa, qv, ca, cv = [], [], [], []
    for a, n_values in enumerate(DARN_VALUES):
        values = torch.randint(0, n_values, (images,), generator=g)
        n_q = int(round(query_fraction * images))
        qa.append(torch.full((n_q,), a))
        qv.append(values[:n_q])
        ca.append(torch.full((images - n_q,), a))
        cv.append(values[n_q:])
    qa, qv, ca, cv = (torch.cat(x) for x in (qa, qv, ca, cv))
    q = torch.nn.functional.normalize(torch.randn(len(qa), dim, generator=g), dim=1).to(device)
    c = torch.nn.functional.normalize(torch.randn(len(ca), dim, generator=g), dim=1).to(device)
    return q, qa, qv, c, ca, cv


def published_loop_seconds_per_query(q, c, qa, qv, ca, cv, n: int = 5) -> float:
    """The published procedure (argsort, Python loops building relevance and AP) on `n` queries of attribute 0."""
    cols = (ca == 0).nonzero().squeeze(1)
    cand, cand_v = c[cols].cpu().numpy(), cv[cols].tolist()
    queries = (qa == 0).nonzero().squeeze(1)[:n]
    start = time.perf_counter()
    for i in queries.tolist():
        scores = cand @ q[i].cpu().numpy()
        order = np.argsort(scores)[::-1]
        rel = [1 if cand_v[j] == int(qv[i]) else 0 for j in order]
        hits, total = 0, 0.0
        for rank, r in enumerate(rel, 1):
            if r:
                hits += 1
                total += hits / rank
    return (time.perf_counter() - start) / len(queries)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the DARN test-split size")
    p.add_argument("--test-fraction", type=float, default=0.1, help="test split as a fraction of all images")
    p.add_argument("--query-fraction", type=float, default=0.2, help="lines of each attribute used as queries")
    p.add_argument("--dim", type=int, default=2048, help="embedding width (2048 = fused stage-2 embedding)")
    p.add_argument("--chunk-queries", type=int, default=0, help="0 = from the default memory budget")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    images = int(DARN_IMAGES * args.test_fraction * args.scale)
    q, qa, qv, c, ca, cv = make_lines(images, args.query_fraction, args.dim, device)
    pairs = sum(int((qa == a).sum()) * int((ca == a).sum()) for a in range(len(DARN_VALUES)))
    run = lambda: attribute_map(q, qa, qv, c, ca, cv, len(DARN_VALUES), chunk_queries=args.chunk_queries,  # noqa: E731
                                device=device)
    run()  # warm-up (kernels, allocator)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - start)
    loop = published_loop_seconds_per_query(q, c, qa, qv, ca, cv)
    best = min(times)
    figures = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "images_per_attribute": images,
        "queries": len(qa),
        "candidates": len(ca),
        "dim": args.dim,
        "scores_ranked": pairs,
        "seconds_best": round(best, 3),
        "seconds_all": [round(t, 3) for t in times],
        "scores_per_second": pairs / best,
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        "published_loop_seconds_estimate": round(loop * len(qa), 1),
    }
    print(f"ASEN++ MAP on {figures['device']}: {len(qa):,} queries x {len(ca):,} candidates over 9 attributes "
          f"({pairs / 1e6:,.0f} M scores ranked, dim {args.dim}): best {best:.3f} s of {args.repeats} "
          f"({pairs / best / 1e6:,.0f} M scores/s); published per-query loop ~{figures['published_loop_seconds_estimate']:,} s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
