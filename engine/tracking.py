"""The metric sink of a run: every record goes to `log.jsonl` (with a timestamp) and, when asked for
(`train.report_to` / `--report-to`), its numbers to TensorBoard (`OUT/tensorboard/`) and Weights & Biases.

Only rank 0 writes; on the other ranks a `Tracker` is a no-op. A record is a dict with `kind` (train,
train_epoch, eval, final) and `step` (the global optimizer step); each other number in it becomes the scalar
`<kind>/<key>` at that step, e.g. `train/loss`, `train/itc`, `train/lr`, `eval/r_mean`, `final/map`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.atomic import write_text
from engine.config import ConfigError

BACKENDS = ("tensorboard", "wandb")
TENSORBOARD_DIR = "tensorboard"
META_KEYS = frozenset({"kind", "time", "epoch", "iter", "step"})  # record keys that are not logged quantities


class JsonlWriter:
    """Append one JSON object per line; no-op when `path` is None (non-zero ranks)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=float) + "\n")


def add_report_to_argument(parser: argparse.ArgumentParser) -> None:
    """`--report-to tensorboard [wandb]`: overrides the config's report_to (train.report_to, LOGGER.REPORT_TO)."""
    parser.add_argument("--report-to", "--report_to", dest="report_to", nargs="+", choices=BACKENDS, default=None,
                        metavar="{tensorboard,wandb}",
                        help="also send the metrics to TensorBoard (OUT/tensorboard/) and/or W&B (overrides the "
                             "config's report_to)")


def check_report_to(report_to: Iterable[str]) -> list[str]:
    """The requested backends, in order; ConfigError for an unknown or an uninstalled one."""
    names = list(report_to)
    for name in names:
        if name not in BACKENDS:
            raise ConfigError(f"report_to: unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    if "tensorboard" in names and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("tensorboard is not installed: pip install tensorboard")
    if "wandb" in names and importlib.util.find_spec("wandb") is None:
        raise ConfigError("wandb is not installed: pip install wandb")
    return list(dict.fromkeys(names))


def scalars_of(record: dict[str, Any]) -> dict[str, float]:
    """The scalars of a record by tag (`<kind>/<key>`): every int or float that is not a position key."""
    kind = record.get("kind", "misc")
    return {f"{kind}/{key}": float(value) for key, value in record.items()
            if key not in META_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool)}


class Tracker:
    """Rank 0's metric sink: `log.jsonl` always, TensorBoard and W&B when requested (see module doc)."""

    def __init__(self, output_dir: str | Path, report_to: Iterable[str] = (), *, enabled: bool = True,
                 config: dict[str, Any] | None = None) -> None:
        self.report_to = check_report_to(report_to)  # every rank checks, so every rank fails alike
        self.output_dir, self.enabled = Path(output_dir), enabled
        self.jsonl = JsonlWriter(self.output_dir / "log.jsonl" if enabled else None)
        self.tensorboard: Any = None
        self.wandb: Any = None
        if not enabled:
            return
        if "tensorboard" in self.report_to:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(log_dir=str(self.tensorboard_dir))
        if "wandb" in self.report_to:
            import wandb

            # Offline unless the user chose a mode (WANDB_MODE=online syncs; `wandb sync` uploads later).
            mode = None if os.environ.get("WANDB_MODE") else "offline"
            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "fashionfine"),
                                    name=self.output_dir.name, dir=str(self.output_dir), config=config or {},
                                    mode=mode)

    @property
    def tensorboard_dir(self) -> Path:
        return self.output_dir / TENSORBOARD_DIR

    def write(self, record: dict[str, Any]) -> dict[str, Any]:
        """Stamp `record` with `time` (unix seconds) and send it to every sink; returns the stamped record."""
        if not self.enabled:
            return record
        record = {"kind": record.get("kind", "misc"), "time": time.time(), **record}
        self.jsonl.write(record)
        scalars = scalars_of(record)
        step = int(record.get("step", 0))
        if self.tensorboard is not None:
            for tag, value in scalars.items():
                self.tensorboard.add_scalar(tag, value, global_step=step, walltime=record["time"])
        if self.wandb is not None and scalars:
            self.wandb.log({k: v for k, v in scalars.items() if math.isfinite(v)}, step=step)
        return record

    def resume_at(self, step: int) -> None:
        """A run resumed from a checkpoint of global step `step`: the records logged after it (by the interrupted
        process, before it died) are dropped from log.jsonl and TensorBoard, so every step is logged once."""
        if not self.enabled:
            return
        path = self.jsonl.path
        if path is not None and path.is_file():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and int(json.loads(line).get("step", 0)) <= step]
            write_text(path, "".join(f"{line}\n" for line in kept))
        if self.tensorboard is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard.close()
            self.tensorboard = SummaryWriter(log_dir=str(self.tensorboard_dir), purge_step=step + 1)

    def flush(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.flush()

    def close(self) -> None:
        """Flush and close the backends (idempotent)."""
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
