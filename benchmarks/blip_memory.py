"""Peak memory and step time of a Fashion-FINE-on-BLIP training step with and without activation
checkpointing of the last ViT blocks (`model.vision.grad_ckpt_layers`, published: 4 of 12).

Each setting runs in a fresh process (CPU peak memory is the process's peak RSS, which never decreases), on
synthetic inputs: forward (all losses of the chosen stage), backward, optimizer step.

    python benchmarks/blip_memory.py                                  # base model, 384 px, batch 2, device auto
    python benchmarks/blip_memory.py --preset small --batch 4 --ckpt 0 4 12
    python benchmarks/blip_memory.py --device cuda --batch 8 --json out.json

Presets: `base` = the published model (ViT-B/16 at 384 px, BERT-base MED, vocab 30524, text length 180);
`small` = the same layout at width 384 (ViT-S/16-like), for quick CPU runs; `tiny` = the test config.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config import load_config  # noqa: E402
from models.fine_blip import FineBlipRetrieval  # noqa: E402
from tasks.blip_schema import BlipRetrievalConfig  # noqa: E402
from tasks.compat import CompatConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {
    "base": ("configs/blip/retrieval_fashionfine_1.yaml", [], 30524, 180),
    "small": ("configs/blip/retrieval_fashionfine_1.yaml",
              ["model.vision.width=384", "model.vision.heads=6", "model.text.hidden=384", "model.text.heads=6",
               "model.text.intermediate=1536"], 30524, 180),
    "tiny": ("configs/blip/retrieval_fashionfine_1_tiny.yaml", [], 1000, 48),
}


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(preset: str, ckpt: int, batch: int, steps: int, device: str, stage: int, queue: int) -> dict:
    """One setting, in this process: warm-up step, then `steps` timed steps."""
    path, overrides, vocab, length = PRESETS[preset]
    cfg = load_config(BlipRetrievalConfig, [ROOT / path], overrides).model
    cfg = dataclasses.replace(cfg, stage=stage, queue_size=queue,
                              vision=dataclasses.replace(cfg.vision, grad_ckpt_layers=ckpt))
    dev = torch.device(device)
    torch.manual_seed(0)
    model = FineBlipRetrieval(cfg, load_config(BlipRetrievalConfig, [ROOT / path]).loss, CompatConfig().model_behaviour(), vocab,
                              102, vocab - 1).to(dev).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.05)
    res = cfg.vision.image_res
    ids = torch.randint(min(1000, vocab // 2), vocab - 2, (batch, length))
    ids[:, 0], ids[:, -1] = 101, 102
    data = {"image": torch.randn(batch, 3, res, res), "input_ids": ids,
            "attention_mask": torch.ones(batch, length, dtype=torch.long),
            "product_idx": torch.arange(batch)}
    data = {k: v.to(dev) for k, v in data.items()}

    def step() -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = sum(model(data).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1000

    step()  # warm-up: allocates the optimizer state and the allocator's pools
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = rss_mib()
    times = [step() for _ in range(steps)]
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"preset": preset, "ckpt_layers": ckpt, "depth": cfg.vision.depth, "batch": batch, "device": device,
            "threads": torch.get_num_threads(), "step_ms": statistics.median(times), "steps": steps,
            "resident_mib": base, "step_peak_mib": peak - base}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="base")
    parser.add_argument("--ckpt", type=int, nargs="+", default=[0, 4], help="checkpointed ViT blocks to compare")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--stage", type=int, choices=[1, 2], default=1)
    parser.add_argument("--queue", type=int, default=None, help="queue length (default: 32 x batch)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child process: one setting
    args = parser.parse_args(argv)
    queue = args.queue or 32 * args.batch
    if args.one:
        print(json.dumps(measure(args.preset, args.ckpt[0], args.batch, args.steps, args.device, args.stage, queue)))
        return 0
    rows = []
    for ckpt in args.ckpt:
        cmd = [sys.executable, __file__, "--one", "--preset", args.preset, "--ckpt", str(ckpt), "--batch",
               str(args.batch), "--steps", str(args.steps), "--stage", str(args.stage), "--queue", str(queue),
               "--device", args.device]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{r['preset']} batch {r['batch']} on {r['device']} ({r['threads']} threads): checkpointing "
              f"{r['ckpt_layers']}/{r['depth']} ViT blocks: step {r['step_ms']:.0f} ms, step peak "
              f"{r['step_peak_mib']:.0f} MiB above {r['resident_mib']:.0f} MiB resident", flush=True)
    ref = rows[0]
    for r in rows[1:]:
        saved = ref["step_peak_mib"] - r["step_peak_mib"]
        print(f"checkpointing {r['ckpt_layers']} blocks vs {ref['ckpt_layers']}: peak -{saved:.0f} MiB "
              f"({100 * saved / max(ref['step_peak_mib'], 1e-9):.0f} %), step time "
              f"{100 * (r['step_ms'] / ref['step_ms'] - 1):+.0f} %")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
