"""Rank heartbeats and the worker watchdog of multi-process runs.

Every rank runs one daemon thread that, twice a second, writes its current global step and the time to the
process group's key-value store (`<step> <unix time>` under `fashionfine/heartbeat/<rank>`; a few bytes, off
the training thread). A rank that is stopped (SIGSTOP, a hung node) or dead stops writing, while ranks blocked
in a collective keep writing, so when a collective fails or times out `silent_ranks` names the ranks whose
heartbeat no longer moves. In workers started by torchrun (env TORCHELASTIC_RUN_ID) the same thread watches the
parent: when the agent is gone (SIGKILL; the worker is re-parented) the worker stops too. With `stall_after`
(runtime.stall_timeout_s) the thread also watches the other ranks' heartbeats and stops this rank when one has
not moved for that long, without waiting for a collective to time out (runtime.dist_timeout_s must outlast
the longest rank-0-only pause, such as an evaluation; heartbeats go on during those). A rank that ends its
run writes `done`, so the ranks still evaluating do not take it for a stalled one.
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
STALLED_STATUS = 2
DONE = "done"


class Heartbeat:
    """The heartbeat/watchdog thread of one rank (`store` None: only the parent watch)."""

    def __init__(self, rank: int, world_size: int, store: Any, interval: float = INTERVAL_S,
                 watch_parent: bool = False, stall_after: float = 0) -> None:
        self.rank, self.world_size, self.store, self.interval = rank, world_size, store, interval
        self.step = 0
        self.stall_after = stall_after if store is not None and world_size > 1 else 0
        self._changed: dict[int, tuple[str | None, float]] = {}  # rank -> (last heartbeat seen, when it changed)
        self._next_watch = time.monotonic()
        self.done: set[int] = set()  # ranks that ended their run (seen by the last `read`)
        self.parent = os.getppid() if watch_parent else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fashionfine-heartbeat-{rank}", daemon=True)

    def start(self) -> Heartbeat:
        self._beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating and tell the other ranks this one ended (not stalled)."""
        self._stop.set()
        if self.store is not None:
            try:
                self.store.set(KEY.format(rank=self.rank), DONE)
            except Exception:  # noqa: BLE001 - the store's host may already be gone
                pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._check_parent()
            self._beat()
            if self.stall_after and time.monotonic() >= self._next_watch:
                self._watch()

    def _watch(self) -> None:
        """Stop this rank when another rank's heartbeat has not changed for `stall_after` seconds (local clock)."""
        now = time.monotonic()
        self._next_watch = now + min(5.0, max(self.interval, self.stall_after / 4))
        raw = self._read_raw()
        if raw is None:  # the store does not answer: the collectives will fail and say so
            return
        for r in range(self.world_size):
            if r == self.rank or raw.get(r) == DONE:
                continue
            seen, since = self._changed.get(r, (None, now))
            if raw.get(r) != seen or r not in self._changed:
                self._changed[r] = (raw.get(r), now)
            elif now - since > self.stall_after:
                step = seen.split()[0] if seen else "none"
                sys.stderr.write(
                    f"error: rank {self.rank} at step {self.step}: rank {r} has not answered for {now - since:.0f} s "
                    f"(last heartbeat at step {step}; stopped, hung, or its host is unreachable): stopping the run "
                    f"(runtime.stall_timeout_s {self.stall_after:g} s); the checkpoints on disk are intact: once "
                    "every rank is back, resume with --resume\n")
                sys.stderr.flush()
                os._exit(STALLED_STATUS)

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
    def _read_raw(self, timeout: float = 3.0) -> dict[int, str] | None:
        """Every rank's last heartbeat as written (`<step> <time>` or `done`), None when the store does not answer."""
        result: dict[int, str] = {}
        failed: list[BaseException] = []
        done = threading.Event()

        def fetch() -> None:
            try:
                for r in range(self.world_size):
                    key = KEY.format(rank=r)
                    if self.store.check([key]):
                        result[r] = self.store.get(key).decode()
            except Exception as exc:  # noqa: BLE001 - an unreachable store is an answer too
                failed.append(exc)
            finally:
                done.set()

        if self.store is None:
            return None
        threading.Thread(target=fetch, daemon=True).start()
        return dict(result) if done.wait(timeout) and not failed else None

    def read(self, timeout: float = 3.0) -> dict[int, tuple[int, float]] | None:
        """Every running rank's last heartbeat `(step, time)`, or None when the store does not answer in time."""
        raw = self._read_raw(timeout)
        if raw is None:
            return None
        out = {}
        self.done = {r for r, text in raw.items() if text == DONE}
        for r, text in raw.items():
            if text != DONE:
                step, stamp = text.split()
                out[r] = (int(step), float(stamp))
        return out

    def silent_ranks(self) -> tuple[list[int], dict[int, tuple[int, float]]] | None:
        """The other ranks whose heartbeat is older than SILENT_AFTER intervals (a stopped rank, seen at once), else
        those whose heartbeat did not move while we watched for as long (a rank that just died), with every
        rank's last heartbeat; None when the store does not answer. Ages compare the hosts' clocks (NTP)."""
        first = self.read()
        if first is None:
            return None
        others = [r for r in range(self.world_size) if r != self.rank and r not in self.done]
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


def start(rank: int, world_size: int, store: Any, watch_parent: bool, stall_after: float = 0) -> Heartbeat:
    """Start this process's heartbeat thread (replacing a previous one); `stall_after` > 0 also watches the others."""
    global _CURRENT
    stop()
    _CURRENT = Heartbeat(rank, world_size, store, watch_parent=watch_parent, stall_after=stall_after).start()
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
