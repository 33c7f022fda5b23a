"""Rank heartbeats and the worker watchdog of multi-process runs.

Every rank runs one daemon thread that, twice a second, writes its current global step and the time to the
process group's key-value store (`<step> <unix time>` under `fashionfine/heartbeat/<rank>`; a few bytes, off
the training thread). A rank that is stopped (SIGSTOP, a hung node) or dead stops writing, while ranks blocked
in a collective keep writing, so when a collective fails or times out `silent_ranks` names the ranks whose
heartbeat no longer moves. In workers started by torchrun (env TORCHELASTIC_RUN_ID) the same thread watches the
parent: when the agent is gone (SIGKILL; the worker is re-parented) the worker stops too.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

KEY = "fashionfine/heartbeat/{rank}"
INTERVAL_S = 0.5
SILENT_AFTER = 4  # intervals without a new heartbeat that make a rank silent
AGENT_LOST_STATUS = 2


class Heartbeat:
    """The heartbeat/watchdog thread of one rank (`store` None: only the parent watch)."""

    def __init__(self, rank: int, world_size: int, store: Any, interval: float = INTERVAL_S,
                 watch_parent: bool = False) -> None:
        self.rank, self.world_size, self.store, self.interval = rank, world_size, store, interval
        self.step = 0
        self.parent = os.getppid() if watch_parent else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fashionfine-heartbeat-{rank}", daemon=True)

    def start(self) -> Heartbeat:
        self._beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._check_parent()
            self._beat()

    def _beat(self) -> None:
        if self.store is None:
            return
        try:
            self.store.set(KEY.format(rank=self.rank), f"{self.step} {time.time():.3f}")
        except Exception:  # noqa: BLE001 - the store's host may be gone; the collectives will say so
            pass

    def _check_parent(self) -> None:
        if self.parent is None or os.getppid() == self.parent:
            return
        sys.stderr.write(f"error: rank {self.rank}: the torchrun agent (pid {self.parent}) is gone; stopping this "
                         f"worker at step {self.step} (checkpoints on disk are intact: resume with --resume)\n")
        sys.stderr.flush()
        os._exit(AGENT_LOST_STATUS)

    # ------------------------------------------------------------------ reading
    def read(self, timeout: float = 3.0) -> dict[int, tuple[int, float]] | None:
        """Every rank's last heartbeat `(step, time)`, or None when the store does not answer in time."""
        result: dict[int, tuple[int, float]] = {}

        failed: list[BaseException] = []

        def fetch() -> None:
            try:
                for r in range(self.world_size):
                    key = KEY.format(rank=r)
                    if self.store.check([key]):
                        step, stamp = self.store.get(key).decode().split()
                        result[r] = (int(step), float(stamp))
            except Exception as exc:  # noqa: BLE001 - an unreachable store is an answer too
                failed.append(exc)
            finally:
                done.set()

        if self.store is None:
            return None
        done = threading.Event()
        threading.Thread(target=fetch, daemon=True).start()
        return dict(result) if done.wait(timeout) and not failed else None

    def silent_ranks(self) -> tuple[list[int], dict[int, tuple[int, float]]] | None:
        """The other ranks whose heartbeat is older than SILENT_AFTER intervals (a stopped rank, seen at once), else
        those whose heartbeat did not move while we watched for as long (a rank that just died), with every
        rank's last heartbeat; None when the store does not answer. Ages compare the hosts' clocks (NTP)."""
        first = self.read()
        if first is None:
            return None
        others = [r for r in range(self.world_size) if r != self.rank]
        limit = SILENT_AFTER * self.interval
        stale = [r for r in others if r not in first or time.time() - first[r][1] > limit]
        if stale:
            return stale, first
        time.sleep(limit)
        second = self.read()
        if second is None:
            return None
        return [r for r in others if r not in second or second[r] == first.get(r)], second


_CURRENT: Heartbeat | None = None


def start(rank: int, world_size: int, store: Any, watch_parent: bool) -> Heartbeat:
    """Start this process's heartbeat thread (replacing a previous one)."""
    global _CURRENT
    stop()
    _CURRENT = Heartbeat(rank, world_size, store, watch_parent=watch_parent).start()
    return _CURRENT


def current() -> Heartbeat | None:
    return _CURRENT


def note_step(step: int) -> None:
    """The global step the next heartbeat reports (cheap: an attribute write)."""
    if _CURRENT is not None:
        _CURRENT.step = step


def stop() -> None:
    global _CURRENT
    if _CURRENT is not None:
        _CURRENT.stop()
        _CURRENT = None
