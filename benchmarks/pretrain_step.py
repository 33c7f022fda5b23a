"""Throughput, peak memory and model FLOPs utilisation of one Fashion-FINE pretraining step.

A full training step as the trainer runs it: forward with all five losses (contrastive with the momentum
update and queues, symbol, matching with hard negatives, masked-LM, replaced-token), weighted sum, backward,
AdamW step. Inputs are random tensors of the configured shapes (no data loading, no tokenizer): images
`(B, 3, R, R)`, texts of random length with `[CLS]`, a sign token, word pieces, `[SEP]` and padding,
15 % masked-LM labels, replaced-token labels on the real tokens, product ids with repeats; the vocabulary has
the published 30522 entries unless --vocab-size says otherwise.

  python benchmarks/pretrain_step.py --device cpu                           # tiny config, fp32
  python benchmarks/pretrain_step.py --device cuda --batch-size 64 --precision bf16   # base config
  python benchmarks/pretrain_step.py --config configs/pretrain.yaml --set model.queue_size=1024 --batch-size 8
  python benchmarks/pretrain_step.py --device cpu --compare                 # eager vs torch.compile, same inputs

Reports samples/s (batch / median step time over --steps timed steps after --warmup steps), peak memory
(CUDA: torch.cuda.max_memory_allocated; CPU: increase of the process's peak RSS from just before the model
is built) and the FLOPs of one step counted by torch.utils.flop_counter.FlopCounterMode; on CUDA the model
FLOPs utilisation = FLOPs / step time / (--peak-tflops x 1e12), default 989 (H100 SXM dense bf16).

--compile times the step with the model under torch.compile (inductor, as `train.compile: true` runs it);
--compare times eager and compiled one after the other in this process, from the same initial weights on the
same inputs, and reports both, the compilation time (the warm-up steps beyond their steady-state cost), the
first step's largest loss difference, and torch._dynamo's graph, graph-break and recompile counts.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.utils.flop_counter as flop_counter
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine  # noqa: E402,F401  (before torch work: OMP_WAIT_POLICY)
from engine.checkpoint import unwrap  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.precision import autocast  # noqa: E402
from engine.trainer import StepContext  # noqa: E402
from models.fine_pretrain import FinePretrainModel  # noqa: E402
from tasks.fine_common import optimizer_and_schedule  # noqa: E402
from tasks.fine_schema import PretrainConfig  # noqa: E402

aten = torch.ops.aten
CLS_ID, SEP_ID, FIRST_WORD_ID = 101, 102, 999  # bert-base-uncased layout (signs at 1..9)
BERT_VOCAB = 30522


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


# FlopCounterMode counts the CUDA attention kernels but not the fused CPU one; same formulas for the CPU kernel.
CPU_ATTENTION_FLOPS = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
                       aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def synthetic_batch(batch: int, length: int, image_res: int, vocab: int, device: torch.device,
                    generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random inputs with the shapes and layout of a FashionGen pretraining batch (`datasets/pretrain_text.py`)."""
    first_word = FIRST_WORD_ID if vocab > FIRST_WORD_ID + 100 else 14
    cls_id, sep_id = (CLS_ID, SEP_ID) if vocab > SEP_ID else (11, 12)
    lengths = torch.randint(length // 3, length + 1, (batch,), generator=generator)
    positions = torch.arange(length)[None]
    mask = (positions < lengths[:, None]).long()
    ids = torch.randint(first_word, vocab, (batch, length), generator=generator) * mask
    ids[:, 0] = cls_id
    ids[:, 1] = torch.randint(1, 10, (batch,), generator=generator)  # sign tokens
    ids[torch.arange(batch), (lengths - 1).clamp_min(2)] = sep_id
    words = mask.bool() & (positions >= 2) & (ids != sep_id)
    chosen = words & (torch.rand(batch, length, generator=generator) < 0.15)
    mlm_labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    rtd_labels = torch.where(mask.bool(), (torch.rand(batch, length, generator=generator) < 0.02).long(),
                             torch.full_like(ids, -100))
    product_idx = torch.randint(0, max(2, batch * 3 // 4), (batch,), generator=generator)  # some repeats
    out = {"image": torch.randn(batch, 3, image_res, image_res, generator=generator), "input_ids": ids,
           "attention_mask": mask, "mlm_labels": mlm_labels, "rtd_labels": rtd_labels, "product_idx": product_idx}
    return {k: v.to(device) for k, v in out.items()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None,
                        help="pretraining config (default: configs/pretrain_tiny.yaml on CPU, configs/pretrain.yaml on CUDA)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. model.queue_size=1024")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="per-device batch (default: data.batch_size)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (then one FLOP-counted step)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="device peak bf16 TFLOP/s for MFU (989 = H100 SXM dense bf16)")
    parser.add_argument("--vocab-size", type=int, default=BERT_VOCAB,
                        help="vocabulary size (default 30522, the published one; the synthetic vocabulary has ~760)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--compile", action="store_true", help="time the step under torch.compile (inductor)")
    modes.add_argument("--compare", action="store_true",
                       help="time eager, then compiled, from the same weights on the same inputs")
    parser.add_argument("--compile-mode", default="default",
                        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                        help="torch.compile mode (as train.compile_mode)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    if args.warmup < 1 and (args.compile or args.compare):
        parser.error("--compile / --compare need --warmup >= 1 (the first step compiles)")
    return args


def dynamo_counts() -> dict[str, int]:
    """torch._dynamo's counters so far: unique graphs, graph breaks, recompilations."""
    from torch._dynamo.utils import counters

    return {"unique_graphs": int(counters["stats"]["unique_graphs"]),
            "graph_breaks": int(sum(counters["graph_break"].values())),
            "recompiles": int(sum(counters["recompiles"].values()))}


def time_steps(model: torch.nn.Module, cfg, args: argparse.Namespace, inputs: list[dict], device: torch.device,
               count_flops: bool) -> dict:
    """Warm-up steps (each timed: the compiled model compiles in them), optionally one FLOP-counted step, then
    --steps timed steps; a fresh optimizer over `model`'s parameters."""
    model.train()
    optimizer, _ = optimizer_and_schedule(unwrap(model), cfg.optim, cfg.schedule, cfg.compat, epochs=1,
                                          iters_per_epoch=args.warmup + args.steps + 1)
    weights = cfg.loss.weights
    ctx = StepContext(epoch=1, iter_in_epoch=0, iters_per_epoch=100, global_step=0)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step(i: int) -> tuple[dict[str, float], float]:
        sync()
        start = time.perf_counter()
        with autocast(args.precision, device):
            losses = model(inputs[i % 2], ctx)
        total = sum(weights.get(name, 1.0) * value.float() for name, value in losses.items())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        sync()
        return {name: float(value.detach()) for name, value in losses.items()}, time.perf_counter() - start

    warm, first_losses, losses = [], None, {}
    for i in range(args.warmup):
        losses, seconds = step(i)
        warm.append(seconds)
        first_losses = first_losses or losses
    flops = None
    if count_flops:
        with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
            losses, _ = step(args.warmup)
        flops = counter.get_total_flops()
    times = []
    for i in range(args.steps):
        losses, seconds = step(args.warmup + 1 + i)
        times.append(seconds)
    if not all(torch.isfinite(torch.tensor(list(losses.values())))):
        raise SystemExit(f"error: non-finite losses {losses}")
    median = statistics.median(times)
    return {"step_ms_median": median * 1e3, "step_ms_min": min(times) * 1e3, "step_ms_max": max(times) * 1e3,
            "warmup_ms": [t * 1e3 for t in warm], "compile_s": max(0.0, sum(warm) - len(warm) * median),
            "first_losses": first_losses, "losses": losses, "flops_per_step": flops}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = args.config or ("configs/pretrain.yaml" if device.type == "cuda" else "configs/pretrain_tiny.yaml")
    cfg = load_config(PretrainConfig, [config], args.overrides)
    batch = args.batch_size or cfg.data.batch_size
    if cfg.model.queue_size % batch:
        raise SystemExit(f"error: model.queue_size {cfg.model.queue_size} is not a multiple of the batch {batch}")
    vocab = args.vocab_size
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = peak_rss_mib()

    model = FinePretrainModel(cfg.model, cfg.loss, cfg.compat.model_behaviour(), vocab_size=vocab, sep_token_id=SEP_ID).to(device)
    generator = torch.Generator().manual_seed(args.seed)
    inputs = [synthetic_batch(batch, cfg.data.max_words, cfg.model.vision.image_res, vocab, device, generator)
              for _ in range(2)]
    initial = copy.deepcopy(model.state_dict()) if args.compare else None
    mode = None if args.compile_mode == "default" else args.compile_mode
    runs: dict[str, dict] = {}
    if not args.compile:
        torch.manual_seed(args.seed + 1)
        runs["eager"] = time_steps(model, cfg, args, inputs, device, count_flops=True)
    if args.compile or args.compare:
        if initial is not None:
            model.load_state_dict(initial)
        torch.manual_seed(args.seed + 1)
        before = dynamo_counts()
        compiled = time_steps(torch.compile(model, mode=mode), cfg, args, inputs, device, count_flops=False)
        compiled.update({k: v - before[k] for k, v in dynamo_counts().items()})
        runs["compiled"] = compiled
    main_run = runs.get("eager") or runs["compiled"]
    flops = (runs.get("eager") or {}).get("flops_per_step")
    median = main_run["step_ms_median"] / 1e3
    result = {
        "config": config, "overrides": args.overrides, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "torch": torch.__version__, "precision": args.precision,
        "batch_size": batch, "image_res": cfg.model.vision.image_res, "max_words": cfg.data.max_words,
        "queue_size": cfg.model.queue_size, "vocab_size": vocab,
        "trainable_params_M": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
        **{k: main_run[k] for k in ("step_ms_median", "step_ms_min", "step_ms_max")},
        "samples_per_s": batch / median, "losses": main_run["losses"], "runs": runs,
    }
    if flops is not None:
        result.update(flops_per_step=flops, achieved_tflops=flops / median / 1e12)
    if "eager" in runs and "compiled" in runs:
        a, b = runs["eager"]["first_losses"], runs["compiled"]["first_losses"]
        result["first_step_max_loss_diff"] = max(abs(a[k] - b[k]) for k in a)
        result["compiled_speedup"] = runs["eager"]["step_ms_median"] / runs["compiled"]["step_ms_median"]
    if device.type == "cuda":
        result["peak_memory_GiB"] = torch.cuda.max_memory_allocated(device) / 2**30
        if flops is not None:
            result["peak_tflops"] = args.peak_tflops
            result["mfu"] = flops / median / (args.peak_tflops * 1e12)
    else:
        result["peak_rss_delta_MiB"] = peak_rss_mib() - rss_before
    report(result, args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def report(result: dict, args: argparse.Namespace) -> None:
    print(f"Fashion-FINE pretraining step: {result['config']} {' '.join(args.overrides)}")
    print(f"  device {result['device_name']} ({result['threads']} threads), {args.precision}, batch "
          f"{result['batch_size']}, {result['trainable_params_M']:.1f}M trainable parameters, vocab {args.vocab_size}")
    for name, run in result["runs"].items():
        print(f"  {name}: step {run['step_ms_median']:.1f} ms median ({run['step_ms_min']:.1f}-"
              f"{run['step_ms_max']:.1f}) over {args.steps} steps -> {result['batch_size'] * 1e3 / run['step_ms_median']:.1f} "
              f"samples/s; warm-up steps {', '.join(f'{t:.0f}' for t in run['warmup_ms'])} ms")
        if name == "compiled":
            print(f"  compiled: compilation ~{run['compile_s']:.1f} s; {run['unique_graphs']} graphs, "
                  f"{run['graph_breaks']} graph breaks, {run['recompiles']} recompilations")
    if "compiled_speedup" in result:
        print(f"  compiled / eager: {result['compiled_speedup']:.2f}x faster; first-step losses differ by at most "
              f"{result['first_step_max_loss_diff']:.2e}")
    if "flops_per_step" in result:
        print(f"  {result['flops_per_step'] / 1e9:.2f} GFLOP per step -> {result['achieved_tflops'] * 1e3:.1f} "
              "GFLOP/s achieved (eager)")
    if "mfu" in result:
        print(f"  MFU {result['mfu'] * 100:.1f} % of {args.peak_tflops:.0f} TFLOP/s")
    if "peak_memory_GiB" in result:
        print(f"  peak memory {result['peak_memory_GiB']:.2f} GiB")
    else:
        print(f"  peak RSS increase {result['peak_rss_delta_MiB']:.0f} MiB")


if __name__ == "__main__":
    sys.exit(main())
