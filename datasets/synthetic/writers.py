"""Byte-deterministic file writers (JSON, PNG, text lines, HDF5 datasets)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image


def write_json(path: Path, obj: Any, sort_keys: bool = False, indent: int | None = 2) -> Path:
    """UTF-8 JSON, non-ASCII kept, trailing newline; key order fixed by the caller or sorted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_png(path: Path, image: np.ndarray) -> Path:
    """Lossless RGB PNG; PIL writes no timestamp chunk, so equal pixels give equal bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(path, format="PNG", compress_level=1)
    return path


def latin1_column(values: list[str]) -> np.ndarray:
    """(N, 1) fixed-length byte-string array, each value encoded as ISO-8859-1."""
    encoded = [v.encode("latin-1") for v in values]
    width = max(1, max((len(b) for b in encoded), default=1))
    return np.array(encoded, dtype=f"S{width}").reshape(-1, 1)


def write_h5(path: Path, datasets: dict[str, np.ndarray]) -> Path:
    """Write datasets in the given order; `track_times=False` keeps the file byte-identical across runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", track_order=False) as f:
        for key, value in datasets.items():
            f.create_dataset(key, data=value, track_times=False)
    return path
