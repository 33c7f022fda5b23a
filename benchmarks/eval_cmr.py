"""FashionGen CMR evaluation cost at real size (7,519 texts x 32,528 images, D = 256): ranking, and with
--features the feature extraction that precedes it.

Ranking: synthetic random unit features and a realistic product structure (1-12 poses per product, ~120
subcategories); times both directions of the full protocol through `evaluation.recall` (from embeddings
and from a precomputed score matrix) and, with --sampled, the protocol-B draw and scoring.

Features (--features): images/s of `encode_image` and texts/s of `encode_text` of the retrieval model of
`--config` (random weights and inputs of the config's image size and text length, already on the device;
no data loading), under the run's precision (`auto`: bf16 autocast on GPUs that support it, fp32 on CPU),
and the implied extraction time of the real test split.

  python benchmarks/eval_cmr.py --device cpu
  python benchmarks/eval_cmr.py --device cuda --sampled
  python benchmarks/eval_cmr.py --features                      # tiny config on CPU, base size on GPU
  python benchmarks/eval_cmr.py --features --config configs/retrieval.yaml --device cuda --batch-size 256
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

from benchmarks.common import benchmark_device, sync  # noqa: E402
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
            sync(device)
            times.append((time.perf_counter() - start) * 1000)
        peak = max(peak, mem.peak_mib)
    return statistics.median(times), peak, out


BASE_CONFIG, TINY_CONFIG = "configs/retrieval.yaml", "configs/retrieval_tiny.yaml"
BERT_VOCAB_SIZE, BERT_CLS_ID, BERT_SEP_ID = 30522, 101, 102  # bert-base-uncased (no tokenizer folder)


def feature_throughput(args: argparse.Namespace, device: torch.device) -> int:
    """Images/s of `encode_image` and texts/s of `encode_text` for the retrieval model of `args.config`."""
    from datasets.text import load_tokenizer
    from engine.config import load_config
    from engine.precision import autocast, fast_cuda_kernels, resolve_precision
    from models.fine_retrieval import FineRetrievalModel
    from tasks.fine_schema import RetrievalConfig

    root = Path(__file__).resolve().parents[1]
    config = args.config or (BASE_CONFIG if device.type == "cuda" else TINY_CONFIG)
    path = Path(config) if Path(config).is_absolute() else root / config
    cfg = load_config(RetrievalConfig, [path], args.overrides)
    vocab_path = Path(cfg.data.tokenizer) if Path(cfg.data.tokenizer).is_absolute() else root / cfg.data.tokenizer
    if (vocab_path / "vocab.txt").is_file():
        tokenizer = load_tokenizer(vocab_path)
        vocab_size, vocab_from = len(tokenizer), str(vocab_path)
        cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    else:
        vocab_size, cls_id, sep_id, vocab_from = BERT_VOCAB_SIZE, BERT_CLS_ID, BERT_SEP_ID, "bert-base-uncased size"
    if device.type == "cuda":  # as the entry points set them (engine.run.start_run)
        fast_cuda_kernels()
    precision = resolve_precision(args.precision, device)
    torch.manual_seed(args.seed)
    model = FineRetrievalModel(cfg.model, cfg.loss, cfg.compat.model_behaviour(), vocab_size=vocab_size, sep_token_id=sep_id)
    model = model.to(device).eval()
    batch = args.batch_size or cfg.data.eval_batch_size
    res, length = cfg.model.vision.image_res, cfg.data.max_words
    images = torch.randn(batch, 3, res, res, device=device)
    g = torch.Generator().manual_seed(args.seed)
    lengths = torch.randint(max(3, length // 4), length + 1, (batch,), generator=g)  # description-like lengths
    positions = torch.arange(length)[None, :]
    mask = (positions < lengths[:, None]).long()
    ids = torch.randint(min(1000, vocab_size // 2), vocab_size, (batch, length), generator=g) * mask
    ids[:, 0] = cls_id
    ids[torch.arange(batch), lengths - 1] = sep_id
    ids, mask = ids.to(device), mask.to(device)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"FashionGen CMR feature extraction: {config} (image {res} px, patch {cfg.model.vision.patch_size}, "
          f"width {cfg.model.vision.width} x {cfg.model.vision.depth}; text {length} tokens, width "
          f"{cfg.model.text.hidden} x {cfg.model.text.fusion_layer} text layers; vocab {vocab_size} from "
          f"{vocab_from}; {params:.1f}M parameters with momentum copies), {where}, torch {torch.__version__}, "
          f"precision {precision}, batch {batch}, {args.batches} timed batches after {args.warmup} warm-up")

    def rate(encode: Callable[[], torch.Tensor]) -> tuple[float, float]:
        with torch.no_grad(), autocast(precision, device):
            for _ in range(args.warmup):
                encode()
            sync(device)
            times = []
            for _ in range(args.batches):
                start = time.perf_counter()
                out = encode()
                sync(device)
                times.append(time.perf_counter() - start)
        assert out.shape == (batch, cfg.model.embed_dim) and bool(torch.isfinite(out).all())
        per_batch = statistics.median(times)
        return batch / per_batch, per_batch * 1000

    rows = []
    for label, count, encode in (("encode_image", NUM_IMAGES, lambda: model.encode_image(images)),
                                 ("encode_text", NUM_TEXTS, lambda: model.encode_text(ids, mask))):
        per_s, ms = rate(encode)
        rows.append((label, per_s, ms, count / per_s))
    print(f"{'step':<13}  {'items/s':>9}  {'ms/batch':>9}  {'real test split':>16}")
    for (label, per_s, ms, seconds), count in zip(rows, (NUM_IMAGES, NUM_TEXTS)):
        print(f"{label:<13}  {per_s:9.1f}  {ms:9.1f}  {seconds:9.1f} s for {count}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--features", action="store_true",
                   help="time feature extraction (encode_image / encode_text) instead of the ranking")
    p.add_argument("--config", default=None,
                   help=f"--features: model config (default {TINY_CONFIG} on CPU, {BASE_CONFIG} on GPU)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="--features: config overrides, e.g. model.vision.image_res=384")
    p.add_argument("--batch-size", type=int, default=None,
                   help="--features: items per forward (default: the config's data.eval_batch_size)")
    p.add_argument("--batches", type=int, default=5, help="--features: timed batches (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="--features: untimed batches first")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="--features: autocast precision (auto = bf16 on GPUs that support it, else fp32)")
    p.add_argument("--texts", type=int, default=NUM_TEXTS, help="products (text queries)")
    p.add_argument("--images", type=int, default=NUM_IMAGES, help="image rows")
    p.add_argument("--dim", type=int, default=DIM, help="embedding size")
    p.add_argument("--chunk-size", type=int, default=None, help="queries per chunk (default: automatic)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (median reported)")
    p.add_argument("--sampled", action="store_true", help="also time the sampled protocol (draw + scoring)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU (default: torch's)")
    args = p.parse_args(argv)
    device = benchmark_device(args.device, args.threads)
    if device is None:
        return 2
    if args.features:
        return feature_throughput(args, device)

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
