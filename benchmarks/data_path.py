"""Training input pipeline speed: samples/s of one worker, where the time goes, and workers for a target rate.

Three item paths at real size, as the training datasets run them:
  fashiongen-pretrain  HDF5 row (256 x 256) -> crop/resize 256 -> flip -> RandAugment M7 -> tensor; masked text
  fashiongen-cmr       the same image path at one random row of a product; "the image description is ..." ids
  blip                 extracted PNG file -> RGB -> crop/resize 384 -> flip -> RandAugment M5 -> tensor; caption ids

  python benchmarks/data_path.py                        # synthetic 256 px FashionGen written to a temp folder
  python benchmarks/data_path.py --data-root data/fashiongen --tokenizer data/tokenizer --samples 2000
  python benchmarks/data_path.py --rounds 5 --loader-workers 2 --json out.json

Without --data-root, synthetic FashionGen at 256 x 256 is written (`python -m datasets.synthetic fashiongen
--image-size 256`), prepared with --extract-images (256 px PNG files, what the BLIP train dataset reads) and a
WordPiece vocabulary built from its captions; `--blip-384-files` also writes the images resized to 384 px PNG
files and times the BLIP path on them. Items are read in a shuffled order (as training does) after the files are
in the page cache. One process, one torch thread; the per-stage table replays the train transform step by step
with the module's own functions (same draws, same output), the item rate comes from the datasets' `__getitem__`.
The DataLoader check runs `--loader-workers` worker processes (batch 32, shuffled, default collate; each
worker's first batch is not timed; on a small data set it stops at the end of the epoch); with linear scaling,
workers for the target = ceil(target / one-worker rate).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import transforms as T  # noqa: E402
from datasets.fashiongen import FashionGenCMRTrainDataset, FashionGenPretrainDataset, FashionGenSplit  # noqa: E402
from datasets.fashiongen_blip import (  # noqa: E402
    BlipCaptions,
    BlipTrainAnnotation,
    FashionGenBlipTrainDataset,
    load_blip_tokenizer,
    load_image,
)
from datasets.pretrain_text import INFO_KEYS  # noqa: E402
from datasets.text import CMR_PREFIX, encode_fixed_length, load_tokenizer, pre_caption  # noqa: E402
from engine.seeding import item_rng  # noqa: E402

TARGET = 1000.0  # samples/s one H200 at 45 % MFU consumes (~466 GFLOP per sample)
STAGES = ("read", "decode", "crop+resize", "flip", "randaugment", "to tensor + normalise", "text")


def prepare_synthetic(out: Path, train_products: int, blip_384: bool) -> tuple[Path, Path]:
    """256 px synthetic FashionGen with extracted images and a vocabulary under `out`; (data root, tokenizer)."""
    import prepare_dataset
    from datasets.synthetic.__main__ import main as synthetic_main
    from scripts import build_vocab

    assert synthetic_main(["fashiongen", "--out", str(out), "--image-size", "256", "--train-products",
                           str(train_products), "--val-products", "40", "--quiet"]) == 0
    data = out / "fashiongen"
    assert prepare_dataset.main(["--data-root", str(data), "--extract-images", "--quiet"]) == 0
    assert build_vocab.main(["from-captions", "--data-root", str(data), "--out", str(out / "tokenizer")]) == 0
    if blip_384:
        big = data / "images_384"
        big.mkdir()
        for path in sorted((data / "images").glob("*.png")):
            with Image.open(path) as img:
                img.convert("RGB").resize((384, 384), Image.Resampling.BICUBIC).save(big / path.name)
    return data, out / "tokenizer"


class StageClock:
    """Accumulated seconds per stage and per RandAugment op."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.op_seconds: dict[str, float] = defaultdict(float)
        self.op_counts: dict[str, int] = defaultdict(int)

    def time(self, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)`, its seconds added to `stage`."""
        start = time.perf_counter()
        value = fn(*args)
        self.seconds[stage] += time.perf_counter() - start
        return value


def replay_transform(t: T.TrainTransform, img: Image.Image, rng: np.random.Generator,
                     clock: StageClock) -> torch.Tensor:
    """`TrainTransform.__call__` step by step, timing each stage (same draws in the same order)."""
    if img.mode != "RGB":
        img = clock.time("decode", img.convert, "RGB")
    img = clock.time("crop+resize", t.crop_resize, img, rng)
    img = clock.time("flip", t.flip, img, rng)
    start = time.perf_counter()
    for name, param in t.randaugment.sample(rng):
        op_start = time.perf_counter()
        img = T.apply_op(img, name, param)
        clock.op_seconds[name] += time.perf_counter() - op_start
        clock.op_counts[name] += 1
    clock.seconds["randaugment"] += time.perf_counter() - start
    return clock.time("to tensor + normalise", T.to_normalized_tensor, img)


def _cmr_text(ds: FashionGenCMRTrainDataset, description: str) -> Any:
    return encode_fixed_length(ds.tokenizer, [pre_caption(CMR_PREFIX + description)], ds.max_length, ds.add_sep)


def stage_breakdown(path: str, ctx: dict[str, Any], order: np.ndarray, check: bool) -> StageClock:
    """Per-stage seconds over `order` for one path; with `check`, the replay must equal the dataset item."""
    clock = StageClock()
    ds = ctx["dataset"]
    for i in order.tolist():
        if path.startswith("blip"):
            r = int(ds.records[i])
            ann = ds.annotation
            img = clock.time("read", Image.open, ds.image_root / ann.images[r])
            img = clock.time("decode", _decoded, img)
            clock.time("text", ds.captions.encode, ann.captions[r], ds.keep_sign)
            rng = item_rng(ds.seed, ds.epoch, r)
        else:
            split = ds.split
            if path == "fashiongen-pretrain":
                row = int(ds.rows[i])
                rng, text_rng = item_rng(ds.seed, ds.epoch, row).spawn(2)
                fields = clock.time("read", split.read_fields, row, INFO_KEYS)
                clock.time("text", ds.text, fields, text_rng)
            else:
                product = int(ds.products[i])
                row_rng, rng = item_rng(ds.seed, ds.epoch, product).spawn(2)
                rows = split.product_rows(product)
                row = rows[int(row_rng.integers(0, len(rows)))]
                clock.time("text", _cmr_text, ds, clock.time("read", split.description, row))
            pixels = clock.time("read", split.read_pixels, row)
            img = clock.time("decode", Image.fromarray, pixels)
        tensor = replay_transform(ds.transform, img, rng, clock)
        if check and not torch.equal(tensor, ds[i]["image"]):
            raise SystemExit(f"{path}: the stage replay of item {i} differs from the dataset's item")
    return clock


def _decoded(img: Image.Image) -> Image.Image:
    with img:
        return img.convert("RGB")


def item_rate(ds: Any, order: np.ndarray) -> float:
    """Items/s of `ds[i]` over `order` in this process."""
    start = time.perf_counter()
    for i in order.tolist():
        ds[i]
    return len(order) / (time.perf_counter() - start)


def loader_rate(ds: Any, workers: int, batches: int, batch_size: int = 32) -> float:
    """Items/s through a shuffled DataLoader with `workers` processes (the first batch of each worker not timed)."""
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         persistent_workers=False, prefetch_factor=4 if workers else None,
                                         generator=torch.Generator().manual_seed(0))
    it = iter(loader)
    for _ in range(max(1, workers)):
        next(it)
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            n += len(next(it)["image"])
        except StopIteration:
            break
    rate = n / (time.perf_counter() - start)
    del it
    return rate


def build_paths(data: Path, tokenizer: Path, blip_384: bool) -> dict[str, dict[str, Any]]:
    split = FashionGenSplit(data, "train")
    tok = load_tokenizer(tokenizer)
    blip_tok = load_blip_tokenizer(tokenizer)
    ann = BlipTrainAnnotation.load(data / "annotation" / "fashiongen_train.json", data)
    captions = BlipCaptions(blip_tok)
    paths = {
        "fashiongen-pretrain": {"dataset": FashionGenPretrainDataset(split, tok)},
        "fashiongen-cmr": {"dataset": FashionGenCMRTrainDataset(split, tok)},
        "blip": {"dataset": FashionGenBlipTrainDataset(ann, data / "images", captions)},
    }
    if blip_384:
        paths["blip-384-files"] = {"dataset": FashionGenBlipTrainDataset(ann, data / "images_384", captions)}
    return paths


def warm_page_cache(paths: dict[str, dict[str, Any]]) -> None:
    """Read every image once so that the timed reads come from memory (as after the first epoch)."""
    ds = paths["fashiongen-pretrain"]["dataset"]
    h5 = ds.split.h5_path
    with open(h5, "rb") as f:
        while f.read(1 << 24):
            pass
    for name in ("blip", "blip-384-files"):
        if name in paths:
            b = paths[name]["dataset"]
            for r in b.records.tolist():
                load_image(b.image_root / b.annotation.images[r], "warm-up")


def summary(values: list[float]) -> dict[str, float]:
    return {"best": max(values), "median": statistics.median(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, help="prepared FashionGen root (with --extract-images); "
                        "default: synthetic 256 px data in a temp folder")
    parser.add_argument("--tokenizer", type=Path, help="folder with vocab.txt (default: <data-root>/../tokenizer)")
    parser.add_argument("--train-products", type=int, default=240, help="synthetic train products (default 240)")
    parser.add_argument("--samples", type=int, default=300, help="items per timed round and path")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds; best-of and median are reported")
    parser.add_argument("--blip-384-files", action="store_true", help="also time the BLIP path on 384 px files")
    parser.add_argument("--loader-workers", type=int, nargs="+", default=[2],
                        help="DataLoader check with each of these worker counts (0 = skip)")
    parser.add_argument("--loader-batches", type=int, default=20)
    parser.add_argument("--target", type=float, default=TARGET, help="samples/s to feed (default 1000)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if args.data_root is None:
            data, tokenizer = prepare_synthetic(Path(tmp), args.train_products, args.blip_384_files)
        else:
            data, tokenizer = args.data_root, args.tokenizer or args.data_root.parent / "tokenizer"
            if args.blip_384_files and not (data / "images_384").is_dir():
                raise SystemExit(f"--blip-384-files needs {data / 'images_384'} (384 px copies of images/)")
        paths = build_paths(data, tokenizer, args.blip_384_files)
        warm_page_cache(paths)
        results = run(paths, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


def run(paths: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    load = os.getloadavg()
    print(f"{os.cpu_count()} cores, load average {load[0]:.2f}; {args.samples} items x {args.rounds} rounds "
          f"per path, 1 process, 1 torch thread")
    results: dict[str, Any] = {"load_average_before": list(load), "paths": {}}
    rng = np.random.default_rng(0)
    for name, ctx in paths.items():
        ds = ctx["dataset"]
        n = min(args.samples, len(ds))
        rates, clocks = [], []
        for rnd in range(args.rounds):
            order = rng.permutation(len(ds))[:n]
            rates.append(item_rate(ds, order))
            clocks.append(stage_breakdown(name, ctx, order, check=rnd == 0))
        best = max(rates)
        per_stage = {s: statistics.median(c.seconds.get(s, 0.0) for c in clocks) / n * 1e3 for s in STAGES}
        ops = defaultdict(float)
        counts = defaultdict(int)
        for c in clocks:
            for op, sec in c.op_seconds.items():
                ops[op] += sec
                counts[op] += c.op_counts[op]
        op_ms = {op: ops[op] / counts[op] * 1e3 for op in sorted(ops)}
        entry = {"items_per_s": summary(rates), "stage_ms": per_stage, "op_ms_per_call": op_ms,
                 "workers_for_target": math.ceil(args.target / best), "items": n, "rounds": args.rounds}
        entry["loader"] = {w: loader_rate(ds, w, args.loader_batches) for w in args.loader_workers if w > 0}
        results["paths"][name] = entry
        print_entry(name, entry, args.target)
    results["load_average_after"] = list(os.getloadavg())
    return results


def print_entry(name: str, entry: dict[str, Any], target: float) -> None:
    rate = entry["items_per_s"]
    print(f"\n{name}: {rate['best']:.1f} items/s best, {rate['median']:.1f} median (one worker); "
          f"{entry['workers_for_target']} workers for {target:.0f}/s")
    total = sum(entry["stage_ms"].values())
    for stage, ms in entry["stage_ms"].items():
        print(f"  {stage:<24s} {ms:7.3f} ms  {100 * ms / total:5.1f} %")
    print("  RandAugment ms per call: " + ", ".join(f"{k} {v:.2f}" for k, v in entry["op_ms_per_call"].items()))
    for workers, rate in entry["loader"].items():
        print(f"  DataLoader, {workers} workers: {rate:.1f} items/s ({rate / workers:.1f} per worker)")


if __name__ == "__main__":
    raise SystemExit(main())
