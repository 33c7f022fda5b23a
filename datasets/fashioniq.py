"""FashionIQ: layout, validated triplet files, TGIR datasets, held-out split.

Layout under `root`: `captions/cap.<category>.<split>.json` (and the merged `cap.train.json` /
`cap.val.json` for `all`), `image_splits/split.<category>.<split>.json`, images in `images/` (or
`tgir_images/`, the published Fashion-FINE name) as `<name>.png` (or `.jpg`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from datasets.heldout import HeldoutSplit, fingerprint_of, load_or_create_heldout
from datasets.images import load_rgb
from datasets.text import encode_fixed_length, join_fashioniq_captions
from engine.errors import DataError
from engine.seeding import item_rng

CATEGORIES: tuple[str, ...] = ("dress", "shirt", "toptee")
IMAGE_DIR_ALIASES: tuple[str, ...] = ("images", "tgir_images")
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg")
TGIR_MAX_LENGTH = 79  # published `--max_word_num` of tgir.py
MERGE_COMMAND = "python prepare_dataset.py --fashioniq-root {root}"
SYNTHETIC_COMMAND = "python -m datasets.synthetic fashioniq --out <dir>"  # writes <dir>/fashioniq/

TrainTransform = Callable[[Image.Image, np.random.Generator], Any]
EvalTransform = Callable[[Image.Image], Any]


@dataclass(frozen=True)
class Triplet:
    """One FashionIQ entry: reference (`candidate`) image, target image, relative captions, and its origin."""

    reference: str
    target: str
    captions: tuple[str, ...]
    source: str = ""  # caption file it was read from
    entry: int = -1  # index in that file

    @property
    def text(self) -> str:
        """Query text: clean("the difference between two images are " + c1 + " and " + c2)."""
        return join_fashioniq_captions(self.captions)

    def where(self) -> str:
        return f"{self.source}: entry {self.entry}"


# ----------------------------------------------------------------------------- layout and files


def normalise_ext(ext: str) -> str:
    """'.png' / 'png' / '.JPG' -> '.png' / '.jpg'; only the two FashionIQ distributions' extensions."""
    e = ext.lower() if ext.startswith(".") else "." + ext.lower()
    if e == ".jpeg":
        e = ".jpg"
    if e not in IMAGE_EXTENSIONS:
        raise ValueError(f"fashioniq.image_ext must be one of {IMAGE_EXTENSIONS}, got {ext!r}")
    return e


def resolve_image_dir(root: Path, image_dir: str = "images") -> Path:
    """`root/image_dir`; for the two known names (`images`, `tgir_images`) either one is accepted."""
    wanted = Path(image_dir) if Path(image_dir).is_absolute() else root / image_dir
    if wanted.is_dir():
        return wanted
    if image_dir in IMAGE_DIR_ALIASES:
        for alias in IMAGE_DIR_ALIASES:
            if (root / alias).is_dir():
                return root / alias
    raise FileNotFoundError(f"FashionIQ image folder not found: {wanted} (also looked for "
                            f"{' / '.join(IMAGE_DIR_ALIASES)} under {root})")


@dataclass(frozen=True)
class FashionIQLayout:
    """Paths of one FashionIQ root folder."""

    root: Path
    image_dir: Path
    image_ext: str = ".png"

    @classmethod
    def open(cls, root: str | Path, image_dir: str = "images", image_ext: str = ".png") -> FashionIQLayout:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"FashionIQ root not found: {root} (download the FashionIQ release, or "
                                    f"create synthetic data with `{SYNTHETIC_COMMAND}`)")
        return cls(root, resolve_image_dir(root, image_dir), normalise_ext(image_ext))

    def caption_path(self, category: str, split: str) -> Path:
        """`cap.<category>.<split>.json`; category `all` = the merged `cap.<split>.json`."""
        name = f"cap.{split}.json" if category == "all" else f"cap.{_category(category)}.{split}.json"
        return self.root / "captions" / name

    def split_path(self, category: str, split: str) -> Path:
        return self.root / "image_splits" / f"split.{_category(category)}.{split}.json"

    def image_path(self, name: str) -> Path:
        return self.image_dir / f"{name}{self.image_ext}"


def _category(category: str) -> str:
    if category not in CATEGORIES:
        raise ValueError(f"FashionIQ category must be one of {CATEGORIES} (or 'all'), got {category!r}")
    return category


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON: {' '.join(str(exc).split())}") from None


def load_triplets(path: str | Path) -> list[Triplet]:
    """Read and validate a caption file: a non-empty JSON list of {candidate, target, captions} entries."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FashionIQ caption file not found: {path}")
    return [Triplet(item["candidate"], item["target"], tuple(item["captions"]), str(path), i)
            for i, item in enumerate(read_triplet_records(path))]


def read_triplet_records(path: Path) -> list[dict[str, Any]]:
    """The records of a caption file as read, checked (also by prepare_dataset.py): a non-empty JSON list of
    objects with non-empty `candidate` and `target` names and a non-empty list of string `captions`; the
    first malformed record is an error naming the file and the record's index."""
    items = _read_json(path)
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON list of triplets, got {type(items).__name__}")
    if not items:
        raise DataError(f"{path}: no triplets")
    for i, item in enumerate(items):
        problem = _triplet_problem(item)
        if problem:
            raise DataError(f"{path}: entry {i}: {problem}: {str(item)[:120]}")
    return items


def _triplet_problem(item: Any) -> str | None:
    if not isinstance(item, dict):
        return "expected an object with keys candidate, target, captions"
    for key in ("candidate", "target"):
        if not isinstance(item.get(key), str) or not item[key]:
            return f"'{key}' must be a non-empty image name"
    captions = item.get("captions")
    if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
        return "'captions' must be a non-empty list of strings"
    return None


def read_caption_file(layout: FashionIQLayout, category: str, split: str) -> list[Triplet]:
    """Triplets of `cap.<category>.<split>.json` (`all`: merged file, with the command that creates it)."""
    path = layout.caption_path(category, split)
    if not path.is_file():
        if category == "all":
            hint = f"create the merged files with `{MERGE_COMMAND.format(root=layout.root)}`"
        else:
            hint = f"download the FashionIQ release, or create synthetic data with `{SYNTHETIC_COMMAND}`"
        raise FileNotFoundError(f"FashionIQ caption file not found: {path}; {hint}")
    return load_triplets(path)


def read_image_split(layout: FashionIQLayout, category: str, split: str) -> list[str]:
    """Official gallery names `image_splits/split.<category>.<split>.json` (`all`: union of the three)."""
    cats = CATEGORIES if category == "all" else (_category(category),)
    names: set[str] = set()
    for c in cats:
        path = layout.split_path(c, split)
        if not path.is_file():
            raise FileNotFoundError(f"FashionIQ image split file not found: {path}")
        items = _read_json(path)
        if not isinstance(items, list) or not all(isinstance(n, str) and n for n in items):
            raise DataError(f"{path}: expected a JSON list of image names")
        if not items:
            raise DataError(f"{path}: empty image split")
        names.update(items)
    return sorted(names)


# ----------------------------------------------------------------------------- merged caption files

MERGE_MANIFEST = "merge_manifest.json"  # captions/<this>: what prepare_dataset.py built cap.<split>.json from
MERGE_FORMAT = "fashionfine-fashioniq-merge-1"


def merged_sources(caption_dir: Path, split: str) -> list[Path]:
    """The per-category files `cap.<split>.json` concatenates, in order (dress, shirt, toptee)."""
    return [caption_dir / f"cap.{c}.{split}.json" for c in CATEGORIES]


def file_record(path: Path) -> dict[str, Any]:
    """Size and SHA-256 of a file, as the merge manifest records them."""
    data = path.read_bytes()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def merge_record(caption_dir: Path, split: str) -> dict[str, Any]:
    """The manifest entry of a freshly written `cap.<split>.json`: the file and each of its sources."""
    return {**file_record(caption_dir / f"cap.{split}.json"),
            "sources": {p.name: file_record(p) for p in merged_sources(caption_dir, split)}}


def _merge_manifest_entry(caption_dir: Path, name: str) -> dict[str, Any] | None:
    try:
        manifest = json.loads((caption_dir / MERGE_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    entry = manifest.get("files", {}).get(name) if isinstance(manifest, dict) else None
    return entry if isinstance(entry, dict) else None


def check_merged_caption_file(layout: FashionIQLayout, split: str) -> None:
    """The merged `cap.<split>.json` (category `all`) must be the one prepare_dataset.py builds from the
    current per-category files: unchanged since, with sources of the recorded sizes and hashes (a merged file
    without a record, e.g. from an older prepare, must at least be newer than its sources)."""
    path = layout.caption_path("all", split)
    redo = f"re-run `{MERGE_COMMAND.format(root=layout.root)}`"
    if not path.is_file():
        raise FileNotFoundError(f"FashionIQ caption file not found: {path}; create the merged files with "
                                f"`{MERGE_COMMAND.format(root=layout.root)}`")
    caption_dir = path.parent
    entry = _merge_manifest_entry(caption_dir, path.name)
    if entry is None:
        newer = [p for p in merged_sources(caption_dir, split)
                 if p.is_file() and p.stat().st_mtime_ns > path.stat().st_mtime_ns]
        if newer:
            raise DataError(f"{path} is older than {newer[0]} (no {MERGE_MANIFEST} records what it was merged "
                            f"from): it may be stale; {redo}")
        return
    recorded = {k: entry.get(k) for k in ("bytes", "sha256")}
    if file_record(path) != recorded:
        raise DataError(f"{path} changed since prepare_dataset.py merged it ({caption_dir / MERGE_MANIFEST}); {redo}")
    for source in merged_sources(caption_dir, split):
        want = (entry.get("sources") or {}).get(source.name)
        have = file_record(source) if source.is_file() else None
        if have != want:
            state = "is missing" if have is None else "changed"
            raise DataError(f"{path} is stale: {source} {state} since prepare_dataset.py merged it; {redo}")


def image_ids(triplets: Sequence[Triplet]) -> dict[str, int]:
    """Dense ids over the union of reference and target names, in sorted name order."""
    return {name: i for i, name in enumerate(sorted({n for t in triplets for n in (t.reference, t.target)}))}


def check_images(layout: FashionIQLayout, triplets: Sequence[Triplet], which: str = "both") -> None:
    """Every referenced image file exists (one os.path check per distinct name); the error names the file
    and the first entry using it."""
    first_use: dict[str, Triplet] = {}
    for t in triplets:
        for name in ((t.reference, t.target) if which == "both" else (t.reference,)):
            first_use.setdefault(name, t)
    for name, t in first_use.items():
        path = layout.image_path(name)
        if not os.path.isfile(path):
            raise DataError(f"{t.where()}: image not found: {path}")


def load_image(path: Path) -> Image.Image:
    return load_rgb(path)


def _select(triplets: Sequence[Triplet], indices: Sequence[int] | None) -> list[Triplet]:
    chosen = list(triplets) if indices is None else [triplets[i] for i in indices]
    if not chosen:
        raise DataError("empty FashionIQ triplet selection")
    return chosen


# ----------------------------------------------------------------------------- datasets


class TGIRTrainDataset(Dataset):
    """Training triplets: dict with ref_image, target_image, input_ids, attention_mask, ref_id, target_id, index.

    Text: `[CLS]` + pieces (+ `[SEP]` if `add_sep`), max `max_length` (published: no `[SEP]`, 79).
    `transform(img, rng)` is applied to reference and target with two independent child generators of
    `item_rng(seed, epoch, index)`; `index` is the entry's position in the caption file, and ids are dense
    over all images of the file (`image_ids`), also when `indices` selects a subset (held-out split).
    """

    def __init__(self, triplets: Sequence[Triplet], layout: FashionIQLayout, tokenizer: Any,
                 transform: TrainTransform, *, max_length: int = TGIR_MAX_LENGTH, add_sep: bool = False,
                 seed: int = 0, indices: Sequence[int] | None = None, verify_images: bool = True) -> None:
        self.layout, self.tokenizer, self.transform = layout, tokenizer, transform
        self.max_length, self.add_sep, self.seed, self.epoch = max_length, add_sep, seed, 0
        self.image_ids = image_ids(triplets)
        self.positions = list(range(len(triplets))) if indices is None else [int(i) for i in indices]
        self.triplets = _select(triplets, self.positions)
        if verify_images:
            check_images(layout, self.triplets)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, i: int) -> dict[str, Any]:
        t, index = self.triplets[i], self.positions[i]
        ref_rng, tgt_rng = item_rng(self.seed, self.epoch, index).spawn(2)
        ids, mask = encode_fixed_length(self.tokenizer, [t.text], self.max_length, add_sep=self.add_sep)
        return {
            "ref_image": self.transform(load_image(self.layout.image_path(t.reference)), ref_rng),
            "target_image": self.transform(load_image(self.layout.image_path(t.target)), tgt_rng),
            "input_ids": ids[0],
            "attention_mask": mask[0],
            "ref_id": self.image_ids[t.reference],
            "target_id": self.image_ids[t.target],
            "index": index,
        }


class TGIRQueryDataset(Dataset):
    """Evaluation queries in file order: dict with ref_image, input_ids, attention_mask, index, ref_name,
    target_name (`transform(img)` is the deterministic test transform)."""

    def __init__(self, triplets: Sequence[Triplet], layout: FashionIQLayout, tokenizer: Any,
                 transform: EvalTransform, *, max_length: int = TGIR_MAX_LENGTH, add_sep: bool = False,
                 indices: Sequence[int] | None = None, verify_images: bool = True) -> None:
        self.layout, self.tokenizer, self.transform = layout, tokenizer, transform
        self.max_length, self.add_sep = max_length, add_sep
        self.positions = list(range(len(triplets))) if indices is None else [int(i) for i in indices]
        self.triplets = _select(triplets, self.positions)
        if verify_images:
            check_images(layout, self.triplets, which="reference")

    @property
    def reference_names(self) -> list[str]:
        return [t.reference for t in self.triplets]

    @property
    def target_names(self) -> list[str]:
        return [t.target for t in self.triplets]

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, i: int) -> dict[str, Any]:
        t = self.triplets[i]
        ids, mask = encode_fixed_length(self.tokenizer, [t.text], self.max_length, add_sep=self.add_sep)
        return {
            "ref_image": self.transform(load_image(self.layout.image_path(t.reference))),
            "input_ids": ids[0],
            "attention_mask": mask[0],
            "index": self.positions[i],
            "ref_name": t.reference,
            "target_name": t.target,
        }


class GalleryImageDataset(Dataset):
    """Gallery images by name (e.g. the sorted gallery of evaluation.tgir.build_gallery): image, name, index."""

    def __init__(self, names: Sequence[str], layout: FashionIQLayout, transform: EvalTransform, *,
                 verify_images: bool = True, source: str = "gallery") -> None:
        if not names:
            raise DataError(f"{source}: empty gallery")
        self.names, self.layout, self.transform = list(names), layout, transform
        if verify_images:
            for name in self.names:
                path = layout.image_path(name)
                if not os.path.isfile(path):
                    raise DataError(f"{source}: image not found: {path}")

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict[str, Any]:
        name = self.names[i]
        return {"image": self.transform(load_image(self.layout.image_path(name))), "name": name, "index": i}


# ----------------------------------------------------------------------------- held-out split


HELDOUT_FILENAME = "fashioniq_heldout.json"  # datasets.heldout file under <output_dir>/eval_sets/
HELDOUT_KIND = "fashioniq-train-references"


def _triplets_fingerprint(triplets: Sequence[Triplet]) -> str:
    """Fingerprint of the (reference, target, captions) of every triplet, in order."""
    return fingerprint_of([[t.reference, t.target, list(t.captions)] for t in triplets])


def load_or_create_heldout_triplets(path: str | Path, triplets: Sequence[Triplet], fraction: float = 0.1,
                                    seed: int = 0) -> HeldoutSplit:
    """Triplet indices split by reference image (none on both sides): round(fraction x distinct references)
    references (at least one) held out with all their triplets, saved at `path` by `datasets.heldout` (the
    `shuffle` draw over the sorted reference names, as before the shared module)."""
    refs = sorted({t.reference for t in triplets})
    split = load_or_create_heldout(path, len(refs), kind=HELDOUT_KIND, fingerprint=_triplets_fingerprint(triplets),
                                   fraction=fraction, seed=seed, draw="shuffle", labels=refs)
    ref_index = {name: i for i, name in enumerate(refs)}
    return split.items_of([ref_index[t.reference] for t in triplets])
