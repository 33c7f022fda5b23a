"""Atomic file writes: a temporary file in the target's folder, fsync, rename over the target, fsync the folder.

A reader sees either the old file or the complete new one, never a partial write; after a crash at most a
hidden `.<name>.<random>.tmp` file is left, and on an exception inside the write it is removed. New files get
the permissions `open()` would give them (0666 less the umask, usually 0644), not mkstemp's 0600.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".tmp"
TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")  # `.<name>.<8 hex digits>.tmp`, as `_create_temp` names them


def _create_temp(path: Path) -> tuple[Path, int]:
    """A new, exclusively created temporary file next to `path` (mode 0666 & ~umask) and its descriptor."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file next to {path}")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (best effort: some file systems cannot open or sync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", *, encoding: str = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary file for writing (`mode` "w" text, newlines unchanged, or "wb"); on a clean exit
    it replaces `path` (folders created as needed), on an exception it is deleted and `path` is untouched."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = _create_temp(path)
    try:
        text = {"encoding": encoding, "newline": ""} if mode == "w" else {}
        with os.fdopen(fd, mode, **text) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically (newlines written as given)."""
    with atomic_write(path) as f:
        f.write(text)
    return Path(path)


def write_json(path: str | Path, obj: Any, *, indent: int | None = 1, sort_keys: bool = False,
               ensure_ascii: bool = True) -> Path:
    """Write JSON plus a newline atomically; `indent=None` writes one compact line (no spaces)."""
    separators = (",", ":") if indent is None else None
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii,
                                       separators=separators) + "\n")


def torch_save(path: str | Path, obj: Any) -> Path:
    """`torch.save(obj)` to `path` atomically."""
    import torch

    with atomic_write(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temporary files that interrupted atomic writes left in `folder` (only files named
    `.<name>.<8 hex digits>.tmp`, not in subfolders); returns them. Call it only while no other process writes
    there (e.g. under the run folder's lock)."""
    folder = Path(folder)
    try:
        entries = sorted(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for entry in entries:
        if TEMP_NAME.match(entry.name) and entry.is_file() and not entry.is_symlink():
            try:
                entry.unlink()
            except FileNotFoundError:
                continue
            removed.append(entry)
    return removed
