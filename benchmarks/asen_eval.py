"""Time the vectorised ASEN++ MAP over a DARN-sized query/candidate set on the device at hand.

The embeddings are random (what is timed does not depend on their values); the shapes follow DARN:
9 attributes with the published value counts, the test split taken as 10 % of the 214,619 DARN images,
every image labelled for every attribute (an upper bound: DARN images carry several but not always all
attributes), `--query-fraction` of each attribute's lines as queries, fused stage-2 embeddings (2048-d).

In the same process and on the same inputs it also runs the published procedure
(`benchmarks/published_map.py`) on the first `--published-queries` queries of every attribute (0 = all),
checks that both give the same MAP on those queries (random float embeddings: no ties), and reports the
ratio, the published time being extrapolated linearly per query when a subset is run. `--compare-stable`
also times the framework's MAP with the previous ranking (torch's stable float sort).

    python benchmarks/asen_eval.py                      # full DARN size on CUDA if present, else CPU
    python benchmarks/asen_eval.py --scale 0.25 --device cpu --compare-stable
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

import evaluation.map as map_module  # noqa: E402
from benchmarks.published_map import published_total_map  # noqa: E402
from evaluation.map import attribute_map, average_precision  # noqa: E402

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


def run_published(q, qa, qv, c, ca, cv, per_attribute: int
                  ) -> tuple[float, int, list[float], torch.Tensor, list[float]]:
    """Seconds, queries run and per-attribute MAPs of the published procedure on the first `per_attribute`
    queries of each attribute (0 = all), the indices of those queries, and the framework's MAPs of the same
    queries from the same (NumPy) similarity matrices."""
    inputs, chosen = [], []
    for a in range(len(DARN_VALUES)):
        qi = (qa == a).nonzero().squeeze(1)
        ci = (ca == a).nonzero().squeeze(1)
        if per_attribute > 0:  # the first queries whose scores hold no exact tie (ties are broken differently)
            qi, cand = qi[: 4 * per_attribute], c[ci.to(c.device)].cpu().numpy()
            for _ in range(5):  # the product's rounding depends on its shape: check the subset's own matrix
                sim = np.sort(np.matmul(q[qi.to(q.device)].cpu().numpy(), cand.T), axis=1)
                untied = torch.from_numpy((np.diff(sim, axis=1) != 0).all(axis=1))
                if bool(untied.all()) and qi.numel() <= per_attribute:
                    break
                qi = qi[untied][:per_attribute]
        chosen.append(qi)
        inputs.append((q[qi.to(q.device)].cpu().numpy(), c[ci.to(c.device)].cpu().numpy(), qv[qi].numpy(),
                       cv[ci].numpy()))
    start = time.perf_counter()
    maps, _ = published_total_map(inputs)
    seconds = time.perf_counter() - start
    idx = torch.cat(chosen)
    # the same check on the same scores: the framework's AP from the published NumPy similarity matrices
    same_scores = [float(average_precision(scores=torch.from_numpy(np.matmul(qn, cn.T)), query_labels=torch.from_numpy(qvn),
                                           candidate_labels=torch.from_numpy(cvn)).mean())
                   for qn, cn, qvn, cvn in inputs]
    return seconds, idx.numel(), maps, idx, same_scores


def stable_sort_order(scores: torch.Tensor) -> torch.Tensor:
    """The previous ranking: torch's stable descending float sort."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


def time_map(run, device: torch.device, repeats: int) -> tuple[list[float], object]:
    """Wall times of `repeats` runs after one warm-up, and the last result."""
    result = run()  # warm-up (kernels, allocator)
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        sync(device)
        times.append(time.perf_counter() - start)
    return times, result


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
    p.add_argument("--published-queries", type=int, default=100,
                   help="queries per attribute run through the published procedure, the first ones whose scores "
                        "hold no exact tie (0 = all queries; then ties may make the MAPs differ slightly)")
    p.add_argument("--compare-stable", action="store_true", help="also time the previous stable-sort ranking")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    images = int(DARN_IMAGES * args.test_fraction * args.scale)
    q, qa, qv, c, ca, cv = make_lines(images, args.query_fraction, args.dim, device)
    pairs = sum(int((qa == a).sum()) * int((ca == a).sum()) for a in range(len(DARN_VALUES)))
    run = lambda: attribute_map(q, qa, qv, c, ca, cv, len(DARN_VALUES), chunk_queries=args.chunk_queries,  # noqa: E731
                                device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, result = time_map(run, device, args.repeats)
    best = min(times)
    stable_times = None
    if args.compare_stable:
        new_order = map_module.descending_order
        map_module.descending_order = stable_sort_order
        try:
            stable_times, stable_result = time_map(run, device, args.repeats)
        finally:
            map_module.descending_order = new_order
        if not torch.equal(stable_result.ap, result.ap):
            print("error: the stable-sort path gives different AP values", file=sys.stderr)
            return 1
    pub_s, pub_n, pub_maps, pub_idx, same_scores = run_published(q, qa, qv, c, ca, cv, args.published_queries)
    diff = max(abs(x - y) for x, y in zip(pub_maps, same_scores))
    # from the embeddings, the two matrix products (torch vs NumPy BLAS) round differently: near-ties may swap
    ours_maps = [float(result.ap[pub_idx[qa[pub_idx] == a]].mean()) for a in range(len(DARN_VALUES))]
    embed_diff = max(abs(x - y) for x, y in zip(pub_maps, ours_maps))
    pub_estimate = pub_s * len(qa) / pub_n
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
        "stable_sort_seconds_best": round(min(stable_times), 3) if stable_times else None,
        "published_queries_run": pub_n,
        "published_seconds_run": round(pub_s, 2),
        "published_seconds_all_queries": round(pub_estimate, 1),
        "published_extrapolated": pub_n < len(qa),
        "max_map_difference_same_scores": diff,
        "max_map_difference_from_embeddings": embed_diff,
        "speedup_vs_published": round(pub_estimate / best, 1),
    }
    print(f"ASEN++ MAP on {figures['device']}: {len(qa):,} queries x {len(ca):,} candidates over 9 attributes "
          f"({pairs / 1e6:,.0f} M scores ranked, dim {args.dim}): best {best:.3f} s of {args.repeats} "
          f"({pairs / best / 1e6:,.0f} M scores/s; all {', '.join(f'{t:.2f}' for t in times)})")
    if stable_times:
        print(f"  previous ranking (stable float sort): best {min(stable_times):.3f} s "
              f"(all {', '.join(f'{t:.2f}' for t in stable_times)}); same AP values; "
              f"{min(stable_times) / best:.2f}x")
    scope = f"{pub_n:,} of {len(qa):,} queries (the first {args.published_queries} per attribute without tied scores), extrapolated per query" \
        if pub_n < len(qa) else "all queries"
    print(f"  published procedure: {pub_s:.1f} s on {scope} -> {pub_estimate:,.1f} s; "
          f"MAP equal within {diff:.1e} on the same scores ({embed_diff:.1e} from the embeddings); framework {pub_estimate / best:.1f}x faster")
    if diff > 1e-9:
        print(f"error: published and framework MAP differ by {diff:.3g} on the same scores", file=sys.stderr)
        return 1
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
