"""Throughput of the FashionGen CMR evaluation: feature extraction (images/s, texts/s) and the optional ITM
re-ranking (pairs/s), with the FLOPs of each item and the projected time of the full test split on a GPU.

The retrieval model of `--config` (default: the base size, configs/retrieval.yaml) with random weights runs on
random inputs of the config's image size and text length already on the device (no data loading), at the
config's evaluation batch (`data.eval_batch_size`, published 256) under the run's precision (`auto`: bf16
autocast on GPUs that support it, fp32 on CPU). Timed: `encode_image_tokens` (ViT + projections: what the
re-ranking evaluation extracts), `encode_text_states`, and `tasks.cmr_eval.ITMScorer` (the fusion layers and ITM
head on `eval.rerank_batch` cached (text, image) pairs per forward, texts at full length: an upper bound).
FLOPs are counted by `torch.utils.flop_counter` on one item (attention through the math kernel so that it is
counted); the projection is items x FLOPs / (peak x MFU).

  python benchmarks/eval_throughput.py --threads 1                       # base size on CPU, batch 256
  python benchmarks/eval_throughput.py --config configs/retrieval_tiny.yaml --batches 3
  python benchmarks/eval_throughput.py --device cuda --batches 5         # bf16 on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import engine  # noqa: E402,F401,I001  (before torch: OMP_WAIT_POLICY)
import torch  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks.common import benchmark_device, timed  # noqa: E402

NUM_IMAGES, NUM_TEXTS = 32528, 7519  # the FashionGen validation (= test) split
BERT_VOCAB_SIZE, BERT_CLS_ID, BERT_SEP_ID = 30522, 101, 102  # bert-base-uncased (no tokenizer folder)
H200_BF16_DENSE_TFLOPS = 989.0


def build(args: argparse.Namespace, device: torch.device):
    """(model, config, vocabulary size, cls id, sep id) of the retrieval model of `args.config`."""
    from datasets.text import load_tokenizer
    from engine.config import load_config
    from models.fine_retrieval import FineRetrievalModel
    from tasks.fine_schema import RetrievalConfig

    path = Path(args.config) if Path(args.config).is_absolute() else ROOT / args.config
    cfg = load_config(RetrievalConfig, [path], args.overrides)
    vocab = Path(cfg.data.tokenizer) if Path(cfg.data.tokenizer).is_absolute() else ROOT / cfg.data.tokenizer
    if (vocab / "vocab.txt").is_file():
        tok = load_tokenizer(vocab)
        vocab_size, cls_id, sep_id = len(tok), tok.cls_token_id, tok.sep_token_id
    else:
        vocab_size, cls_id, sep_id = BERT_VOCAB_SIZE, BERT_CLS_ID, BERT_SEP_ID
    torch.manual_seed(args.seed)
    model = FineRetrievalModel(cfg.model, cfg.loss, cfg.compat.model_behaviour(), vocab_size=vocab_size,
                               sep_token_id=sep_id)
    return model.to(device).eval(), cfg, vocab_size, cls_id, sep_id


def random_texts(batch: int, length: int, vocab_size: int, cls_id: int, sep_id: int, seed: int,
                 full: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """`[CLS] words [SEP]` ids and masks; `full`: every text `length` tokens, else description-like lengths."""
    g = torch.Generator().manual_seed(seed)
    lengths = (torch.full((batch,), length) if full
               else torch.randint(max(3, length // 4), length + 1, (batch,), generator=g))
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    ids = torch.randint(min(1000, vocab_size // 2), vocab_size, (batch, length), generator=g) * mask
    ids[:, 0] = cls_id
    ids[torch.arange(batch), lengths - 1] = sep_id
    return ids, mask


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call (matrix products and attention; the math attention kernel, which the counter sees)."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def duration(seconds: float) -> str:
    """`12.3 s`, `4.5 min` or `6.7 h`."""
    if seconds < 120:
        return f"{seconds:.3g} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def main(argv: list[str] | None = None) -> int:
    from engine.precision import autocast, fast_cuda_kernels, resolve_precision
    from tasks.cmr_eval import ITMScorer, stored_dtype

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/retrieval.yaml", help="retrieval config (model size, eval batch)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. data.eval_batch_size=64")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--batches", type=int, default=1, help="timed batches per step (after a 2-item warm-up)")
    p.add_argument("--pairs-batch", type=int, default=None, help="pairs per ITM forward (default eval.rerank_batch)")
    p.add_argument("--rerank-k", type=int, default=16, help="re-ranked candidates per query in the projection")
    p.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_TFLOPS,
                   help="peak dense TFLOPS of the projected GPU (H200 bf16: 989)")
    p.add_argument("--mfu", type=float, default=0.45, help="model FLOPs utilisation of the projection")
    p.add_argument("--skip", nargs="+", default=[], choices=["image", "text", "itm"], help="steps not timed")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    device = benchmark_device(args.device, args.threads)
    if device is None:
        return 2
    if device.type == "cuda":  # as the entry points set them (engine.run.start_run)
        fast_cuda_kernels()
    precision = resolve_precision(args.precision, device)
    model, cfg, vocab_size, cls_id, sep_id = build(args, device)
    batch, pairs_batch = cfg.data.eval_batch_size, args.pairs_batch or cfg.eval.rerank_batch
    res, length = cfg.model.vision.image_res, cfg.data.max_words
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{args.config}: image {res} px / patch {cfg.model.vision.patch_size}, text {length} tokens, "
          f"{params:.0f}M parameters; {where}, torch {torch.__version__}, precision {precision}; batch {batch} "
          f"(images, texts), {pairs_batch} pairs per ITM forward; {args.batches} timed batch(es) per step")

    images = torch.randn(batch, 3, res, res, device=device)
    ids, mask = (t.to(device) for t in random_texts(batch, length, vocab_size, cls_id, sep_id, args.seed))
    with torch.no_grad():  # the cache the scorer reads: tokens and states of a few items, in the stored dtype
        few = min(batch, 8)
        _, tokens = model.encode_image_tokens(images[:few])
        _, states = model.encode_text_states(ids[:few], mask[:few])
    dtype = stored_dtype(precision)
    scorer = ITMScorer(model, tokens.to(dtype), states.to(dtype), mask[:few], batch_size=pairs_batch, device=device,
                       precision=precision)
    g = torch.Generator().manual_seed(args.seed)
    pair_texts = torch.randint(0, few, (pairs_batch,), generator=g)
    pair_rows = torch.randint(0, few, (pairs_batch,), generator=g)

    steps = {  # name: (call on n items, items in the split, pairs or items)
        "image": (lambda n: model.encode_image_tokens(images[:n]), NUM_IMAGES),
        "text": (lambda n: model.encode_text_states(ids[:n], mask[:n]), NUM_TEXTS),
        "itm": (lambda n: scorer(pair_texts[:n], pair_rows[:n]), args.rerank_k * (NUM_IMAGES + NUM_TEXTS)),
    }
    sustained = args.peak_tflops * 1e12 * args.mfu
    print(f"projection: {args.peak_tflops:g} TFLOPS peak x {args.mfu:.0%} MFU = {sustained / 1e12:.0f} TFLOPS; "
          f"split {NUM_IMAGES} images, {NUM_TEXTS} texts; re-ranking k={args.rerank_k}: "
          f"{args.rerank_k} x ({NUM_TEXTS} + {NUM_IMAGES}) = {steps['itm'][1]} pairs")
    print(f"{'step':<6} {'GFLOP/item':>10} {'items/s best':>12} {'median':>8} {'split here':>11} "
          f"{'split, projected GPU':>20}")
    for name, (call, count) in steps.items():
        n = pairs_batch if name == "itm" else batch
        with autocast(precision, device):
            flops = count_flops(partial(call, 1))
            projected = count * flops / sustained
            if name in args.skip:
                print(f"{name:<6} {flops / 1e9:10.2f} {'-':>12} {'-':>8} {'-':>11} {duration(projected):>20}")
                continue
            timed(partial(call, 2), 1, device)  # warm-up (lazy initialisation, kernel selection)
            rates = [n / t for t in timed(partial(call, n), args.batches, device)]
        best, median = max(rates), statistics.median(rates)
        print(f"{name:<6} {flops / 1e9:10.2f} {best:12.2f} {median:8.2f} {duration(count / median):>11} "
              f"{duration(projected):>20}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
