"""Two-process gloo pretraining on CPU (torch.distributed.run + pretrain.py): the feature queues receive the
all-gathered momentum features and product ids of both ranks, in rank order, every step."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from datasets.fashiongen import HELDOUT_FILENAME, FashionGenSplit
from engine.checkpoint import load_file
from engine.data import EpochSampler

ROOT = Path(__file__).resolve().parents[1]
WORLD, BATCH, STEPS, QUEUE, SEED = 2, 4, 3, 32, 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def expected_queue_ids(root: Path, out: Path) -> list[int]:
    """Product ids the queue must hold after STEPS steps: per step, rank 0's batch then rank 1's batch,
    recomputed from the training products and each rank's sampler shard."""
    split = FashionGenSplit(root, "train")
    heldout = set(json.loads((out / "eval_sets" / HELDOUT_FILENAME).read_text(encoding="utf-8"))["heldout"])
    rows = split.rows_of(split.select_products([p for p in range(split.num_products) if p not in heldout]))
    product_of_item = split.row_product[rows]
    shards = [EpochSampler(len(rows), seed=SEED, rank=r, world_size=WORLD).indices() for r in range(WORLD)]
    ids = []
    for step in range(STEPS):
        for shard in shards:
            ids.extend(int(product_of_item[i]) for i in shard[step * BATCH:(step + 1) * BATCH])
    return ids


def test_two_rank_pretraining_fills_the_queue_from_both_ranks(synthetic_root, tmp_path):
    out = tmp_path / "pt"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    overrides = [f"data.root={synthetic_root / 'fashiongen'}", f"data.tokenizer={synthetic_root / 'tokenizer'}",
                 f"data.batch_size={BATCH}", "data.max_words=32", f"model.queue_size={QUEUE}", "train.epochs=1",
                 f"train.stop_after_steps={STEPS}", "train.log_every=1", "train.progress_bar=false",
                 "runtime.num_workers=0", "runtime.cpu_threads=1", f"runtime.seed={SEED}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}", f"--master_port={free_port()}",
           "pretrain.py", "--config", "configs/pretrain_tiny.yaml", "--output_dir", str(out), "--set", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rank 0/2 on cpu (backend gloo)" in proc.stdout

    ckpt = load_file(out / "checkpoint_last.pth")
    assert ckpt["global_step"] == STEPS and ckpt["config"]["data"]["batch_size"] == BATCH
    state = ckpt["model"]
    filled = WORLD * BATCH * STEPS
    assert state["queue_ptr"].tolist() == [filled]
    idx_queue = state["idx_queue"][0]
    assert (idx_queue[:filled] >= 0).all() and (idx_queue[filled:] == -100).all()
    expected = expected_queue_ids(synthetic_root / "fashiongen", out)
    assert idx_queue[:filled].tolist() == expected
    rank1 = [expected[s * WORLD * BATCH + BATCH + k] for s in range(STEPS) for k in range(BATCH)]
    rank0 = [expected[s * WORLD * BATCH + k] for s in range(STEPS) for k in range(BATCH)]
    assert set(rank0) != set(rank1)  # the two shards really differ, so both ranks' items are in the queue
    # the feature columns written by the steps are unit momentum features, distinct from each other
    for name in ("image_queue", "text_queue"):
        cols = state[name][:, :filled]
        assert torch.allclose(cols.norm(dim=0), torch.ones(filled), atol=1e-4)
        gram = cols.T @ cols
        assert (gram - torch.eye(filled)).abs().max() < 1 - 1e-4  # no column written twice
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train = [r for r in log if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    assert all(torch.isfinite(torch.tensor([r[k] for k in ("itc", "itm", "symbol", "mlm", "rtd")])).all()
               for r in train)
