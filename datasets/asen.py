"""ASEN++ data: split/label/query/candidate files (the published formats), their validator, image datasets and
the per-epoch triplet batch sampler.

Every malformed record is reported as ``file:line: reason``. Indices are 0-based; "line" is 1-based.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from datasets.asen_transforms import global_transform, original_tensor, pad_originals
from datasets.images import load_rgb
from engine.config import ConfigError
from engine.errors import DataError
from engine.logger import get_logger
from engine.seeding import derive_seed

SYNTHETIC_COMMAND = "python -m datasets.synthetic asen --out data/synthetic"
MISSING_HINT = (
    "the FashionAI/DARN/DeepFashion split files come from the published ASEN++ data.zip; "
    f"for synthetic data run `{SYNTHETIC_COMMAND}`"
)
SPLITS = ("train", "valid", "test")
IMAGE_CHECK_SAMPLE = 1000


# ---------------------------------------------------------------------------------------------- readers
def _read_lines(path: Path) -> list[str]:
    """Lines of a text file; trailing blank lines are ignored, blank lines inside are an error."""
    if not path.is_file():
        raise DataError(f"{path}: file not found; {MISSING_HINT}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            raise DataError(f"{path}:{n}: empty line")
    return lines


def read_image_list(path: str | Path) -> list[str]:
    """`filenames_<split>.txt`: one relative image path per line."""
    return [line.strip() for line in _read_lines(Path(path))]


def _parse_ints(path: Path, n: int, line: str) -> list[int]:
    out = []
    for i, token in enumerate(line.split(), 1):
        try:
            out.append(int(token))
        except ValueError:
            raise DataError(f"{path}:{n}: field {i} {token!r} is not an integer") from None
    return out


def _check_pair(path: Path, n: int, fid: int, a: int, v: int, num_images: int, num_values: Sequence[int]) -> None:
    if not 0 <= fid < num_images:
        raise DataError(f"{path}:{n}: image index {fid} out of range [0, {num_images}) "
                        f"(the split's image list has {num_images} lines)")
    if not 0 <= a < len(num_values):
        raise DataError(f"{path}:{n}: attribute index {a} out of range [0, {len(num_values)})")
    if not 0 <= v < num_values[a]:
        raise DataError(f"{path}:{n}: value index {v} out of range [0, {num_values[a]}) for attribute {a}")


@dataclass(frozen=True)
class LabelLines:
    """(image, attribute, value) records in file order, with the 1-based line each came from."""

    fid: np.ndarray
    attr: np.ndarray
    value: np.ndarray
    line: np.ndarray
    path: Path

    def __len__(self) -> int:
        return len(self.fid)


def _label_lines(path: Path, rows: list[tuple[int, int, int, int]]) -> LabelLines:
    arr = np.array(rows, dtype=np.int64).reshape(-1, 4)
    return LabelLines(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], path)


def read_train_labels(path: str | Path, num_images: int, num_values: Sequence[int]) -> LabelLines:
    """`label_train.txt`: `fid a1 v1 [a2 v2 ...]` per line, flattened to one record per pair."""
    path = Path(path)
    rows = []
    for n, line in enumerate(_read_lines(path), 1):
        ints = _parse_ints(path, n, line)
        if len(ints) < 3 or len(ints) % 2 == 0:
            raise DataError(f"{path}:{n}: expected 'fid a1 v1 [a2 v2 ...]' (an odd number >= 3 of integers), "
                            f"got {len(ints)} fields")
        fid = ints[0]
        for a, v in zip(ints[1::2], ints[2::2]):
            _check_pair(path, n, fid, a, v, num_images, num_values)
            rows.append((fid, a, v, n))
    return _label_lines(path, rows)


def read_split_lines(path: str | Path, num_images: int, num_values: Sequence[int]) -> LabelLines:
    """`query_<split>.txt` / `candidate_<split>.txt`: exactly `fid a v` per line."""
    path = Path(path)
    rows = []
    for n, line in enumerate(_read_lines(path), 1):
        ints = _parse_ints(path, n, line)
        if len(ints) != 3:
            raise DataError(f"{path}:{n}: expected 'fid attribute value' (3 integers), got {len(ints)} fields")
        _check_pair(path, n, *ints, num_images, num_values)
        rows.append((*ints, n))
    return _label_lines(path, rows)


# ---------------------------------------------------------------------------------------------- file set
@dataclass(frozen=True)
class AsenSchema:
    """Attribute names and value counts of a dataset (DATA.ATTRIBUTES)."""

    names: tuple[str, ...]
    num_values: tuple[int, ...]

    @property
    def num_attributes(self) -> int:
        return len(self.num_values)

    def attribute_index(self, name: str) -> int:
        """Index of an attribute given by name or by number."""
        if name in self.names:
            return self.names.index(name)
        if name.isdigit() and int(name) < self.num_attributes:
            return int(name)
        raise DataError(f"unknown attribute {name!r}; attributes: {', '.join(self.names)}")


def schema_from_config(data_cfg: Any) -> AsenSchema:
    """The attribute schema of DATA (names default to the attribute index)."""
    nums = tuple(data_cfg.ATTRIBUTES.NUM)
    if not nums:
        raise DataError("DATA.ATTRIBUTES.NUM is empty: give a dataset config first "
                        "(e.g. --cfg configs/asen/FashionAI/FashionAI.yaml ...)")
    names = tuple(data_cfg.ATTRIBUTES.NAME) or tuple(str(i) for i in range(len(nums)))
    return AsenSchema(names, nums)


def dataset_root(data_cfg: Any) -> Path:
    return Path(data_cfg.BASE_PATH) / data_cfg.DATASET


def _file(root: Path, name: str, key: str) -> Path:
    if not name:
        raise DataError(f"config key {key} is empty; give a dataset config (e.g. configs/asen/DARN/DARN.yaml)")
    return root / name


@dataclass
class EvalSplit:
    """The image list, queries and candidates of the validation or test split."""

    name: str
    root: Path
    list_path: Path
    images: list[str]
    queries: LabelLines
    candidates: LabelLines


def _decode_problem(path: Path) -> str | None:
    """Why the loader (`load_rgb`, as `AsenImages.load`) cannot use the image at `path`, or None."""
    try:
        load_rgb(path)
    except FileNotFoundError:
        return f"image file not found: {path}"
    except DataError as exc:
        return str(exc)
    return None


def _check_images(root: Path, list_path: Path, images: list[str], used: np.ndarray, mode: str) -> None:
    """CHECK_IMAGES: `sample` / `all` check that the images exist (a fixed sample of 1000 / every one);
    `all` also decodes every image as the loader does, and names the unusable ones (count and first lines)."""
    if mode == "none" or used.size == 0:
        return
    fids = np.unique(used)
    if mode == "sample" and len(fids) > IMAGE_CHECK_SAMPLE:
        fids = np.sort(np.random.default_rng(0).choice(fids, IMAGE_CHECK_SAMPLE, replace=False))
    if mode != "all":
        for fid in fids.tolist():
            if not (root / images[fid]).is_file():
                raise DataError(f"{list_path}:{fid + 1}: image file not found: {root / images[fid]}")
        return
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        problems = [(fid, why) for fid, why in zip(fids.tolist(), pool.map(_decode_problem,
                                                                            (root / images[f] for f in fids)))
                    if why is not None]
    if problems:
        (fid, why), rest = problems[0], problems[1:]
        also = "" if not rest else (
            f"; {len(problems)} of the {len(fids)} images cannot be used (CHECK_IMAGES: all), also at lines "
            + ", ".join(str(f + 1) for f, _ in rest[:5]) + (", ..." if len(rest) > 5 else ""))
        raise DataError(f"{list_path}:{fid + 1}: {why}{also}")


def load_eval_split(data_cfg: Any, split: str, schema: AsenSchema) -> EvalSplit:
    """Read and validate the query/candidate files of `split` (valid or test)."""
    split = split.lower()
    if split not in ("valid", "test"):
        raise DataError(f"unknown evaluation split {split!r}; use VALID or TEST")
    root = dataset_root(data_cfg)
    key = split.upper()
    list_path = _file(root, getattr(data_cfg.PATH_FILE, key), f"DATA.PATH_FILE.{key}")
    images = read_image_list(list_path)
    q_path = _file(root, getattr(data_cfg.GROUNDTRUTH.QUERY, key), f"DATA.GROUNDTRUTH.QUERY.{key}")
    c_path = _file(root, getattr(data_cfg.GROUNDTRUTH.CANDIDATE, key), f"DATA.GROUNDTRUTH.CANDIDATE.{key}")
    queries = read_split_lines(q_path, len(images), schema.num_values)
    candidates = read_split_lines(c_path, len(images), schema.num_values)
    if len(queries) == 0:
        raise DataError(f"{q_path}: no queries")
    q_count = np.bincount(queries.attr, minlength=schema.num_attributes)
    c_count = np.bincount(candidates.attr, minlength=schema.num_attributes)
    for a in range(schema.num_attributes):
        if q_count[a] and not c_count[a]:
            raise DataError(f"{c_path}: attribute {a} ({schema.names[a]}) has {q_count[a]} queries in {q_path.name} "
                            "but no candidates")
    absent = [schema.names[a] for a in range(schema.num_attributes) if not q_count[a]]
    if absent:
        get_logger().warning("%s: no queries for attribute(s) %s; they are excluded from the total MAP",
                             q_path, ", ".join(absent))
    used = np.concatenate([queries.fid, candidates.fid])
    _check_images(root, list_path, images, used, data_cfg.CHECK_IMAGES)
    return EvalSplit(split, root, list_path, images, queries, candidates)


# ---------------------------------------------------------------------------------------------- triplets
@dataclass(frozen=True)
class TrainIndex:
    """L[k][v] for every attribute k and value v: training image indices carrying (k, v), in file order.

    Stored flat: the list of (k, v) is `fids[offsets[slot] : offsets[slot] + counts[slot]]` with
    `slot = value_offset[k] + v`.
    """

    fids: np.ndarray
    counts: np.ndarray
    offsets: np.ndarray
    value_offset: np.ndarray
    schema: AsenSchema

    @classmethod
    def build(cls, labels: LabelLines, schema: AsenSchema) -> TrainIndex:
        value_offset = np.concatenate([[0], np.cumsum(schema.num_values)[:-1]]).astype(np.int64)
        slots = value_offset[labels.attr] + labels.value
        order = np.argsort(slots, kind="stable")
        counts = np.bincount(slots, minlength=int(sum(schema.num_values)))
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        return cls(labels.fid[order], counts, offsets, value_offset, schema)

    def count(self, attr: int, value: int) -> int:
        return int(self.counts[self.value_offset[attr] + value])

    def images(self, attr: int, value: int) -> np.ndarray:
        slot = self.value_offset[attr] + value
        return self.fids[self.offsets[slot] : self.offsets[slot] + self.counts[slot]]


def check_train_index(index: TrainIndex, path: Path, restrict: bool) -> None:
    """Every value needs >= 2 images (any value can be drawn as the positive), or, with `restrict`,
    every attribute needs one value with >= 2 images and two non-empty values."""
    schema = index.schema
    if not restrict:
        short = [(a, v, index.count(a, v)) for a in range(schema.num_attributes)
                 for v in range(schema.num_values[a]) if index.count(a, v) < 2]
        if short:
            listed = "; ".join(f"attribute {a} ({schema.names[a]}) value {v}: {n} image(s)" for a, v, n in short[:10])
            more = f" (and {len(short) - 10} more)" if len(short) > 10 else ""
            raise DataError(f"{path}: every value needs >= 2 training images, because any value can be drawn as "
                            f"the positive; too few for {listed}{more}. Set DATA.RESTRICT_VALUES: true to sample "
                            "only from values with enough images")
        return
    for a in range(schema.num_attributes):
        counts = [index.count(a, v) for v in range(schema.num_values[a])]
        if not any(c >= 2 for c in counts) or sum(c >= 1 for c in counts) < 2:
            raise DataError(f"{path}: attribute {a} ({schema.names[a]}) cannot form triplets: it needs a value with "
                            f">= 2 training images and another non-empty value (counts per value: {counts})")


def load_train_index(data_cfg: Any, schema: AsenSchema) -> tuple[TrainIndex, list[str], Path, Path]:
    """Read and validate the training image list and labels; return (index, image paths, list path, root)."""
    root = dataset_root(data_cfg)
    list_path = _file(root, data_cfg.PATH_FILE.TRAIN, "DATA.PATH_FILE.TRAIN")
    label_path = _file(root, data_cfg.GROUNDTRUTH.TRAIN, "DATA.GROUNDTRUTH.TRAIN")
    images = read_image_list(list_path)
    labels = read_train_labels(label_path, len(images), schema.num_values)
    if len(labels) == 0:
        raise DataError(f"{label_path}: no training labels")
    index = TrainIndex.build(labels, schema)
    check_train_index(index, label_path, data_cfg.RESTRICT_VALUES)
    _check_images(root, list_path, images, labels.fid, data_cfg.CHECK_IMAGES)
    return index, images, list_path, root


def _eligible_table(lists: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Pad per-attribute value lists into a (K, max) table plus their lengths."""
    width = max(1, max(len(x) for x in lists))
    table = np.zeros((len(lists), width), dtype=np.int64)
    for k, values in enumerate(lists):
        table[k, : len(values)] = values
    return table, np.array([len(x) for x in lists], dtype=np.int64)


class TripletBatchSampler:
    """Per-epoch triplets (published sampling rules), drawn from (seed, epoch) so every rank and every resume
    sees the same epoch; yields batches of `(fid, attribute)` keys ordered [anchors, positives, negatives].

    One epoch is `num_triplets` triplets in ceil(num_triplets / batch_size) global batches. `global` mode
    splits each batch over the ranks (a last batch smaller than the world size is dropped); `per_rank`
    mode gives rank r the batches r, r + W, ... (wrapping round so every rank has as many).
    """

    def __init__(self, index: TrainIndex, num_triplets: int, batch_size: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, batch_mode: str = "global", restrict: bool = False) -> None:
        if batch_mode == "global" and batch_size % world_size:
            raise ConfigError(f"DATA.TRAIN_BATCHSIZE {batch_size} is not divisible by the world size {world_size} "
                              "(DIST.BATCH_MODE global)")
        self.index, self.num_triplets, self.batch_size = index, num_triplets, batch_size
        self.seed, self.rank, self.world_size, self.batch_mode = seed, rank, world_size, batch_mode
        self.epoch, self.skip = 0, 0
        schema = index.schema
        pos, neg = [], []
        for a in range(schema.num_attributes):
            counts = np.array([index.count(a, v) for v in range(schema.num_values[a])])
            pos.append(np.flatnonzero(counts >= (2 if restrict else 0)))
            neg.append(np.flatnonzero(counts >= (1 if restrict else 0)))
        self.pos_table, self.pos_count = _eligible_table(pos)
        self.neg_table, self.neg_count = _eligible_table(neg)
        # position of each value inside its attribute's negative list (to exclude v+ when drawing v-)
        self.neg_position = np.full((schema.num_attributes, max(schema.num_values)), -1, dtype=np.int64)
        for a, values in enumerate(neg):
            self.neg_position[a, values] = np.arange(len(values))
        self._batches = self._batch_slices()

    def _batch_slices(self) -> list[tuple[int, int]]:
        """(start, end) triplet positions of this rank's batches in the epoch's triplet list."""
        n, b, w = self.num_triplets, self.batch_size, self.world_size
        starts = list(range(0, n, b))
        if self.batch_mode == "per_rank":
            per_rank = -(-len(starts) // w)
            mine = [starts[i % len(starts)] for i in range(self.rank, per_rank * w, w)]
            return [(s, min(n, s + b)) for s in mine]
        out = []
        for s in starts:
            size = min(n, s + b) - s
            if size < w:
                continue
            bounds = np.linspace(0, size, w + 1).round().astype(int)
            out.append((s + int(bounds[self.rank]), s + int(bounds[self.rank + 1])))
        return out

    def epoch_triplets(self, epoch: int) -> dict[str, np.ndarray]:
        """attribute, anchor, positive and negative image index of every triplet of `epoch` (all ranks)."""
        rng = np.random.default_rng(derive_seed(self.seed, epoch, 0xA5E7))
        n, idx = self.num_triplets, self.index
        attr = rng.integers(0, idx.schema.num_attributes, n)
        v_pos = self.pos_table[attr, rng.integers(0, self.pos_count[attr])]
        j = rng.integers(0, self.neg_count[attr] - 1)
        j = j + (j >= self.neg_position[attr, v_pos])  # skip v+ in the negative list
        v_neg = self.neg_table[attr, j]
        slot_p = idx.value_offset[attr] + v_pos
        count_p = idx.counts[slot_p]
        i_a = rng.integers(0, count_p)
        i_p = rng.integers(0, count_p - 1)
        i_p = i_p + (i_p >= i_a)  # two distinct list positions
        slot_n = idx.value_offset[attr] + v_neg
        i_n = rng.integers(0, idx.counts[slot_n])
        return {
            "attr": attr,
            "anchor": idx.fids[idx.offsets[slot_p] + i_a],
            "positive": idx.fids[idx.offsets[slot_p] + i_p],
            "negative": idx.fids[idx.offsets[slot_n] + i_n],
        }

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        t = self.epoch_triplets(self.epoch)
        for start, end in self._batches[self.skip :]:
            attrs = t["attr"][start:end].tolist()
            keys = []
            for role in ("anchor", "positive", "negative"):
                keys.extend(zip(t[role][start:end].tolist(), attrs))
            yield keys

    def __len__(self) -> int:
        return len(self._batches)


# ---------------------------------------------------------------------------------------------- datasets
class AsenImages(Dataset):
    """Images of one split addressed by `(fid, attribute)` keys: the global view, the attribute and, for the
    local branch, the decoded original (uint8) to crop from."""

    def __init__(self, root: Path, paths: Sequence[str], list_path: Path, global_size: int,
                 mean: Sequence[float], std: Sequence[float], keep_original: bool) -> None:
        self.root, self.paths, self.list_path = Path(root), list(paths), Path(list_path)
        self.transform = global_transform(global_size, mean, std)
        self.keep_original = keep_original

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, fid: int) -> Image.Image:
        return load_rgb(self.root / self.paths[fid], f"{self.list_path}:{fid + 1}")

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        fid, attr = key
        image = self.load(fid)
        item = {"image": self.transform(image), "attr": attr}
        if self.keep_original:
            item["original"] = original_tensor(image)
        return item


class AsenLines(Dataset):
    """Query/candidate lines (or any `(fid, attribute)` list) as an index-addressed dataset."""

    def __init__(self, images: AsenImages, fids: Sequence[int], attrs: Sequence[int]) -> None:
        self.images, self.fids, self.attrs = images, list(fids), list(attrs)

    def __len__(self) -> int:
        return len(self.fids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.images[(self.fids[index], self.attrs[index])]


def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack global views and attributes; zero-pad originals into one uint8 tensor with their sizes."""
    batch = {
        "image": torch.stack([it["image"] for it in items]),
        "attr": torch.tensor([it["attr"] for it in items], dtype=torch.long),
    }
    if "original" in items[0]:
        batch["original"], batch["size"] = pad_originals([it["original"] for it in items])
    return batch
