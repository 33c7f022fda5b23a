"""Pre-emption: SIGTERM (schedulers, `kill`, torchrun passing on its own SIGTERM) and SIGINT (Ctrl-C) ask the
training loop to stop after the current step; the trainer then writes its last checkpoint and raises
`Interrupted`, which the entry point turns into one line and the exit status 128 + signal.

Why 128 + signal (143 for SIGTERM, 130 for SIGINT) rather than 0 or 2: the run did not finish and is not
broken either. Schedulers (Slurm requeue, Kubernetes, shells) read 128 + N as "terminated by signal N", the
status a process killed by that signal reports to a shell, so a pre-empted job looks pre-empted and can be
requeued with `--resume`.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from engine.logger import get_logger

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):  # noqa: N818 - a stop on request, not an error
    """Training stopped on a signal after writing its checkpoint; `exit_status` is 128 + the signal number."""

    def __init__(self, message: str, signum: int, report: bool = True) -> None:
        super().__init__(message)
        self.signum, self.report = signum, report

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    """'SIGTERM' for 15."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopRequests:
    """Context manager installing the SIGTERM/SIGINT handlers for the duration of `Trainer.fit` (the previous
    handlers come back on exit). The first signal only records the request (`signum`); a second SIGINT aborts
    at once: after the first signal SIGINT gets the system's default action (the process dies on the spot,
    whatever it is doing). Outside the main thread nothing is installed (Python allows handlers only there)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            get_logger().warning("%s received again: still stopping after the current step", signal_name(signum))
            return
        self.signum = signum
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C ends the process at once
        get_logger().warning("%s received: stopping after the current step and writing a checkpoint "
                             "(Ctrl-C again aborts at once, without one)", signal_name(signum))

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()
