"""Reading helpers for the raw FashionGen HDF5 files (keys, string decoding, contiguous product rows).

Shared by `prepare_dataset.py` and the FashionGen training/evaluation datasets. Every
problem with an input file is raised as `FileNotFoundError` (file absent) or
`FashionGenFormatError` (unreadable or malformed), with a one-line message that names
the file and the key or record concerned.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from engine.errors import DataError

H5_FILENAME_TEMPLATE = "fashiongen_256_256_{split}.h5"
SPLITS: tuple[str, ...] = ("train", "validation")
# "val" and "test" both mean the validation file: FashionGen has no separate test split.
SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "validation": "validation",
    "val": "validation",
    "test": "validation",
}
SYNTHETIC_CREATE_COMMAND = "python -m datasets.synthetic fashiongen --out {out}"  # writes {out}/fashiongen/

PRODUCT_LIST_FILENAME = "productid_list.json"
INFO_DATA_FILENAME = "info_data.json"

IMAGE_KEY = "input_image"
PRODUCT_ID_KEY = "input_productID"
DESCRIPTION_KEY = "input_description"
CATEGORY_KEY = "input_category"
SUBCATEGORY_KEY = "input_subcategory"

# Byte-string datasets (Latin-1 encoded).
TEXT_KEYS: frozenset[str] = frozenset(
    {
        "input_description",
        "input_category",
        "input_subcategory",
        "input_name",
        "input_composition",
        "input_gender",
        "input_season",
        "input_brand",
        "input_department",
        "input_concat_description",
        "input_pose",
    }
)
INTEGER_KEYS: frozenset[str] = frozenset({"input_productID", "index", "index_2"})
# Every key of the released files.
ALL_KEYS: tuple[str, ...] = (IMAGE_KEY, *sorted(INTEGER_KEYS), "input_msrpUSD", *sorted(TEXT_KEYS))
# Keys some part of the framework reads; the others are optional (copied to info_data.json when present).
REQUIRED_KEYS: tuple[str, ...] = (
    IMAGE_KEY,
    PRODUCT_ID_KEY,
    DESCRIPTION_KEY,
    CATEGORY_KEY,
    SUBCATEGORY_KEY,
    "input_name",
    "input_composition",
    "input_gender",
    "input_season",
)

Scalar = str | int | float | bool | None
ProductGroups = list[tuple[int, list[int]]]


class FashionGenFormatError(DataError):
    """A FashionGen file (HDF5 or derived JSON) is unreadable or malformed."""


def canonical_split(split: str) -> str:
    """Map a split word (`train`, `validation`, `val`, `test`) to its file split name."""
    try:
        return SPLIT_ALIASES[split]
    except KeyError:
        raise ValueError(
            f"unknown FashionGen split {split!r}; expected one of {sorted(SPLIT_ALIASES)}"
        ) from None


def h5_filename(split: str) -> str:
    """File name of a split, e.g. `fashiongen_256_256_validation.h5` for `test`."""
    return H5_FILENAME_TEMPLATE.format(split=canonical_split(split))


def synthetic_command(data_root: str | Path) -> str:
    """The generator call whose output folder is `data_root` (it writes into `<out>/fashiongen/`)."""
    root = Path(data_root)
    if root.name == "fashiongen":
        return SYNTHETIC_CREATE_COMMAND.format(out=root.parent)
    return SYNTHETIC_CREATE_COMMAND.format(out=root) + f" and use {root / 'fashiongen'} as the data root"


def h5_path(data_root: str | Path, split: str) -> Path:
    """Path of a split's HDF5 file under `data_root`; FileNotFoundError (with the fix) if absent."""
    path = Path(data_root) / h5_filename(split)
    if not path.is_file():
        raise FileNotFoundError(
            f"FashionGen file not found: {path} (create synthetic data with "
            f"`{synthetic_command(data_root)}`, or download the FashionGen "
            f"256x256 release and put {', '.join(h5_filename(s) for s in SPLITS)} in {data_root})"
        )
    return path


def image_filename(product_id: int, k: int) -> str:
    """Name of the k-th image (pose) of a product in `images/` (`prepare_dataset.py --extract-images`)."""
    return f"{product_id}_{k}.png"


def decode_h5_string(value: bytes | str) -> str:
    """Decode one HDF5 byte string (Latin-1); `str` passes through."""
    if isinstance(value, str):
        return value
    return bytes(value).decode("latin-1")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _source(h5file: h5py.File) -> str:
    return str(h5file.filename)


def open_h5(path: str | Path, required_keys: Sequence[str] = REQUIRED_KEYS) -> h5py.File:
    """Open a FashionGen HDF5 file read-only and validate it (see `validate_h5`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FashionGen file not found: {path}")
    try:
        h5file = h5py.File(path, "r")
    except OSError as exc:
        raise FashionGenFormatError(
            f"{path}: cannot open as HDF5 (truncated or corrupted file?): {_one_line(exc)}"
        ) from None
    try:
        validate_h5(h5file, required_keys)
    except BaseException:
        h5file.close()
        raise
    return h5file


def _check_dataset(source: str, key: str, dataset: Any) -> None:
    """Shape and dtype checks of one top-level dataset."""
    if not isinstance(dataset, h5py.Dataset):
        raise FashionGenFormatError(f"{source}: key {key!r} is not a dataset ({type(dataset).__name__})")
    shape, kind = dataset.shape, dataset.dtype.kind
    if key == IMAGE_KEY:
        if len(shape) != 4 or shape[3] != 3 or dataset.dtype != np.uint8:
            raise FashionGenFormatError(
                f"{source}: key {key!r} has shape {shape} and dtype {dataset.dtype}; expected (N, H, W, 3) uint8"
            )
        return
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise FashionGenFormatError(f"{source}: key {key!r} has shape {shape}; expected (N,) or (N, 1)")
    if key in TEXT_KEYS and kind not in "SOU":
        raise FashionGenFormatError(f"{source}: key {key!r} has dtype {dataset.dtype}; expected byte strings")
    if key in INTEGER_KEYS and kind not in "iu":
        raise FashionGenFormatError(f"{source}: key {key!r} has dtype {dataset.dtype}; expected integers")
    if kind not in "SOUiufb":
        raise FashionGenFormatError(
            f"{source}: key {key!r} has dtype {dataset.dtype}; cannot decode (expected byte strings or numbers)"
        )


def validate_h5(h5file: h5py.File, required_keys: Sequence[str] = REQUIRED_KEYS) -> int:
    """Check required keys, shapes, dtypes and equal first dimensions; return the row count N."""
    source = _source(h5file)
    missing = [key for key in required_keys if key not in h5file]
    if missing:
        raise FashionGenFormatError(
            f"{source}: missing key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}"
        )
    keys = sorted(h5file.keys())
    for key in keys:
        _check_dataset(source, key, h5file[key])
    reference = PRODUCT_ID_KEY if PRODUCT_ID_KEY in h5file else keys[0] if keys else None
    if reference is None:
        raise FashionGenFormatError(f"{source}: file holds no datasets")
    num_rows = h5file[reference].shape[0]
    for key in keys:
        if h5file[key].shape[0] != num_rows:
            raise FashionGenFormatError(
                f"{source}: key {key!r} has {h5file[key].shape[0]} rows but {reference!r} has {num_rows}; "
                "all per-row datasets must have the same first dimension"
            )
    if num_rows == 0:
        raise FashionGenFormatError(f"{source}: file holds no rows")
    return int(num_rows)


def read_rows(h5file: h5py.File, key: str, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of one dataset; per-row scalars come back flattened to shape (n,)."""
    try:
        values = h5file[key][start:stop]
    except (OSError, RuntimeError) as exc:
        raise FashionGenFormatError(
            f"{_source(h5file)}: key {key!r}: cannot read rows {start}-{stop - 1}: {_one_line(exc)}"
        ) from None
    return values if key == IMAGE_KEY else values.reshape(stop - start)


def decode_column(values: np.ndarray, key: str, source: str = "", start: int = 0) -> list[Scalar]:
    """Per-row scalars as Python values: Latin-1 strings, ints, floats (non-finite -> None)."""
    kind = values.dtype.kind
    items = values.tolist()
    if kind == "S":
        return [item.decode("latin-1") for item in items]
    if kind == "f":
        return [item if math.isfinite(item) else None for item in items]
    if kind in "iubU":
        return items
    decoded: list[Scalar] = []
    for offset, item in enumerate(items):  # object dtype: variable-length strings
        if isinstance(item, bytes | str):
            decoded.append(decode_h5_string(item))
        else:
            raise FashionGenFormatError(
                f"{source}: key {key!r}, row {start + offset}: cannot decode value {item!r} "
                f"({type(item).__name__}); expected a byte string"
            )
    return decoded


def iter_row_chunks(
    h5file: h5py.File, keys: Sequence[str], chunk_rows: int, start: int = 0, stop: int | None = None
) -> Iterator[tuple[int, dict[str, list[Scalar]]]]:
    """Stream decoded per-row values of `keys` in chunks: yields (first row, {key: values})."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    stop = h5file[PRODUCT_ID_KEY].shape[0] if stop is None else stop
    source = _source(h5file)
    for chunk_start in range(start, stop, chunk_rows):
        chunk_stop = min(stop, chunk_start + chunk_rows)
        yield (
            chunk_start,
            {
                key: decode_column(read_rows(h5file, key, chunk_start, chunk_stop), key, source, chunk_start)
                for key in keys
            },
        )


class ProductGrouper:
    """Incremental grouping of rows into contiguous product runs; a product in two runs is an error."""

    def __init__(self, source: str | None = None) -> None:
        self.groups: ProductGroups = []
        self._group_of: dict[int, int] = {}
        self._repeated: int | None = None  # index of a run whose product already had an earlier run
        self._where = f"{source}: " if source else ""

    def add(self, product_id: int, row: int) -> int:
        """Add the next row (rows must come in order); return its position k within the product's run."""
        if isinstance(product_id, np.generic):
            product_id = product_id.item()
        if self.groups and self.groups[-1][0] == product_id:
            rows = self.groups[-1][1]
            rows.append(row)
            return len(rows) - 1
        self._raise_if_repeated()
        if product_id in self._group_of:
            self._repeated = len(self.groups)
        else:
            self._group_of[product_id] = len(self.groups)
        self.groups.append((product_id, [row]))
        return 0

    def _raise_if_repeated(self) -> None:
        if self._repeated is None:
            return
        product_id, second = self.groups[self._repeated]
        first = self.groups[self._group_of[product_id]][1]
        raise FashionGenFormatError(
            f"{self._where}product id {product_id} occurs in two separate runs: rows {first[0]}-{first[-1]} "
            f"and rows {second[0]}-{second[-1]}; the rows of one product must be contiguous "
            "(products are indexed by row ranges)"
        )

    def finish(self) -> ProductGroups:
        """The groups `[(product_id, [rows...]), ...]` in row order, after the final contiguity check."""
        self._raise_if_repeated()
        return self.groups


def check_product_groups(groups: Sequence[Any], source: str, num_rows: int | None = None) -> ProductGroups:
    """Validate a loaded product list (entries `[pid, [rows]]`): consecutive rows, in order, unique pids."""
    checked: ProductGroups = []
    seen: dict[int, int] = {}
    next_row = 0
    for index, entry in enumerate(groups):
        ok = isinstance(entry, list | tuple) and len(entry) == 2 and isinstance(entry[1], list | tuple)
        rows = list(entry[1]) if ok else []
        if not ok or not isinstance(entry[0], int) or not rows or not all(isinstance(r, int) for r in rows):
            raise FashionGenFormatError(
                f"{source}: entry {index}: expected [product_id, [row, ...]], got {str(entry)[:80]}"
            )
        product_id = entry[0]
        if rows != list(range(next_row, next_row + len(rows))):
            raise FashionGenFormatError(
                f"{source}: entry {index} (product {product_id}): rows {rows[0]}-{rows[-1]} do not continue "
                f"at row {next_row}; rows must be contiguous and in order"
            )
        if product_id in seen:
            raise FashionGenFormatError(
                f"{source}: product id {product_id} occurs in entries {seen[product_id]} and {index}; "
                "the rows of one product must be contiguous (products are indexed by row ranges)"
            )
        seen[product_id] = index
        next_row += len(rows)
        checked.append((product_id, rows))
    if num_rows is not None and next_row != num_rows:
        raise FashionGenFormatError(f"{source}: product list covers {next_row} rows, expected {num_rows}")
    return checked


def load_product_groups(path: str | Path, num_rows: int | None = None) -> ProductGroups:
    """Read and validate a `productid_list.json` written by prepare_dataset.py."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"product list not found: {path} (create it with: python prepare_dataset.py "
            f"--data-root {path.parent.parent})"
        )
    try:
        groups = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FashionGenFormatError(f"{path}: not valid JSON: {_one_line(exc)}") from None
    if not isinstance(groups, list):
        raise FashionGenFormatError(f"{path}: expected a JSON list of [product_id, [rows]] entries")
    return check_product_groups(groups, str(path), num_rows)
