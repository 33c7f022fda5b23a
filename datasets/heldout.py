"""Held-out splits for model selection (docs/compat.md, data.select_on): `count` or `fraction` of `total`
units (FashionGen products, FashionIQ reference images, ...) drawn once from a seed and saved as JSON, so a
resumed or repeated run selects on the same units.

File (`FORMAT`): kind, total, seed, draw, count, fraction (null when drawn by count), the fingerprint of what was
split, the sorted held-out indices and, when given, their labels (product ids, image names) for people. A file
drawn for another data set (kind, total or fingerprint differ) or with other options is refused with one line.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from engine import distributed as du
from engine.atomic import write_json
from engine.config import ConfigError
from engine.errors import DataError
from engine.seeding import derive_seed

FORMAT = "fashionfine-heldout-1"
Draw = Literal["choice", "shuffle"]
_CHOICE_STREAM = 0x48454C44  # "HELD": keeps the `choice` draw independent of other uses of the seed


@dataclass(frozen=True)
class HeldoutSplit:
    """Sorted indices of the units kept for training and of those held out."""

    train: list[int]
    heldout: list[int]

    def items_of(self, groups: list[int]) -> HeldoutSplit:
        """The same split over items, given each item's unit (e.g. a triplet's reference image)."""
        held = set(self.heldout)
        return HeldoutSplit([i for i, g in enumerate(groups) if g not in held],
                            [i for i, g in enumerate(groups) if g in held])


def check_batch_fits(num_samples: int, batch_size: int, world_size: int, samples: str, heldout: str = "") -> None:
    """A training set too small for one batch per process is a ConfigError naming data.batch_size and the
    number of training `samples` (e.g. "products") left after holding `heldout` (e.g. "40 products") out."""
    per_process = num_samples // max(1, world_size)
    if per_process >= batch_size:
        return
    after = f" (after holding out {heldout} for selection)" if heldout else ""
    processes = f" per process ({world_size} processes)" if world_size > 1 else ""
    raise ConfigError(f"data.batch_size {batch_size}{processes} is larger than the {num_samples} training {samples}"
                      f"{after}: not one full batch to train on; lower data.batch_size to at most "
                      f"{max(1, per_process)}")


def fingerprint_of(data: Any) -> str:
    """SHA-256 of the compact JSON of `data` (e.g. the product ids of a split)."""
    return hashlib.sha256(json.dumps(data, separators=(",", ":")).encode("utf-8")).hexdigest()


def heldout_size(total: int, kind: str, count: int | None = None, fraction: float | None = None) -> int:
    """`count`, or round(fraction x total) but at least 1; it must leave units on both sides."""
    if (count is None) == (fraction is None):
        raise ValueError("give exactly one of count and fraction")
    if fraction is not None and not 0.0 < fraction < 1.0:
        raise ValueError(f"held-out fraction must be in (0, 1), got {fraction}")
    size = int(count) if count is not None else max(1, round(fraction * total))
    if not 1 <= size < total:
        raise DataError(f"cannot hold out {size} of {total} {kind}: at least 1 must be held out and some kept for "
                        "training (set another held-out size)")
    return size


def draw_heldout(total: int, size: int, seed: int, draw: Draw = "choice") -> list[int]:
    """`size` distinct indices of [0, total), sorted: `choice` = NumPy's choice without replacement from a
    generator seeded by (seed, "HELD"); `shuffle` = the first `size` of `random.Random(seed).shuffle(range)`."""
    if draw == "choice":
        rng = np.random.default_rng(derive_seed(seed, _CHOICE_STREAM))
        return sorted(rng.choice(total, size=size, replace=False).tolist())
    if draw == "shuffle":
        order = list(range(total))
        random.Random(seed).shuffle(order)
        return sorted(order[:size])
    raise ValueError(f"unknown held-out draw {draw!r} (choice, shuffle)")


def _read(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not a held-out split file ({' '.join(str(exc).split())}); delete it to draw "
                        "a new one") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise DataError(f"{path}: not a held-out split file (format is not {FORMAT}); delete it to draw a new one")
    return record


def _check(path: Path, record: dict[str, Any], wanted: dict[str, Any], data: dict[str, Any]) -> list[int]:
    """The held-out indices of `record` after checking it was drawn for `data` with the `wanted` options."""
    other = [f"{k} {record.get(k)!r} != {v!r}" for k, v in data.items() if record.get(k) != v]
    if other:
        raise DataError(f"{path}: held-out split drawn for another data set ({'; '.join(other)}); delete it to "
                        "draw a new one")
    other = [f"{k} {record.get(k)!r} != {v!r}" for k, v in wanted.items() if record.get(k) != v]
    if other:
        raise DataError(f"{path}: held-out split drawn with other options ({'; '.join(other)}); delete it or use "
                        "the same settings")
    heldout = record.get("heldout")
    total = data["total"]
    if (not isinstance(heldout, list) or not all(isinstance(i, int) and 0 <= i < total for i in heldout)
            or heldout != sorted(set(heldout)) or len(heldout) != record.get("count") or not heldout):
        raise DataError(f"{path}: not a held-out split file (`heldout` is not a sorted list of distinct indices "
                        f"in [0, {total}) of length `count`); delete it to draw a new one")
    return heldout


def _load_or_create(path: Path, total: int, kind: str, fingerprint: str, count: int | None,
                    fraction: float | None, seed: int, draw: Draw, labels: list[Any] | None) -> list[int]:
    data = {"kind": kind, "total": total, "fingerprint": fingerprint}
    wanted: dict[str, Any] = {"seed": seed, "draw": draw}
    wanted.update({"count": count} if count is not None else {"fraction": fraction})
    if path.is_file():
        return _check(path, _read(path), wanted, data)
    size = heldout_size(total, kind, count, fraction)
    heldout = draw_heldout(total, size, seed, draw)
    record = {"format": FORMAT, **data, "seed": seed, "draw": draw, "count": size, "fraction": fraction,
              "heldout": heldout}
    if labels is not None:
        record["heldout_labels"] = [labels[i] for i in heldout]
    write_json(path, record)
    return heldout


def load_or_create_heldout(path: str | Path, total: int, *, kind: str, fingerprint: str, count: int | None = None,
                           fraction: float | None = None, seed: int = 0, draw: Draw = "choice",
                           labels: list[Any] | None = None) -> HeldoutSplit:
    """The split saved at `path`, or a new one drawn and saved there (by rank 0; every rank gets the result).

    `kind` names the units and `fingerprint` (see `fingerprint_of`) what was split; `labels[i]` names unit i
    in the file. Give exactly one of `count` and `fraction`; a file must match it, `seed` and `draw`.
    """
    if len(labels if labels is not None else range(total)) != total:
        raise ValueError(f"{len(labels or [])} labels for {total} units")
    result: list[int] | DataError | None = None
    if du.is_main_process():
        try:
            result = _load_or_create(Path(path), int(total), kind, fingerprint, count, fraction, int(seed), draw,
                                     labels)
        except DataError as exc:
            if not du.is_dist():
                raise
            result = exc  # every rank raises it, instead of the others waiting forever
    result = du.broadcast_object(result)
    if isinstance(result, DataError):
        raise result
    held = set(result)
    return HeldoutSplit([i for i in range(total) if i not in held], list(result))
