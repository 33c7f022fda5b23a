"""Shared by the top-K file and gallery tests: a freshly initialised tiny CMR model and an in-process
`retrieval.py --evaluate` run of it on the session's synthetic data."""

from __future__ import annotations

from pathlib import Path

import torch

import retrieval
from datasets.text import load_tokenizer
from engine.config import load_config
from engine.seeding import seed_everything
from tasks.fashiongen import RetrievalTask
from tasks.fine_schema import RetrievalConfig

CMR_CONFIG = "configs/retrieval_tiny.yaml"
CMR_FAST = ["model.vision.image_res=32", "data.max_words=32", "runtime.num_workers=0", "runtime.cpu_threads=1",
            "train.progress_bar=false", "eval.protocol=full"]


def cmr_sets(root: Path) -> list[str]:
    return [f"data.root={root / 'fashiongen'}", f"data.tokenizer={root / 'tokenizer'}", *CMR_FAST]


def fresh_cmr_checkpoint(root: Path, folder: Path) -> Path:
    """A randomly initialised tiny CMR model as {'model': state dict} (a valid --evaluate input)."""
    cfg = load_config(RetrievalConfig, [CMR_CONFIG], cmr_sets(root))
    seed_everything(cfg.runtime.seed, 0)
    model = RetrievalTask.inference_model(cfg, load_tokenizer(cfg.data.tokenizer))
    path = folder / "fresh_cmr.pth"
    torch.save({"model": model.state_dict()}, path)
    return path


def evaluate_cmr_run(root: Path, out: Path, checkpoint: Path, *flags: str) -> int:
    """`retrieval.py --evaluate` of `checkpoint` into `out` (full protocol, tiny sizes), in-process."""
    return retrieval.main(["--config", CMR_CONFIG, "--output_dir", str(out), "--evaluate", "--checkpoint",
                           str(checkpoint), *flags, "--set", *cmr_sets(root)])
