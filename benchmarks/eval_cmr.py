"""Ranking time of the FashionGen CMR evaluation at real size (7,519 texts x 32,528 images, D = 256).

Synthetic random unit features and a realistic product structure (1-12 poses per product, ~120
subcategories); times both directions of the full protocol through `evaluation.recall` (from embeddings
and from a precomputed score matrix) and, with --sampled, the protocol-B draw and scoring.

  python benchmarks/eval_cmr.py --device cpu
  python benchmarks/eval_cmr.py --device cuda --sampled
"""

from __future__ import annotations

import argparse
import ctypes
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.cmr import ProductIndex, SampledOptions, draw_sampled_sets, sampled_ranks  # noqa: E402
from evaluation.recall import IndexSets, best_positive_ranks  # noqa: E402

NUM_TEXTS, NUM_IMAGES, DIM = 7519, 32528, 256


def make_catalogue(num_products: int, num_rows: int, num_subcategories: int, seed: int
                   ) -> tuple[list[list[int]], list[str]]:
    """Products with 1..12 contiguous rows summing to `num_rows`; subcategories with skewed sizes."""
    rng = random.Random(seed)
    sizes = [1] * num_products
    extra = num_rows - num_products
    while extra:
        p = rng.randrange(num_products)
        if sizes[p] < 12:
            sizes[p] += 1
            extra -= 1
    weights = [1.0 / (i + 1) ** 0.7 for i in range(num_subcategories)]
    subs = rng.choices([f"subcategory {i}" for i in range(num_subcategories)], weights, k=num_products)
    product_rows, row_sub, row = [], [], 0
    for p, n in enumerate(sizes):
        product_rows.append(list(range(row, row + n)))
        row_sub += [subs[p]] * n
        row += n
    return product_rows, row_sub


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak extra memory of a block: CUDA allocator peak, or the process's peak RSS (VmHWM) on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mib = float("nan")

    @staticmethod
    def _hwm_kib() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    @staticmethod
    def _rss_kib() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            _malloc_trim()  # hand freed heap back to the OS so reuse does not hide the block's peak
            try:  # reset the peak-RSS counter (Linux); otherwise the peak is the whole run's
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
            self.base = self._rss_kib() * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mib = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.peak_mib = (self._hwm_kib() * 1024 - self.base) / 2**20


def timed(fn: Callable[[], object], device: torch.device, repeat: int) -> tuple[float, float, object]:
    """Median wall time (ms) over `repeat` runs after one warm-up, peak extra memory (MiB), last result."""
    out = fn()  # warm-up
    times, peak = [], 0.0
    for _ in range(repeat):
        with PeakMemory(device) as mem:
            start = time.perf_counter()
            out = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1000)
        peak = max(peak, mem.peak_mib)
    return statistics.median(times), peak, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--texts", type=int, default=NUM_TEXTS, help="products (text queries)")
    p.add_argument("--images", type=int, default=NUM_IMAGES, help="image rows")
    p.add_argument("--dim", type=int, default=DIM, help="embedding size")
    p.add_argument("--chunk-size", type=int, default=None, help="queries per chunk (default: automatic)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (median reported)")
    p.add_argument("--sampled", action="store_true", help="also time the sampled protocol (draw + scoring)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no GPU is available", file=sys.stderr)
        return 2

    torch.manual_seed(args.seed)
    text = torch.nn.functional.normalize(torch.randn(args.texts, args.dim), dim=1).to(device)
    image = torch.nn.functional.normalize(torch.randn(args.images, args.dim), dim=1).to(device)
    product_rows, row_sub = make_catalogue(args.texts, args.images, 120, args.seed)
    index = ProductIndex.build(product_rows)
    i2t_pos = IndexSets.single(index.text_of_row)
    chunk = dict(chunk_size=args.chunk_size)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"FashionGen CMR ranking: {args.texts} texts x {args.images} images, D={args.dim}, {name}, "
          f"torch {torch.__version__}, median of {args.repeat}")

    rows: list[tuple[str, float, float]] = []
    ms, mib, _ = timed(lambda: best_positive_ranks(i2t_pos, image, text, **chunk), device, args.repeat)
    rows.append((f"full I2T from embeddings ({args.images} queries)", ms, mib))
    ms, mib, _ = timed(lambda: best_positive_ranks(index.images_of_text, text, image, **chunk), device, args.repeat)
    rows.append((f"full T2I from embeddings ({args.texts} queries, min over poses)", ms, mib))
    ms, mib, scores = timed(lambda: text @ image.T, device, args.repeat)
    rows.append(("score matrix S = T I^T", ms, mib))
    ms, mib, _ = timed(lambda: best_positive_ranks(i2t_pos, scores=scores.T, **chunk), device, args.repeat)
    rows.append(("full I2T from S^T", ms, mib))
    ms, mib, _ = timed(lambda: best_positive_ranks(index.images_of_text, scores=scores, **chunk), device,
                       args.repeat)
    rows.append(("full T2I from S", ms, mib))
    if args.sampled:
        opts = SampledOptions(set_len=min(1000, args.texts), neg_len=min(100, args.texts - 2))
        ms, mib, sets = timed(lambda: draw_sampled_sets(product_rows, row_sub, random.Random(66), opts), device,
                              args.repeat)
        rows.append(("sampled sets draw (I2T + T2I, Python)", ms, mib))
        i2t, t2i = sets
        ms, mib, _ = timed(lambda: (sampled_ranks(i2t, scores=scores), sampled_ranks(t2i, scores=scores)), device,
                           args.repeat)
        rows.append(("sampled scoring from S (both, gather + rank)", ms, mib))
    width = max(len(r[0]) for r in rows)
    print(f"{'step'.ljust(width)}  {'ms':>9}  {'peak MiB':>9}")
    for label, ms, mib in rows:
        print(f"{label.ljust(width)}  {ms:9.1f}  {mib:9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
