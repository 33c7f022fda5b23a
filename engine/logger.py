"""Run logging: human-readable lines (console + `log.txt`); metric records go to a sink (engine.tracking)."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Protocol

LOGGER_NAME = "fashionfine"


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def setup_logging(output_dir: str | Path | None, rank: int = 0) -> logging.Logger:
    """Rank 0 logs INFO to stdout and `<output_dir>/log.txt`; other ranks only warnings."""
    logger = get_logger()
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt if rank == 0 else logging.Formatter(f"[rank {rank}] %(message)s"))
    logger.addHandler(console)
    if output_dir is not None and rank == 0:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(Path(output_dir) / "log.txt", encoding="utf-8")
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
    return logger


class SmoothedValue:
    """Running window and global average of a scalar series."""

    def __init__(self, window: int = 20) -> None:
        self.values: deque[float] = deque(maxlen=window)
        self.total = 0.0
        self.count = 0

    def update(self, value: float, n: int = 1) -> None:
        self.values.append(value)
        self.total += value * n
        self.count += n

    @property
    def median(self) -> float:
        ordered = sorted(self.values)
        return ordered[len(ordered) // 2] if ordered else math.nan

    @property
    def global_avg(self) -> float:
        return self.total / self.count if self.count else math.nan

    @property
    def last(self) -> float:
        return self.values[-1] if self.values else math.nan


class RecordSink(Protocol):
    """Where metric records go (engine.tracking.Tracker, or its JsonlWriter)."""

    def write(self, record: dict[str, Any]) -> Any: ...


class MetricLogger:
    """Tracks named scalars during an epoch and writes them as text lines and records (to `sink`)."""

    def __init__(self, sink: RecordSink, window: int = 20) -> None:
        self.meters: dict[str, SmoothedValue] = {}
        self.sink = sink
        self.window = window
        self.start = time.perf_counter()

    def reset(self) -> None:
        self.meters.clear()
        self.start = time.perf_counter()

    def update(self, **values: float) -> None:
        for name, value in values.items():
            self.meters.setdefault(name, SmoothedValue(self.window)).update(float(value))

    def averages(self) -> dict[str, float]:
        return {name: meter.global_avg for name, meter in self.meters.items()}

    def format_line(self, header: str) -> str:
        parts = [f"{name} {m.median:.4g} ({m.global_avg:.4g})" for name, m in self.meters.items()]
        return f"{header}  " + "  ".join(parts)

    def log(self, header: str, record: dict[str, Any]) -> None:
        get_logger().info(self.format_line(header))
        self.sink.write(record)
