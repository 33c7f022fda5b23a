"""One run per output folder.

* A lock (`run.lock`, `fcntl.flock` on an open file) is held by rank 0 for the life of the run: a second live
  run on the folder is refused, naming the holder; the kernel releases the lock of a killed run, whose lock file
  is then taken over (and said so).
* A new training run refuses a folder that holds another run's checkpoints or `log.jsonl` unless `--overwrite`,
  which removes only the files the framework writes (`RunFiles.framework_files`) and logs them.
* `--resume auto | FOLDER | FILE` is resolved to the checkpoint to continue and the folder the run continues in
  (`resolve_resume`): a resumed run always writes into its own folder.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine import atomic
from engine.errors import RunError

LOCK_NAME = "run.lock"
LOG_FILES = ("log.txt", "log.jsonl", "config.yaml", "curves.png")
RESULT_PATTERNS = (r"results_(test|val)\.json", r"map_(test|valid)\.json", r"embeddings(_[\w.-]+)?\.npz",
                   r"topk_(test|val|valid)(_[\w.-]+)?\.jsonl", r"gallery_(test|val|valid)\.html")  # tasks.views
TRACKER_DIRS = ("tensorboard", "wandb")


@dataclass(frozen=True)
class RunFiles:
    """The names a task's runs write into their folder; `folder_hint` says how to choose another folder."""

    last: str
    best: str
    epoch_pattern: str | None = None  # e.g. "checkpoint_epoch{epoch}.pth"
    folder_hint: str = "another --output_dir"

    def _epoch_re(self) -> re.Pattern[str] | None:
        if not self.epoch_pattern or "{epoch}" not in self.epoch_pattern:
            return None
        return re.compile(re.escape(self.epoch_pattern).replace(re.escape("{epoch}"), r"\d+"))

    def checkpoints(self, folder: Path) -> list[Path]:
        """The run's checkpoints in `folder`: last, best and per-epoch ones."""
        epoch = self._epoch_re()
        return sorted(p for p in _entries(folder) if p.is_file() and (
            p.name in (self.last, self.best) or (epoch is not None and epoch.fullmatch(p.name))))

    def previous_run(self, folder: Path) -> list[Path]:
        """What shows that a run trained in `folder`: its checkpoints and `log.jsonl`."""
        log = folder / "log.jsonl"
        return self.checkpoints(folder) + ([log] if log.is_file() else [])

    def framework_files(self, folder: Path) -> list[Path]:
        """Every file or folder of a previous run that the framework writes (and `--overwrite` removes)."""
        results = [re.compile(p) for p in RESULT_PATTERNS]
        out = set(self.checkpoints(folder))
        for path in _entries(folder):
            if path.is_file() and (path.name in LOG_FILES or any(r.fullmatch(path.name) for r in results)):
                out.add(path)
            elif path.is_dir() and not path.is_symlink() and path.name in TRACKER_DIRS:
                out.add(path)
        return sorted(out)


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _names(paths: list[Path], limit: int = 5) -> str:
    names = [p.name + ("/" if p.is_dir() else "") for p in paths]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


# ----------------------------------------------------------------------------- --resume


@dataclass
class Resume:
    """A resolved `--resume`: the checkpoint to continue (None = a fresh run), the run's folder, log lines."""

    checkpoint: str | None
    folder: Path
    notes: list[str] = field(default_factory=list)


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def resolve_resume(value: str | None, folder: Path, last: str, *, folder_given: bool,
                   folder_flag: str = "--output_dir") -> Resume:
    """`--resume` against the run's folder (`folder_given`: named on the command line, not by the config).

    `auto`: the folder's `last` checkpoint, else a fresh run; a FOLDER: its `last` checkpoint (one-line error
    without one); a FILE: continues in the file's own folder, which an explicit other folder contradicts (a
    missing FILE is left to the input check, which names it)."""
    folder = Path(folder)
    if not value:
        return Resume(None, folder)
    if value == "auto":
        path = folder / last
        if path.is_file():
            return Resume(str(path), folder, [f"--resume auto: continuing from {path}"])
        return Resume(None, folder, [f"--resume auto: no {last} in {folder} yet, starting a fresh run"])
    path = Path(value)
    if path.is_dir():
        if not (path / last).is_file():
            raise FileNotFoundError(f"--resume {value}: the folder holds no {last} to continue from")
        path = path / last
    if not path.is_file():
        return Resume(value, folder)
    own = path.parent
    if _same(own, folder):
        return Resume(str(path), folder)
    if folder_given:
        raise RunError(f"--resume {path} continues the run in its own folder {own}, but {folder_flag} is {folder}: "
                       f"drop {folder_flag} (or give {own}); to start a new run in {folder} from these weights, "
                       "use --checkpoint instead")
    return Resume(str(path), own, [f"--resume {path}: the run continues in its own folder {own} (not the "
                                   f"configured {folder})"])


# ----------------------------------------------------------------------------- the lock


def _describe(text: str) -> str:
    """The holder recorded in a lock file ('pid 12 on host, started 2024-01-01 10:00:00')."""
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    if not fields:
        return "an unknown process"
    return f"pid {fields.get('pid', '?')} on {fields.get('host', '?')}, started {fields.get('start', '?')}"


class RunLock:
    """An exclusive, non-blocking `flock` on `<folder>/run.lock`, released on `release()` or by the kernel when
    the process dies."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock; returns the recorded holder of a stale lock file taken over (None: a free folder).
        Raises RunError while another live process holds it."""
        import fcntl

        for _ in range(20):  # the holder may remove the file between our open and our flock: open it again
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _describe(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunError(f"{self.path.parent} is in use by another run ({holder}; lock {self.path}): wait "
                                   "for it to end or choose another output folder") from None
                raise
            try:
                current = os.stat(self.path)
                same = (current.st_ino, current.st_dev) == (os.fstat(fd).st_ino, os.fstat(fd).st_dev)
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = os.pread(fd, 4096, 0).decode("utf-8", "replace")
            start = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid={os.getpid()}\nhost={socket.gethostname()}\nstart={start}\n".encode(), 0)
            self.fd = fd
            return _describe(previous) if previous.strip() else None
        raise RunError(f"cannot take the lock {self.path}: it is replaced faster than it can be opened")

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
            self.fd = None


# ----------------------------------------------------------------------------- the folder of a run


def remove_stale_temps(folder: Path) -> list[Path]:
    """engine.atomic's leftovers of interrupted writes in `folder` and its eval_sets/, removed."""
    return atomic.remove_stale_temps(folder) + atomic.remove_stale_temps(folder / "eval_sets")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@dataclass
class RunFolder:
    """What a run asks of its output folder: `training` (a new run or `resumed`), `overwrite`, and the run's
    inputs that `--overwrite` must not remove (`keep`)."""

    path: Path
    files: RunFiles
    training: bool = True
    resumed: bool = False
    overwrite: bool = False
    keep: tuple[str, ...] = ()
    lock: RunLock | None = None

    def open(self) -> list[str]:
        """Rank 0, before anything is written: lock the folder, refuse (or with `overwrite` clear) another run's
        files, remove stale temporary files. Returns the lines to log once logging is set up."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock = RunLock(self.path)
        notes: list[str] = []
        try:
            stale = self.lock.acquire()
        except OSError as exc:  # a file system without flock: run unprotected, but say so
            self.lock = None
            notes.append(f"cannot lock {self.path / LOCK_NAME} ({exc.strerror}): nothing stops a second run on "
                         "this folder")
            stale = None
        if stale:
            notes.append(f"took over the lock of a run that ended without releasing it ({stale})")
        try:
            if self.training and not self.resumed:
                notes += self._claim()
            removed = remove_stale_temps(self.path)
        except BaseException:
            self.close()
            raise
        if removed:
            notes.append(f"removed {len(removed)} temporary file(s) of interrupted writes: {_names(removed)}")
        return notes

    def _claim(self) -> list[str]:
        previous = self.files.previous_run(self.path)
        if not previous:
            return []
        if not self.overwrite:
            last = self.path / self.files.last
            ways = ([f"continue it with --resume {last}"] if last.is_file() else []) + [
                f"choose {self.files.folder_hint}", "pass --overwrite to replace it"]
            raise RunError(f"{self.path} holds another run ({_names(previous)}): {', '.join(ways[:-1])}, or {ways[-1]}")
        doomed = self.files.framework_files(self.path)
        inputs = {Path(p).resolve() for p in self.keep}
        needed = [p for p in doomed if p.resolve() in inputs]
        if needed:
            raise RunError(f"--overwrite would remove {needed[0]}, an input of this run: copy it elsewhere first or "
                           f"choose {self.files.folder_hint}")
        names = _names(doomed, limit=20)
        for path in doomed:
            _remove(path)
        return [f"--overwrite: removed the previous run's {names} from {self.path}"]

    def close(self) -> None:
        """Release the lock (idempotent)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
