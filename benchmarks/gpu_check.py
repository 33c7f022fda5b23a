"""The GPU check: one run of the performance figures that need a GPU, recorded as one JSON file.

Parts (each an object in `parts` of the JSON, with `status` "ok", "skipped: <reason>" or "failed: <error>",
its figures and their units in the key names, and `wall_s`):

  pretrain_eager     Fashion-FINE pretraining step (benchmarks/pretrain_step.py), base config, batch 64, bf16:
                     samples/s, MFU, peak memory
  pretrain_compiled  the same with `--compile` (torch.compile of the model)
  cmr_eval           FashionGen CMR evaluation at full size: feature extraction of the test split (base model,
                     bf16, batch 256) and ranking of 7,519 texts x 32,528 images in both directions
  blip_step          Fashion-FINE-on-BLIP stage-1 step (benchmarks/blip_memory.py) at the published batch of 8,
                     with the published activation checkpointing (4 of 12 ViT blocks) and without
  asen_map           ASEN++ MAP at DARN size against the published procedure (benchmarks/asen_eval.py)
  nccl_two_process   two processes over NCCL (only with >= 2 GPUs): all-reduce bandwidth, an all-gather check
                     and DDP pretraining steps at batch 64 per GPU

  bash benchmarks/gpu_check.sh --out output/gpu_check.json        # on a GPU machine (target: < 8 minutes)
  bash benchmarks/gpu_check.sh --dry-run --out /tmp/dry.json      # CPU, tiny sizes, the same JSON keys

`--dry-run` runs every part on the CPU at tiny sizes (the NCCL part over gloo with two CPU processes) so the
script is known to work before a GPU is at hand; its figures mean nothing. The JSON is rewritten atomically
after every part. Exit status: 0 when no part failed, 1 when one did, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import sync  # noqa: E402
from engine.atomic import write_json  # noqa: E402

PARTS = ("pretrain_eager", "pretrain_compiled", "cmr_eval", "blip_step", "asen_map", "nccl_two_process")
# dense bf16 peak TFLOP/s by device-name fragment (first match), for the MFU
PEAK_BF16_TFLOPS = (("H200", 989.0), ("H100", 989.0), ("H800", 989.0), ("GH200", 989.0), ("A100", 312.0),
                    ("A800", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0))
BLIP_PUBLISHED_BATCH, BLIP_PUBLISHED_QUEUE, BLIP_PUBLISHED_CKPT = 8, 57600, 4
CMR_TEXTS, CMR_IMAGES = 7519, 32528


class Skip(Exception):
    """A part that does not apply here (the reason is its message)."""


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    """The device's dense bf16 peak (None on CPU or for an unknown GPU without --peak-tflops)."""
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for fragment, peak in PEAK_BF16_TFLOPS if fragment in name), None)


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def pretrain_has_compile() -> bool:
    """Whether benchmarks/pretrain_step.py offers `--compile` (added with `train.compile`)."""
    return "--compile" in (ROOT / "benchmarks" / "pretrain_step.py").read_text()


# ---------------------------------------------------------------------------------------------- parts
@contextlib.contextmanager
def eager_compile_backend() -> Iterator[None]:
    """Dry run: `torch.compile` with the `eager` backend (dynamo traces the model, no inductor code generation,
    which takes minutes on a small CPU)."""
    original = torch.compile

    def compile_eager(model: Any = None, **kwargs: Any) -> Any:
        kwargs.update(backend="eager", mode=None)
        return original(model, **kwargs)

    torch.compile = compile_eager
    try:
        yield
    finally:
        torch.compile = original


def pretrain_part(args: argparse.Namespace, device: torch.device, compiled: bool,
                  eager_flops: Callable[[], float | None] = lambda: None) -> dict[str, Any]:
    """benchmarks/pretrain_step.py in this process, figures from its --json; the compiled run's MFU uses the FLOPs
    counted in the eager part (the same step)."""
    from benchmarks import pretrain_step

    if compiled and not pretrain_has_compile():
        # TODO(lead): benchmarks/pretrain_step.py has no --compile yet; once it has, this part runs it.
        raise Skip("TODO: benchmarks/pretrain_step.py has no --compile option yet")
    if args.dry_run:
        argv = ["--config", "configs/pretrain_tiny.yaml", "--batch-size", "4", "--precision", "fp32", "--warmup",
                "1" if compiled else "0", "--steps", "1", "--vocab-size", "1000"]
    else:
        argv = ["--config", "configs/pretrain.yaml", "--batch-size", "64", "--precision", "bf16", "--warmup", "3",
                "--steps", "10"]
    peak = peak_tflops(device, args.peak_tflops)
    if peak:
        argv += ["--peak-tflops", str(peak)]
    if compiled:
        argv.append("--compile")
    backend = eager_compile_backend() if compiled and args.dry_run else contextlib.nullcontext()
    with tempfile.TemporaryDirectory() as tmp, backend:
        out = Path(tmp) / "pretrain.json"
        code = pretrain_step.main(argv + ["--device", device.type, "--json", str(out)])
        if code:
            raise RuntimeError(f"pretrain_step.py exited with status {code}")
        r = json.loads(out.read_text())
    if "peak_memory_GiB" in r:
        memory, source = r["peak_memory_GiB"], "torch.cuda.max_memory_allocated"
    else:
        memory, source = r["peak_rss_delta_MiB"] / 1024, "CPU peak RSS increase"
    flops = r.get("flops_per_step") or (eager_flops() if compiled else None)
    seconds = r["step_ms_median"] / 1e3
    run = r.get("runs", {}).get("compiled", {})
    return {"config": r["config"], "batch_size": r["batch_size"], "precision": r["precision"], "compiled": compiled,
            "compile_backend": ("eager (dry run)" if args.dry_run else "inductor") if compiled else None,
            "device_name": r["device_name"], "samples_per_s": r["samples_per_s"], "step_ms_median": r["step_ms_median"],
            "step_ms_min": r["step_ms_min"], "flops_per_step": flops,
            "achieved_tflops": flops / seconds / 1e12 if flops else None, "peak_tflops": peak,
            "mfu": flops / seconds / (peak * 1e12) if flops and peak else None,
            "peak_memory_GiB": memory, "peak_memory_source": source, "compile_s": run.get("compile_s"),
            "graph_breaks": run.get("graph_breaks"), "recompiles": run.get("recompiles"), "losses": r["losses"]}


def _rate(encode: Callable[[], torch.Tensor], device: torch.device, batches: int) -> float:
    """Seconds per call (median of `batches` after one warm-up)."""
    encode()
    sync(device)
    times = []
    for _ in range(batches):
        start = time.perf_counter()
        encode()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cmr_part(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Feature extraction rates of the retrieval model and the full-protocol ranking at real size."""
    from benchmarks.eval_cmr import make_catalogue
    from engine.config import load_config
    from engine.precision import autocast, fast_cuda_kernels, resolve_precision
    from evaluation.cmr import ProductIndex
    from evaluation.recall import IndexSets, best_positive_ranks
    from models.fine_retrieval import FineRetrievalModel
    from tasks.fine_schema import RetrievalConfig

    dry = args.dry_run
    config = "configs/retrieval_tiny.yaml" if dry else "configs/retrieval.yaml"
    batch, batches, vocab, repeat = (8, 1, 1000, 1) if dry else (256, 5, 30522, 3)
    texts, images = (300, 1300) if dry else (CMR_TEXTS, CMR_IMAGES)
    if device.type == "cuda":  # as the entry points set them (engine.run.start_run)
        fast_cuda_kernels()
    cfg = load_config(RetrievalConfig, [ROOT / config])
    precision = resolve_precision("auto", device)
    torch.manual_seed(0)
    model = FineRetrievalModel(cfg.model, cfg.loss, cfg.compat.model_behaviour(), vocab_size=vocab,
                               sep_token_id=102).to(device).eval()
    res, length = cfg.model.vision.image_res, cfg.data.max_words
    image = torch.randn(batch, 3, res, res, device=device)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[:, length // 2:] = 0  # half-length texts
    ids = torch.randint(200, vocab, (batch, length)) * mask
    ids[:, 0], ids[:, length // 2 - 1] = 101, 102
    ids, mask = ids.to(device), mask.to(device)
    with torch.no_grad(), autocast(precision, device):
        image_s = _rate(lambda: model.encode_image(image), device, batches)
        text_s = _rate(lambda: model.encode_text(ids, mask), device, batches)
    model = None  # freed: the ranking's peak memory below is its own
    release_memory(device)

    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(texts, cfg.model.embed_dim), dim=1).to(device)
    gallery = torch.nn.functional.normalize(torch.randn(images, cfg.model.embed_dim), dim=1).to(device)
    product_rows, _ = make_catalogue(texts, images, 120, 0)
    index = ProductIndex.build(product_rows)
    i2t = IndexSets.single(index.text_of_row)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    i2t_s = _rate(lambda: best_positive_ranks(i2t, gallery, text), device, repeat)
    t2i_s = _rate(lambda: best_positive_ranks(index.images_of_text, text, gallery), device, repeat)
    extraction_s = CMR_IMAGES / (batch / image_s) + CMR_TEXTS / (batch / text_s)
    return {"config": config, "precision": precision, "feature_batch": batch,
            "encode_image_per_s": batch / image_s, "encode_text_per_s": batch / text_s,
            "test_split_extraction_s": extraction_s, "texts": texts, "images": images,
            "embed_dim": cfg.model.embed_dim, "rank_i2t_s": i2t_s, "rank_t2i_s": t2i_s,
            "full_protocol_s": extraction_s + i2t_s + t2i_s,
            "ranking_peak_memory_GiB": (torch.cuda.max_memory_allocated(device) / 2**30
                                        if device.type == "cuda" else None)}


def blip_part(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """benchmarks/blip_memory.py's measurement, in this process, with and without the published checkpointing."""
    from benchmarks.blip_memory import measure

    if args.dry_run:
        preset, batch, steps, queue = "tiny", 2, 1, 16
    else:
        preset, batch, steps, queue = "base", BLIP_PUBLISHED_BATCH, 3, BLIP_PUBLISHED_QUEUE
    out: dict[str, Any] = {"preset": preset, "batch": batch, "queue": queue, "precision": "fp32"}
    for key, ckpt in (("published_ckpt", BLIP_PUBLISHED_CKPT), ("no_ckpt", 0)):
        r = measure(preset, ckpt, batch, steps, device.type, 1, queue)
        out[key] = {"ckpt_layers": ckpt, "step_ms": r["step_ms"], "samples_per_s": batch / r["step_ms"] * 1e3,
                    "step_peak_MiB": r["step_peak_mib"], "resident_MiB": r["resident_mib"]}
        release_memory(device)
    return out


def asen_part(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """benchmarks/asen_eval.py in this process (DARN size on a GPU), figures from its --json."""
    from benchmarks import asen_eval

    if args.dry_run:
        argv = ["--scale", "0.01", "--dim", "64", "--repeats", "1", "--published-queries", "5"]
    else:
        argv = ["--repeats", "2"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "asen.json"
        code = asen_eval.main(argv + ["--device", device.type, "--json", str(out)])
        if code:
            raise RuntimeError(f"asen_eval.py exited with status {code}")
        r = json.loads(out.read_text())
    keys = ("queries", "candidates", "dim", "scores_ranked", "seconds_best", "seconds_all", "scores_per_second",
            "peak_gpu_memory_gib", "published_queries_run", "published_seconds_all_queries", "published_extrapolated",
            "max_map_difference_same_scores", "speedup_vs_published")
    return {k: r[k] for k in keys}


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _forked_rank(rank: int, port: int, folder: str) -> None:
    """Dry run: one gloo rank forked from this process (no new interpreter, one thread)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        code = nccl_worker(Path(folder), dry=True)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent through the folder
        Path(folder, f"error{rank}.txt").write_text(f"{type(exc).__name__}: {exc}")
        code = 1
    os._exit(code)


def nccl_part(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Two ranks through `nccl_worker`: two `--nccl-worker` processes over NCCL on two GPUs; in the dry run two
    gloo ranks forked from this process on the CPU (a CUDA process cannot fork, a CPU one starts faster so)."""
    if not args.dry_run:
        count = torch.cuda.device_count()
        if count < 2:
            raise Skip(f"needs 2 GPUs, this machine has {count}")
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        if args.dry_run:
            fork = multiprocessing.get_context("fork")
            workers = [fork.Process(target=_forked_rank, args=(r, port, tmp)) for r in range(2)]
            for w in workers:
                w.start()
            for w in workers:
                w.join(args.nccl_timeout_s)
            for w in workers:
                if w.is_alive():
                    w.kill()
                    w.join()
            codes = [w.exitcode for w in workers]
            tail = " | ".join(f.read_text() for f in sorted(Path(tmp).glob("error*.txt")))
        else:
            env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2")
            cmd = [sys.executable, str(Path(__file__).resolve()), "--nccl-worker", tmp]
            procs = [subprocess.Popen(cmd, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True) for r in range(2)]
            outputs = []
            for p in procs:
                try:
                    outputs.append(p.communicate(timeout=args.nccl_timeout_s)[0])
                except subprocess.TimeoutExpired:
                    for q in procs:
                        q.kill()
                    outputs.append(p.communicate()[0])
            codes = [p.returncode for p in procs]
            tail = " | ".join(line for out in outputs for line in out.strip().splitlines()[-2:])
        if any(codes):
            raise RuntimeError(f"worker exit statuses {codes}: {tail}")
        return json.loads((Path(tmp) / "rank0.json").read_text())


def nccl_worker(out: Path, dry: bool) -> int:
    """One rank: all-reduce bus bandwidth, an all-gather check, DDP pretraining steps; rank 0 writes the JSON."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from benchmarks.pretrain_step import SEP_ID, synthetic_batch
    from engine import distributed as du
    from engine.config import load_config
    from engine.precision import autocast
    from engine.trainer import StepContext
    from models.fine_pretrain import FinePretrainModel
    from tasks.fine_common import optimizer_and_schedule
    from tasks.fine_schema import PretrainConfig

    info = du.init_distributed("cpu" if dry else "cuda", timeout_s=120)
    device, world = info.device, info.world_size
    numel = (1 << 18) if dry else (1 << 26)  # 1 MiB or 256 MiB of fp32
    x = torch.ones(numel, device=device)
    for _ in range(2):
        dist.all_reduce(x)
    sync(device)
    times = []
    for _ in range(3 if dry else 10):
        start = time.perf_counter()
        dist.all_reduce(x)
        sync(device)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    bus_gbps = 2 * (world - 1) / world * numel * 4 / seconds / 1e9  # the nccl-tests bus-bandwidth convention
    gathered = du.all_gather_nograd(torch.tensor([info.rank], device=device))
    gather_ok = gathered.tolist() == list(range(world))

    config, batch, precision, warmup, steps, vocab = (
        ("configs/pretrain_tiny.yaml", 4, "fp32", 0, 1, 1000) if dry else ("configs/pretrain.yaml", 64, "bf16", 2, 5, 30522))
    cfg = load_config(PretrainConfig, [ROOT / config])
    torch.manual_seed(0)
    model = FinePretrainModel(cfg.model, cfg.loss, cfg.compat.model_behaviour(), vocab_size=vocab,
                              sep_token_id=SEP_ID).to(device).train()
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                  broadcast_buffers=False)
    optimizer, _ = optimizer_and_schedule(model, cfg.optim, cfg.schedule, cfg.compat, epochs=1,
                                          iters_per_epoch=warmup + steps)
    generator = torch.Generator().manual_seed(info.rank)
    data = synthetic_batch(batch, cfg.data.max_words, cfg.model.vision.image_res, vocab, device, generator)
    ctx = StepContext(epoch=1, iter_in_epoch=0, iters_per_epoch=100, global_step=0)
    weights = cfg.loss.weights
    step_times = []
    for i in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        with autocast(precision, device):
            losses = ddp(data, ctx)
        total = sum(weights.get(name, 1.0) * value.float() for name, value in losses.items())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        sync(device)
        if i >= warmup:
            step_times.append(time.perf_counter() - start)
    step = max(du.max_over_ranks([statistics.median(step_times)], device))
    if info.rank == 0:
        write_json(out / "rank0.json", {
            "backend": info.backend, "world_size": world, "all_reduce_MiB": numel * 4 / 2**20,
            "all_reduce_ms": seconds * 1e3, "all_reduce_bus_GBps": bus_gbps, "all_gather_ok": gather_ok,
            "ddp_config": config, "ddp_batch_per_rank": batch, "ddp_precision": precision,
            "ddp_step_ms_median": step * 1e3, "ddp_samples_per_s": world * batch / step,
            "ddp_loss_finite": bool(torch.isfinite(total.detach()).item())})
    du.cleanup()
    return 0 if gather_ok else 1


# ---------------------------------------------------------------------------------------------- driver
def environment(device: torch.device, dry: bool) -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"dry_run": dry, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0, "torch": torch.__version__,
            "cuda": torch.version.cuda, "threads": torch.get_num_threads(), "git_commit": commit,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def run_part(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Status, figures and wall seconds of one part; an exception becomes `failed: <type>: <message>`."""
    start = time.perf_counter()
    try:
        figures = fn()
        status = "ok"
    except Skip as exc:
        figures, status = {}, f"skipped: {exc}"
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a part's failure must not stop the others
        message = " ".join(str(exc).split())[:500] or "(no message)"
        figures, status = {}, f"failed: {type(exc).__name__}: {message}"
    return {"status": status, "wall_s": round(time.perf_counter() - start, 2), **figures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="output/gpu_check.json", help="JSON file to write (atomically)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the script, not the GPU")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run (default: all)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="device dense bf16 peak for the MFU (default: from the device name, e.g. 989 for H100/H200)")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="a part that would start after this many seconds is marked failed (default 480)")
    parser.add_argument("--nccl-timeout-s", type=float, default=300.0, help="limit for the two NCCL processes")
    parser.add_argument("--nccl-worker", default=None, help=argparse.SUPPRESS)  # internal: one rank
    args = parser.parse_args(argv)
    if args.nccl_worker:
        return nccl_worker(Path(args.nccl_worker), args.dry_run)
    out = Path(args.out)
    if out.is_dir():
        print(f"error: --out {out} is a folder; give a file name", file=sys.stderr)
        return 2
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device here; `--dry-run` runs the check on the CPU at tiny sizes", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    if args.dry_run:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    report: dict[str, Any] = {**environment(device, args.dry_run), "parts": {}}
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "pretrain_eager": lambda: pretrain_part(args, device, compiled=False),
        "pretrain_compiled": lambda: pretrain_part(
            args, device, compiled=True, eager_flops=lambda: report["parts"].get("pretrain_eager", {}).get("flops_per_step")),
        "cmr_eval": lambda: cmr_part(args, device),
        "blip_step": lambda: blip_part(args, device),
        "asen_map": lambda: asen_part(args, device),
        "nccl_two_process": lambda: nccl_part(args, device),
    }
    start = time.perf_counter()
    for name in PARTS:
        if name not in args.parts:
            continue
        if time.perf_counter() - start > args.budget_s:
            result = {"status": f"failed: not started, the time budget of {args.budget_s:.0f} s was spent", "wall_s": 0.0}
        else:
            print(f"== gpu_check: {name}", flush=True)
            result = run_part(runners[name])
            release_memory(device)
        report["parts"][name] = result
        report["wall_s"] = round(time.perf_counter() - start, 2)
        write_json(out, report)
        print(f"== gpu_check: {name}: {result['status']} ({result['wall_s']:.1f} s)", flush=True)
    failed = [name for name, r in report["parts"].items() if r["status"].startswith("failed")]
    print(f"gpu_check: {len(report['parts']) - len(failed)} of {len(report['parts'])} parts ok or skipped in "
          f"{report['wall_s']:.0f} s -> {out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
