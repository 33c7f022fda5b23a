"""The float32 matrix-product rate of this machine, and the time floor it puts under the evaluation targets.

Both evaluations compute a float32 score product that no ranking can skip: the FashionGen CMR full protocol
needs S = T I^T (7,519 x 32,528 x 256: 125 GFLOP) and the ASEN++ MAP at DARN size needs every query against
its attribute's candidates (38,628 x 17,169 x 2048: 2.7 TFLOP). This script times torch's and NumPy's sgemm
on a square product and on the evaluations' own shapes (output buffers reused, best of --repeats after a
warm-up), takes the fastest rate seen as the machine's practical peak, and prints the least time each
evaluation's product can take at that rate beside the targets (CMR < 0.5 s for both directions; MAP 20x the
published procedure, whose time `benchmarks/asen_eval.py` measures).

  python benchmarks/sgemm_floor.py --threads 2
  python benchmarks/sgemm_floor.py --threads 2 --published-map-s 251.5 --json floor.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine  # noqa: E402,F401  (before torch work: OMP_WAIT_POLICY, malloc settings)
from benchmarks.common import timed  # noqa: E402

CPU = torch.device("cpu")

CMR_FLOP = 2 * 7519 * 32528 * 256
MAP_FLOP = 2 * 38628 * 17169 * 2048
SHAPES = {  # (m, k, n): m x k times k x n
    "square 2048": (2048, 2048, 2048),
    "CMR chunk (1,024 texts x 32,528 images, 256-d)": (1024, 256, 32528),
    "MAP chunk (244 queries x 17,169 candidates, 2048-d)": (244, 2048, 17169),
    "MAP chunk as candidates x queries": (17169, 2048, 244),
}


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` calls after one warm-up call."""
    fn()
    return min(timed(fn, repeats, CPU))


def rates(repeats: int) -> dict[str, dict[str, float]]:
    """GFLOP/s of torch.mm and numpy.matmul per shape (float32, random inputs, output reused)."""
    gen = torch.Generator().manual_seed(0)
    out: dict[str, dict[str, float]] = {}
    for name, (m, k, n) in SHAPES.items():
        a, b = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
        c = torch.empty(m, n)
        an, bn, cn = a.numpy(), b.numpy(), c.numpy()
        flop = 2 * m * k * n / 1e9
        out[name] = {"torch": flop / best_seconds(partial(torch.mm, a, b, out=c), repeats),
                     "numpy": flop / best_seconds(partial(np.matmul, an, bn, out=cn), repeats)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--published-map-s", type=float, default=0.0,
                        help="the published MAP procedure's time at DARN size (from benchmarks/asen_eval.py), "
                             "to print the 20x target beside the floor")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    table = rates(args.repeats)
    peak = max(v for row in table.values() for v in row.values())
    for name, row in table.items():
        print(f"{name:55s} torch {row['torch']:6.1f} GFLOP/s   numpy {row['numpy']:6.1f} GFLOP/s")
    cmr_floor, map_floor = CMR_FLOP / peak / 1e9, MAP_FLOP / peak / 1e9
    print(f"fastest rate seen: {peak:.1f} GFLOP/s ({torch.get_num_threads()} torch threads)")
    print(f"CMR full protocol: product {CMR_FLOP / 1e9:.0f} GFLOP -> at least {cmr_floor:.2f} s "
          f"(target < 0.5 s for both directions)")
    line = f"ASEN++ MAP at DARN size: product {MAP_FLOP / 1e12:.2f} TFLOP -> at least {map_floor:.1f} s"
    if args.published_map_s > 0:
        line += (f"; 20x the published {args.published_map_s:.1f} s = {args.published_map_s / 20:.1f} s, "
                 f"so at most {args.published_map_s / map_floor:.1f}x is possible")
    print(line)
    if args.json is not None:
        args.json.write_text(json.dumps({"gflops": table, "peak_gflops": peak, "threads": torch.get_num_threads(),
                                         "cmr_floor_s": cmr_floor, "map_floor_s": map_floor}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
