"""Progress of long loops (training epochs, feature extraction), shown on rank 0 only.

On an interactive terminal (stderr is a TTY) a tqdm bar; otherwise (log files, CI) no carriage-return
frames: one plain log line every `interval` seconds instead. `enabled=False` shows nothing at all.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm

from engine import distributed as du
from engine.logger import get_logger

T = TypeVar("T")
LOG_INTERVAL_S = 30.0


def _is_tty(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed stream
        return False


class Progress:
    """`update(n)` after each step, `close()` at the end (or use as a context manager)."""

    def __init__(self, total: int | None, desc: str, enabled: bool, *, initial: int = 0, unit: str = "it",
                 interval: float = LOG_INTERVAL_S) -> None:
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.enabled = enabled and du.is_main_process()
        self.n = self.initial = initial
        self.start = self.last_line = time.perf_counter()
        self.bar: tqdm | None = None
        stream = sys.stderr
        if self.enabled and _is_tty(stream):
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream, leave=False,
                            mininterval=1.0, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        if not self.enabled:
            return
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last_line >= self.interval:
            self.last_line = now
            rate = (self.n - self.initial) / max(1e-9, now - self.start)
            total = "?" if self.total is None else str(self.total)
            get_logger().info("%s [%d/%s] %.2f %s/s", self.desc, self.n, total, rate, self.unit)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(iterable: Iterable[T], desc: str, enabled: bool, *, total: int | None = None,
          unit: str = "it") -> Iterator[T]:
    """Iterate `iterable` with a `Progress` (total from `len()` when not given)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total, desc, enabled, unit=unit) as progress:
        for item in iterable:
            yield item
            progress.update()
