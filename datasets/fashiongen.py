"""FashionGen datasets read straight from the HDF5 files.

* `FashionGenSplit` — index of one split: product groups from `<root>/<split>/productid_list.json` checked
  against the HDF5 product ids, per-row category/subcategory, dense product ordinals, lazy HDF5 access.
* `FashionGenPretrainDataset` — one item per row (pretraining text with masking / replaced tokens).
* `FashionGenCMRTrainDataset` — one item per product, a random row of it (CMR fine-tuning).
* `FashionGenEvalSet` — evaluation images (every row of the chosen products) and texts (one per product).
* `HELDOUT_FILENAME`, `HELDOUT_KIND` — the held-out train products for model selection (`datasets.heldout`).

HDF5 handles are opened lazily per process (keyed by `os.getpid()`), never pickled, and closed in the
parent before any fork, so datasets are safe in forked or spawned DataLoader workers (the published code
shared one handle opened before the workers forked).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from datasets.fashiongen_h5 import (
    DESCRIPTION_KEY,
    IMAGE_KEY,
    PRODUCT_ID_KEY,
    PRODUCT_LIST_FILENAME,
    SUBCATEGORY_KEY,
    canonical_split,
    decode_h5_string,
    h5_path,
    load_product_groups,
    open_h5,
    read_rows,
)
from datasets.pretrain_text import INFO_KEYS, PretrainTextBuilder, PretrainTextOptions
from datasets.text import CMR_PREFIX, encode_fixed_length, pre_caption
from datasets.transforms import TestTransform, TrainTransform
from datasets.wordnet import Lexicon
from engine.errors import DataError
from engine.logger import get_logger
from engine.seeding import item_rng

MAX_LENGTH = 180  # published --max_word_num for CMR and pretraining
HELDOUT_FILENAME = "fashiongen_heldout_products.json"  # datasets.heldout file under <output_dir>/eval_sets/
HELDOUT_KIND = "fashiongen-train-products"
PREPARE_COMMAND = "python prepare_dataset.py --data-root {root}"
DESCRIPTION_CHUNK_ROWS = 1 << 15  # rows of input_description read at once by the empty-text check


# ----------------------------------------------------------------------------- lazy HDF5 handle


class LazyH5:
    """An HDF5 file opened read-only on first use in each process; the handle is never pickled."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        self._fd: int | None = None  # the same file opened for os.pread, same process as _file
        self._layouts: dict[str, RowLayout | None] = {}
        _HANDLES.add(self)

    def get(self) -> h5py.File:
        """The open file for the current process (opened now if this process has none)."""
        pid = os.getpid()
        if self._file is None or self._pid != pid:
            # A handle inherited from another process is dropped, not closed: it belongs to that process.
            self._file, self._pid, self._datasets = h5py.File(self.path, "r"), pid, {}
            self._fd, self._layouts = None, {}
        return self._file

    def dataset(self, key: str) -> h5py.Dataset:
        """A dataset of the file, its handle cached per process (the group look-up costs as much as a read)."""
        h5file = self.get()
        found = self._datasets.get(key)
        if found is None:
            found = self._datasets[key] = h5file[key]
        return found

    def read_row(self, key: str, row: int) -> np.ndarray:
        """Row `row` of a dataset: the values, dtype and shape (`dataset.shape[1:]`) of `dataset[row]`.

        Rows of contiguous, unfiltered datasets whose stored bytes are their NumPy bytes (native numbers,
        null-padded fixed-length strings: the FashionGen files) are read with one positional read at their file
        offset, ~10x faster than h5py's selection for a short string; other datasets (chunked, compressed,
        variable-length or space-padded strings, other byte order) go through h5py.
        """
        dataset = self.dataset(key)
        layout = self._layouts.get(key, _UNSET)
        if layout is _UNSET:
            layout = self._layouts[key] = RowLayout.of(dataset)
        if layout is None or not 0 <= row < layout.rows:
            return np.asarray(dataset[row])
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        buffer = bytearray(layout.row_bytes)
        if os.preadv(self._fd, [buffer], layout.offset + row * layout.row_bytes) != layout.row_bytes:
            return np.asarray(dataset[row])  # file shorter than its header says: let h5py report it
        return np.frombuffer(buffer, dtype=layout.dtype).reshape(layout.shape)

    @property
    def is_open(self) -> bool:
        return self._file is not None and self._pid == os.getpid()

    def close(self) -> None:
        """Close this process's handle (a later `get` reopens it)."""
        if self.is_open:
            self._file.close()
            if self._fd is not None:
                os.close(self._fd)
        self._file, self._pid, self._datasets, self._fd, self._layouts = None, None, {}, None, {}

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: h5py may already be gone
            pass


_HANDLES: weakref.WeakSet[LazyH5] = weakref.WeakSet()
_UNSET: Any = object()


@dataclass(frozen=True)
class RowLayout:
    """Where the rows of a contiguous dataset lie in the file: byte offset, bytes per row, row dtype/shape."""

    offset: int
    row_bytes: int
    rows: int
    dtype: np.dtype
    shape: tuple[int, ...]

    @staticmethod
    def of(dataset: h5py.Dataset) -> RowLayout | None:
        """The layout when a row's stored bytes are exactly its NumPy bytes, else None (read through h5py)."""
        dtype = dataset.dtype
        if dtype.kind not in "biufS" or not dtype.isnative or not dataset.shape:
            return None
        plist = dataset.id.get_create_plist()
        if plist.get_layout() != h5py.h5d.CONTIGUOUS or plist.get_nfilters() or plist.get_external_count():
            return None
        offset = dataset.id.get_offset()
        if offset is None:  # storage never allocated
            return None
        if dtype.kind == "S":
            tid = dataset.id.get_type()
            if not isinstance(tid, h5py.h5t.TypeStringID) or tid.get_strpad() != h5py.h5t.STR_NULLPAD:
                return None  # space padding or null termination: h5py converts the bytes
        elif dataset.id.get_type().get_size() != dtype.itemsize:
            return None
        shape = tuple(int(n) for n in dataset.shape[1:])
        return RowLayout(int(offset), int(np.prod(shape, dtype=np.int64)) * dtype.itemsize,
                         int(dataset.shape[0]), dtype, shape)


def _close_before_fork() -> None:
    # A child must not inherit an open HDF5 file: the library would share the parent's file state with it.
    for handle in list(_HANDLES):
        handle.close()


os.register_at_fork(before=_close_before_fork)


def _scalar(value: Any) -> Any:
    """One element of a (N,) or (N, 1) dataset row as a Python value (byte strings Latin-1-decoded)."""
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0]
    if isinstance(value, bytes | np.bytes_ | str):
        return decode_h5_string(value)
    return value.item() if isinstance(value, np.generic) else value


# ----------------------------------------------------------------------------- split index


def count_empty_descriptions(h5file: h5py.File, num_rows: int) -> int:
    """Rows whose `input_description` is empty or only white space (read in chunks)."""
    empty = 0
    for start in range(0, num_rows, DESCRIPTION_CHUNK_ROWS):
        values = read_rows(h5file, DESCRIPTION_KEY, start, min(num_rows, start + DESCRIPTION_CHUNK_ROWS))
        if values.dtype.kind in "SU":
            empty += int((np.char.str_len(np.char.strip(values)) == 0).sum())
        else:  # variable-length strings
            empty += sum(not decode_h5_string(v).strip() for v in values.tolist())
    return empty


class FashionGenSplit:
    """Index of one FashionGen split: products, rows, per-row category/subcategory, lazy HDF5 reads.

    Rows of a product are contiguous (checked by `load_product_groups`), so product p owns rows
    `product_starts[p] .. product_starts[p + 1] - 1`; `row_product[r]` is the dense product ordinal of row r.
    Nothing is read from `info_data.json`.
    """

    def __init__(self, data_root: str | Path, split: str) -> None:
        self.data_root, self.split = Path(data_root), canonical_split(split)
        self.h5_path = h5_path(self.data_root, self.split)
        self.product_list_path = self.data_root / self.split / PRODUCT_LIST_FILENAME
        with closing(open_h5(self.h5_path)) as h5file:  # closed again before any worker exists
            num_rows = int(h5file[PRODUCT_ID_KEY].shape[0])
            self.image_size = tuple(int(s) for s in h5file[IMAGE_KEY].shape[1:3])
            row_ids = read_rows(h5file, PRODUCT_ID_KEY, 0, num_rows).astype(np.int64)
            self._subcategories, self._row_subcategory = self._codes(h5file, SUBCATEGORY_KEY, num_rows)
            empty = count_empty_descriptions(h5file, num_rows)
        groups = load_product_groups(self.product_list_path)
        counts = np.array([len(rows) for _, rows in groups], dtype=np.int64)
        self.product_ids = np.array([pid for pid, _ in groups], dtype=np.int64)
        if int(counts.sum()) != num_rows or not np.array_equal(np.repeat(self.product_ids, counts), row_ids):
            raise DataError(
                f"{self.product_list_path} does not match {self.h5_path} (it covers {int(counts.sum())} rows, "
                f"the file has {num_rows}, or the product ids differ); it is stale: re-run "
                f"`{PREPARE_COMMAND.format(root=self.data_root)}`"
            )
        if empty == num_rows:
            raise DataError(f"{self.h5_path} ({self.split} split): every one of the {num_rows} rows has an empty "
                            f"{DESCRIPTION_KEY}; there is no text to train or evaluate on")
        if empty:
            get_logger().warning("%s (%s split): %d of %d rows have an empty %s (their texts are only the prompt)",
                                 self.h5_path, self.split, empty, num_rows, DESCRIPTION_KEY)
        self.product_starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.row_product = np.repeat(np.arange(len(groups), dtype=np.int64), counts)
        self._h5 = LazyH5(self.h5_path)

    @staticmethod
    def _codes(h5file: h5py.File, key: str, num_rows: int) -> tuple[list[str], np.ndarray]:
        """Distinct decoded strings of a per-row string dataset and each row's index into them."""
        values = read_rows(h5file, key, 0, num_rows)
        uniques, inverse = np.unique(values, return_inverse=True)
        return [decode_h5_string(v) for v in uniques.tolist()], inverse.astype(np.int32).reshape(-1)

    @property
    def num_rows(self) -> int:
        return int(self.row_product.size)

    @property
    def num_products(self) -> int:
        return int(self.product_ids.size)

    def product_rows(self, product: int) -> range:
        """Rows of product ordinal `product`, in pose order."""
        return range(int(self.product_starts[product]), int(self.product_starts[product + 1]))

    def row_subcategory(self, row: int) -> str:
        return self._subcategories[self._row_subcategory[row]]

    def read_image(self, row: int) -> Image.Image:
        """The row's photograph as an RGB PIL image (stored size; transforms resize)."""
        return Image.fromarray(self.read_pixels(row))

    def read_pixels(self, row: int) -> np.ndarray:
        """The row's photograph, uint8 (H, W, 3)."""
        return np.asarray(self._h5.read_row(IMAGE_KEY, row), dtype=np.uint8)

    def read_fields(self, row: int, keys: Sequence[str]) -> dict[str, Any]:
        """Per-row values of `keys` (strings decoded from Latin-1), read from the HDF5 file."""
        return {key: _scalar(self._h5.read_row(key, row)) for key in keys}

    def description(self, row: int) -> str:
        return self.read_fields(row, [DESCRIPTION_KEY])[DESCRIPTION_KEY]

    def select_products(self, products: Sequence[int] | np.ndarray | None) -> np.ndarray:
        """Sorted product ordinals of a subset (None = all); out-of-range, repeated or empty is an error."""
        if products is None:
            chosen = np.arange(self.num_products, dtype=np.int64)
        else:
            chosen = np.asarray(list(products), dtype=np.int64).reshape(-1)
            if chosen.size and (chosen.min() < 0 or chosen.max() >= self.num_products):
                raise DataError(
                    f"{self.h5_path.name}: product indices must be in [0, {self.num_products}); "
                    f"got {int(chosen.min())}..{int(chosen.max())}"
                )
            if np.unique(chosen).size != chosen.size:
                raise DataError(f"{self.h5_path.name}: the product subset lists a product more than once")
            chosen = np.sort(chosen)
        if chosen.size == 0:
            raise DataError(f"{self.h5_path}: no products selected (empty split or product subset)")
        return chosen

    def rows_of(self, products: np.ndarray) -> np.ndarray:
        """All rows of the given products, product by product, in pose order."""
        return np.concatenate([np.arange(self.product_starts[p], self.product_starts[p + 1]) for p in products])

    def close(self) -> None:
        """Close this process's HDF5 handle (reopened on the next read)."""
        self._h5.close()


# ----------------------------------------------------------------------------- training datasets


class FashionGenPretrainDataset(Dataset):
    """Pretraining: one item per row of the chosen products (default: all).

    Item: `image` float32 (3, R, R); `input_ids`, `attention_mask`, `mlm_labels` (-100 = ignore),
    `rtd_labels` long (max_length,); `product_idx` long scalar (dense product ordinal in the split).
    Draws come from `item_rng(seed, epoch, row)` (image and text from two child generators).
    """

    def __init__(self, split: FashionGenSplit, tokenizer: Any, *, image_res: int = 256,
                 randaugment_magnitude: float = 7, products: Sequence[int] | None = None, seed: int = 0,
                 max_length: int = MAX_LENGTH, text_options: PretrainTextOptions | None = None,
                 lexicon: Lexicon | None = None) -> None:
        self.split, self.seed, self.epoch = split, seed, 0
        self.products = split.select_products(products)
        self.rows = split.rows_of(self.products)
        self.transform = TrainTransform(image_res, randaugment_magnitude)
        self.text = PretrainTextBuilder(tokenizer, max_length, text_options, lexicon)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return int(self.rows.size)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = int(self.rows[i])
        image_rng, text_rng = item_rng(self.seed, self.epoch, row).spawn(2)
        try:
            input_ids, attention_mask, mlm_labels, rtd_labels = self.text(
                self.split.read_fields(row, INFO_KEYS), text_rng
            )
        except DataError as exc:
            raise DataError(f"{self.split.h5_path}, row {row}: {exc}") from None
        return {
            "image": self.transform(self.split.read_image(row), image_rng),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "mlm_labels": mlm_labels,
            "rtd_labels": rtd_labels,
            "product_idx": torch.tensor(int(self.split.row_product[row]), dtype=torch.long),
        }


class FashionGenCMRTrainDataset(Dataset):
    """CMR fine-tuning: one item per product; a row of it drawn from `item_rng(seed, epoch, product)`.

    Text: clean("the image description is " + the row's description), `[CLS] ... [SEP]` padded to
    max_length; `legacy_tokenization=True` gives the published `[CLS]` + pieces without `[SEP]`
    (docs/compat.md, compat.text_layout).
    Item: `image` float32 (3, R, R); `input_ids`, `attention_mask` long (max_length,); `product_idx` long.
    """

    def __init__(self, split: FashionGenSplit, tokenizer: Any, *, image_res: int = 256,
                 randaugment_magnitude: float = 7, products: Sequence[int] | None = None, seed: int = 0,
                 max_length: int = MAX_LENGTH, legacy_tokenization: bool = False) -> None:
        self.split, self.tokenizer, self.seed, self.epoch = split, tokenizer, seed, 0
        self.max_length, self.add_sep = max_length, not legacy_tokenization
        self.products = split.select_products(products)
        self.transform = TrainTransform(image_res, randaugment_magnitude)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return int(self.products.size)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        product = int(self.products[i])
        row_rng, image_rng = item_rng(self.seed, self.epoch, product).spawn(2)
        rows = self.split.product_rows(product)
        row = rows[int(row_rng.integers(0, len(rows)))]
        text = pre_caption(CMR_PREFIX + self.split.description(row))
        ids, mask = encode_fixed_length(self.tokenizer, [text], self.max_length, add_sep=self.add_sep)
        return {
            "image": self.transform(self.split.read_image(row), image_rng),
            "input_ids": ids[0],
            "attention_mask": mask[0],
            "product_idx": torch.tensor(product, dtype=torch.long),
        }


# ----------------------------------------------------------------------------- evaluation


class FashionGenEvalImages(Dataset):
    """Evaluation images in order: item `image` float32 (3, R, R) (test transform), `row` (HDF5 row) and
    `index` (position 0..N_eval-1), both long."""

    def __init__(self, split: FashionGenSplit, rows: np.ndarray, image_res: int = 256) -> None:
        self.split, self.rows, self.transform = split, rows, TestTransform(image_res)

    def __len__(self) -> int:
        return int(self.rows.size)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = int(self.rows[i])
        return {
            "image": self.transform(self.split.read_image(row)),
            "row": torch.tensor(row, dtype=torch.long),
            "index": torch.tensor(i, dtype=torch.long),
        }


class FashionGenEvalTexts(Dataset):
    """Evaluation texts, one per product: "the image description is " + clean(description of its first
    row), `[CLS] ... [SEP]` padded to max_length. Item: `input_ids`, `attention_mask` long (max_length,),
    `index` long (product position 0..P_eval-1)."""

    def __init__(self, split: FashionGenSplit, first_rows: np.ndarray, tokenizer: Any,
                 max_length: int = MAX_LENGTH) -> None:
        self.split, self.first_rows, self.tokenizer, self.max_length = split, first_rows, tokenizer, max_length

    def __len__(self) -> int:
        return int(self.first_rows.size)

    def text(self, i: int) -> str:
        return CMR_PREFIX + pre_caption(self.split.description(int(self.first_rows[i])))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids, mask = encode_fixed_length(self.tokenizer, [self.text(i)], self.max_length, add_sep=True)
        return {"input_ids": ids[0], "attention_mask": mask[0], "index": torch.tensor(i, dtype=torch.long)}


class FashionGenEvalSet:
    """CMR evaluation candidates over a split and an optional product subset.

    `images` / `texts` are the two datasets; `product_rows[p]` lists the evaluation-image indices
    (0..N_eval-1) of product p (p = position in `products`), `row_subcategory[i]` is the subcategory of
    evaluation image i. Use the whole validation (= test) split, or held-out train products for selection.
    """

    def __init__(self, split: FashionGenSplit, tokenizer: Any, *, products: Sequence[int] | None = None,
                 image_res: int = 256, max_length: int = MAX_LENGTH) -> None:
        self.split = split
        self.products = split.select_products(products)
        counts = split.product_starts[self.products + 1] - split.product_starts[self.products]
        offsets = np.concatenate([[0], np.cumsum(counts)])
        self.rows = split.rows_of(self.products)
        self.product_rows: list[list[int]] = [
            list(range(int(a), int(b))) for a, b in zip(offsets[:-1], offsets[1:])
        ]
        self.row_subcategory: list[str] = [split.row_subcategory(int(r)) for r in self.rows]
        self.images = FashionGenEvalImages(split, self.rows, image_res)
        self.texts = FashionGenEvalTexts(split, split.product_starts[self.products], tokenizer, max_length)

    @property
    def num_images(self) -> int:
        return int(self.rows.size)

    @property
    def num_products(self) -> int:
        return int(self.products.size)

    @property
    def product_ids(self) -> list[int]:
        return self.split.product_ids[self.products].tolist()
