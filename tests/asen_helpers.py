"""Shared helpers of the ASEN++ tests: synthetic data generated once per session, tiny config arguments."""

from __future__ import annotations

import shutil
from pathlib import Path

from datasets.synthetic import generate_asen

ROOT = Path(__file__).resolve().parents[1]
_CACHE: dict[str, Path] = {}


def synthetic_asen(tmp_path_factory) -> Path:
    """`<base>/asen/` written by `python -m datasets.synthetic asen` (seed 0, default sizes), shared read-only."""
    if "asen" not in _CACHE:
        base = tmp_path_factory.mktemp("asen_data")
        generate_asen(base / "asen", seed=0)
        _CACHE["asen"] = base / "asen"
    return _CACHE["asen"]


def writable_copy(data: Path, dest: Path) -> Path:
    """A copy of the synthetic data folder that a test may corrupt (images are linked, not copied)."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in data.iterdir():
        if entry.is_dir():
            (dest / entry.name).symlink_to(entry)
        else:
            shutil.copy(entry, dest / entry.name)
    return dest


def tiny_args(data: Path, stage: int, out: Path, *extra: str) -> list[str]:
    """`--cfg <synthetic.yaml> configs/asen/synthetic/s<stage>.yaml --set ...` for a run writing to `out`."""
    return ["--cfg", str(data / "synthetic.yaml"), str(ROOT / f"configs/asen/synthetic/s{stage}.yaml"),
            "--set", f"DATA.BASE_PATH={data.parent}", f"DATA.DATASET={data.name}", f"SAVE_DIR={out}",
            "DEVICE=cpu", *extra]
