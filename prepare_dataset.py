"""Turn the raw FashionGen HDF5 files into the files training and evaluation read.

Outputs under DATA_ROOT (the folder holding fashiongen_256_256_{train,validation}.h5):

  <split>/productid_list.json            [[product_id, [row, ...]], ...] (contiguous runs, row order)
  <split>/info_data.json                 one object per row: every key but input_image, decoded
  categorys_to_sign.txt                  the 48-line category<TAB>sign table (spelling as published)
  annotation/fashiongen_{test,val}{,_symbol}.json   per product, from the validation split
  annotation/fashiongen_train{,_symbol}.json        per row, from the train split
  images/<productID>_<k>.png             only with --extract-images
  manifest.json                          N, P, SHA-256 of the inputs, framework version, options

With --fashioniq-root, also writes the merged FashionIQ caption files captions/cap.train.json
and captions/cap.val.json (dress, shirt, toptee order) and captions/merge_manifest.json (size and
SHA-256 of each merged file and of its sources; tgir.py refuses a merged file that no longer
matches them). Never downloads anything. Re-running
gives identical outputs; every JSON/text output is replaced atomically. Missing or malformed
input is reported as one `error: ...` line (naming the file and the key or record) with exit
status 2.

Examples:
  python prepare_dataset.py --data-root data/fashiongen
  python prepare_dataset.py --data-root data/fashiongen --split validation --extract-images
  python prepare_dataset.py --fashioniq-root data/fashioniq
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import textwrap
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image
from tqdm import tqdm

from datasets.fashiongen_h5 import (
    CATEGORY_KEY,
    DESCRIPTION_KEY,
    IMAGE_KEY,
    INFO_DATA_FILENAME,
    PRODUCT_ID_KEY,
    PRODUCT_LIST_FILENAME,
    SPLITS,
    FashionGenFormatError,
    ProductGrouper,
    ProductGroups,
    h5_path,
    image_filename,
    iter_row_chunks,
    load_product_groups,
    open_h5,
    read_rows,
)
from datasets.fashiongen_meta import CATEGORY_SIGN_FILENAME, category_to_sign, sign_for_category
from datasets.fashioniq import CATEGORIES as FASHIONIQ_CATEGORIES
from datasets.fashioniq import (
    MERGE_FORMAT,
    MERGE_MANIFEST,
    merge_record,
    merged_sources,
    read_triplet_records,
)
from engine.atomic import atomic_write, write_json, write_text
from engine.errors import DataError

REPO_ROOT = Path(__file__).resolve().parent
ANNOTATION_DIR = "annotation"
IMAGE_DIR = "images"
MANIFEST_FILENAME = "manifest.json"
FASHIONIQ_PARTS: tuple[str, ...] = ("train", "val")
FASHIONIQ_CREATE_COMMAND = "python -m datasets.synthetic fashioniq --out {root}"


class PrepareError(DataError):
    """An expected problem with the inputs (reported as one line, exit status 2)."""


# ----------------------------------------------------------------------------- small file helpers


class JsonListWriter:
    """Write a JSON list element by element; the file appears (atomically) only on a clean exit.

    With `indent`, the text equals `json.dumps(items, indent=indent, ensure_ascii=False)`; without,
    one compact element per line. Both end with a newline; non-ASCII characters are kept.
    """

    def __init__(self, path: Path, indent: int | None = None) -> None:
        self.path = Path(path)
        self.indent = indent
        self.count = 0
        self._fh: Any = None
        self._session: Any = None

    def __enter__(self) -> JsonListWriter:
        self._session = self._open()
        return self._session.__enter__()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool | None:
        return self._session.__exit__(exc_type, exc, tb)

    @contextmanager
    def _open(self) -> Iterator[JsonListWriter]:
        with atomic_write(self.path) as self._fh:
            self._fh.write("[")
            yield self
            self._fh.write("\n]\n" if self.count else "]\n")

    def write(self, item: Any) -> None:
        text = json.dumps(item, ensure_ascii=False, indent=self.indent, allow_nan=False)
        if self.indent is not None:
            text = textwrap.indent(text, " " * self.indent)
        self._fh.write(("\n" if self.count == 0 else ",\n") + text)
        self.count += 1


def write_json_list(path: Path, items: Iterable[Any], indent: int | None = None) -> int:
    """Write a whole JSON list with `JsonListWriter`; return the number of elements."""
    with JsonListWriter(path, indent) as writer:
        for item in items:
            writer.write(item)
    return writer.count


def sha256_file(path: Path, quiet: bool = True) -> str:
    """SHA-256 hex digest of a file, read in blocks (with a progress bar unless quiet)."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    with (
        open(path, "rb") as fh,
        tqdm(total=size, unit="B", unit_scale=True, desc=f"sha256 {path.name}", disable=quiet) as bar,
    ):
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def framework_version() -> str:
    """The framework version (pyproject.toml next to this script)."""
    try:
        text = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return "unknown"
    match = re.search(r'(?m)^version\s*=\s*"([^"]+)"', text)
    return match.group(1) if match else "unknown"


# ----------------------------------------------------------------------------- signs and annotations


def write_category_sign_file(data_root: Path) -> Path:
    """Write `categorys_to_sign.txt` (category<TAB>sign, packaged table order) under data_root."""
    path = data_root / CATEGORY_SIGN_FILENAME
    write_text(path, "".join(f"{category}\t{sign}\n" for category, sign in category_to_sign().items()))
    return path


def sign_name(sign: str) -> str:
    """Sign token without brackets, as used in the `_symbol` captions: `[coats_sign]` -> `coats_sign`."""
    return sign.strip("[]")


def symbol_caption(sign: str, caption: str) -> str:
    """Caption prefixed with the bracket-less sign name and a space (`coats_sign ...`)."""
    return f"{sign_name(sign)} {caption}"


def row_sign(category: Any, row: int, product_id: int, source: str) -> str:
    """Sign of a row's category; an unknown category is an error naming the row and the value."""
    try:
        return sign_for_category(str(category))
    except (KeyError, DataError):
        raise FashionGenFormatError(
            f"{source}: row {row} (product {product_id}): {CATEGORY_KEY} value {category!r} has no sign "
            f"in the category->sign table ({CATEGORY_SIGN_FILENAME}, 48 FashionGen categories)"
        ) from None


class TrainAnnotationSink:
    """Per-row BLIP training annotations: `fashiongen_train.json` and `fashiongen_train_symbol.json`."""

    def __init__(self, annotation_dir: Path, stack: ExitStack) -> None:
        self.plain = stack.enter_context(JsonListWriter(annotation_dir / "fashiongen_train.json"))
        self.symbol = stack.enter_context(JsonListWriter(annotation_dir / "fashiongen_train_symbol.json"))

    def add_row(self, product_id: int, k: int, caption: str, sign: str) -> None:
        image = image_filename(product_id, k)
        self.plain.write({"image": image, "caption": caption, "image_id": product_id})
        self.symbol.write({"image": image, "caption": symbol_caption(sign, caption), "image_id": product_id})

    def finish(self) -> None:
        """Nothing is pending in the per-row format."""

    def outputs(self) -> list[Path]:
        return [self.plain.path, self.symbol.path]


class EvalAnnotationSink:
    """Per-product evaluation annotations `fashiongen_test{,_symbol}.json` (caption of the first row)."""

    def __init__(self, annotation_dir: Path, stack: ExitStack) -> None:
        self.plain = stack.enter_context(JsonListWriter(annotation_dir / "fashiongen_test.json"))
        self.symbol = stack.enter_context(JsonListWriter(annotation_dir / "fashiongen_test_symbol.json"))
        self._pending: tuple[str, str, list[str]] | None = None

    def add_row(self, product_id: int, k: int, caption: str, sign: str) -> None:
        if k == 0:
            self.finish()
            self._pending = (caption, sign, [])
        assert self._pending is not None
        self._pending[2].append(image_filename(product_id, k))

    def finish(self) -> None:
        """Write the product collected so far."""
        if self._pending is not None:
            caption, sign, images = self._pending
            self.plain.write({"caption": caption, "image": images})
            self.symbol.write({"caption": symbol_caption(sign, caption), "image": images})
            self._pending = None

    def outputs(self) -> list[Path]:
        return [self.plain.path, self.symbol.path]


def copy_eval_annotations_to_val(annotation_dir: Path) -> list[Path]:
    """`fashiongen_val{,_symbol}.json` are byte-identical copies of the test files (as
    in the published annotation folder)."""
    written = []
    for suffix in ("", "_symbol"):
        target = annotation_dir / f"fashiongen_val{suffix}.json"
        with open(annotation_dir / f"fashiongen_test{suffix}.json", "rb") as src, atomic_write(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
        written.append(target)
    return written


# ----------------------------------------------------------------------------- one split


@dataclass
class SplitResult:
    """What one split's metadata pass produced."""

    split: str
    input_path: Path
    rows: int
    groups: ProductGroups
    outputs: list[Path]


def info_keys(h5file: h5py.File) -> list[str]:
    """Keys copied into info_data.json: every key except the images, in sorted order."""
    return [key for key in sorted(h5file.keys()) if key != IMAGE_KEY]


def prepare_split(
    h5file: h5py.File, split: str, data_root: Path, chunk_rows: int, quiet: bool
) -> SplitResult:
    """Stream one split once: info_data.json, productid_list.json and the annotation JSONs."""
    source = str(h5file.filename)
    num_rows = h5file[PRODUCT_ID_KEY].shape[0]
    keys = info_keys(h5file)
    annotation_dir = data_root / ANNOTATION_DIR
    grouper = ProductGrouper(source)
    with ExitStack() as stack:
        info = stack.enter_context(JsonListWriter(data_root / split / INFO_DATA_FILENAME, indent=2))
        sink_class = TrainAnnotationSink if split == "train" else EvalAnnotationSink
        sink = sink_class(annotation_dir, stack)
        bar = stack.enter_context(tqdm(total=num_rows, unit="row", desc=f"{split} metadata", disable=quiet))
        for start, columns in iter_row_chunks(h5file, keys, chunk_rows):
            for offset in range(len(columns[PRODUCT_ID_KEY])):
                row = start + offset
                record = {key: columns[key][offset] for key in keys}
                info.write(record)
                product_id = record[PRODUCT_ID_KEY]
                k = grouper.add(product_id, row)
                sign = row_sign(record[CATEGORY_KEY], row, product_id, source)
                sink.add_row(product_id, k, str(record[DESCRIPTION_KEY]), sign)
            bar.update(len(columns[PRODUCT_ID_KEY]))
        groups = grouper.finish()
        sink.finish()
    outputs = [info.path, *sink.outputs()]
    product_list = data_root / split / PRODUCT_LIST_FILENAME
    write_text(product_list, json.dumps(groups) + "\n")
    outputs.insert(0, product_list)
    if split == "validation":
        outputs += copy_eval_annotations_to_val(annotation_dir)
    return SplitResult(split, Path(source), num_rows, groups, outputs)


# ----------------------------------------------------------------------------- images


def row_image_names(groups: ProductGroups) -> list[str]:
    """Image file name of every row, indexed by row (groups are contiguous and in row order)."""
    return [image_filename(product_id, k) for product_id, rows in groups for k in range(len(rows))]


def save_png(pixels: np.ndarray, path: Path) -> None:
    """Save an (H, W, 3) uint8 array as an RGB PNG, pixels unchanged, atomically."""
    with atomic_write(path, "wb") as f:
        Image.fromarray(np.ascontiguousarray(pixels)).save(f, format="PNG")


def extract_images(
    h5file: h5py.File,
    groups: ProductGroups,
    image_dir: Path,
    chunk_rows: int,
    overwrite: bool = False,
    workers: int = 1,
    quiet: bool = True,
    desc: str = "",
) -> int:
    """Write `images/<pid>_<k>.png` for every row, reading `input_image` chunk by chunk.

    Existing images are kept unless `overwrite`; return the number of files written.
    """
    names = row_image_names(groups)
    image_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(total=len(names), unit="img", desc=f"{desc} images", disable=quiet) as bar,
    ):
        for start in range(0, len(names), chunk_rows):
            stop = min(len(names), start + chunk_rows)
            todo = [row for row in range(start, stop) if overwrite or not (image_dir / names[row]).exists()]
            if todo:
                pixels = read_rows(h5file, IMAGE_KEY, start, stop)
                arrays = (pixels[row - start] for row in todo)
                list(pool.map(save_png, arrays, [image_dir / names[row] for row in todo]))
                written += len(todo)
            bar.update(stop - start)
    return written


def check_product_id_collisions(groups_by_split: dict[str, ProductGroups], data_root: Path) -> None:
    """Images of both splits share one folder, so a product id may occur in one split only."""
    ids = {split: {pid for pid, _ in groups} for split, groups in groups_by_split.items()}
    for split in SPLITS:
        other = data_root / split / PRODUCT_LIST_FILENAME
        if split not in ids and other.is_file():
            ids[split] = {pid for pid, _ in load_product_groups(other)}
    if len(ids) == 2:
        common = sorted(ids["train"] & ids["validation"])
        if common:
            raise PrepareError(
                f"{len(common)} product id(s) occur in both the train and the validation split "
                f"(e.g. {', '.join(map(str, common[:5]))}); their extracted images would share names in "
                f"{data_root / IMAGE_DIR}"
            )


# ----------------------------------------------------------------------------- FashionIQ


def load_fashioniq_triplets(path: Path) -> list[dict[str, Any]]:
    """Read one FashionIQ caption file, every record checked by `datasets.fashioniq.read_triplet_records`."""
    if not path.is_file():
        raise FileNotFoundError(
            f"FashionIQ caption file not found: {path} (create synthetic data with "
            f"`{FASHIONIQ_CREATE_COMMAND.format(root=path.parent.parent)}`, or download the FashionIQ release)"
        )
    return read_triplet_records(path)


def merge_fashioniq_captions(root: Path) -> dict[str, Any]:
    """Write `captions/cap.{train,val}.json`: the per-category files concatenated (dress, shirt, toptee)."""
    caption_dir = root / "captions"
    parts = {
        part: [load_fashioniq_triplets(path) for path in merged_sources(caption_dir, part)]
        for part in FASHIONIQ_PARTS
    }
    summary: dict[str, Any] = {}
    for part, per_category in parts.items():
        merged = [item for items in per_category for item in items]
        write_json_list(caption_dir / f"cap.{part}.json", merged)
        summary[f"cap.{part}.json"] = {
            "triplets": len(merged),
            "per_category": {c: len(items) for c, items in zip(FASHIONIQ_CATEGORIES, per_category)},
        }
    # What each merged file was built from; tgir.py refuses a merged file that no longer matches (written last,
    # so an interrupted prepare leaves a record that does not match either).
    write_json(caption_dir / MERGE_MANIFEST, {
        "format": MERGE_FORMAT,
        "files": {f"cap.{part}.json": merge_record(caption_dir, part) for part in FASHIONIQ_PARTS},
    }, indent=2)
    return summary


# ----------------------------------------------------------------------------- manifest and driver


@dataclass(frozen=True)
class Options:
    """Parsed command-line options."""

    data_root: Path | None
    splits: tuple[str, ...]
    extract_images: bool
    fashioniq_root: Path | None
    chunk_rows: int
    overwrite: bool
    workers: int
    quiet: bool


def read_manifest(path: Path) -> dict[str, Any]:
    """The previous manifest (kept for splits not processed now); empty if absent or unreadable."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def write_manifest(
    data_root: Path,
    options: Options,
    results: list[SplitResult],
    hashes: dict[str, str],
    fashioniq: dict[str, Any] | None,
) -> Path:
    """Write `manifest.json`, merging in the entries of splits not processed in this run."""
    path = data_root / MANIFEST_FILENAME
    previous = read_manifest(path)
    kept = previous.get("splits")
    splits = {k: v for k, v in kept.items() if k in SPLITS} if isinstance(kept, dict) else {}
    for result in results:
        splits[result.split] = {
            "input": result.input_path.name,
            "sha256": hashes[result.split],
            "bytes": result.input_path.stat().st_size,
            "rows": result.rows,
            "products": len(result.groups),
            "images_extracted": options.extract_images,
            "outputs": [p.relative_to(data_root).as_posix() for p in result.outputs],
        }
    manifest = {
        "framework": "FashionFINE",
        "framework_version": framework_version(),
        "spec": "prepare_dataset.py outputs (see its module docstring)",
        "options": {
            "split": "all" if len(options.splits) == len(SPLITS) else options.splits[0],
            "extract_images": options.extract_images,
            "fashioniq_root": str(options.fashioniq_root.resolve()) if options.fashioniq_root else None,
        },
        "category_sign_file": CATEGORY_SIGN_FILENAME,
        "splits": {split: splits[split] for split in SPLITS if split in splits},
    }
    fashioniq = fashioniq if fashioniq is not None else previous.get("fashioniq")
    if fashioniq is not None:
        manifest["fashioniq"] = fashioniq
    write_json(path, manifest, indent=2, ensure_ascii=False)
    return path


def say(options: Options, message: str) -> None:
    if not options.quiet:
        print(message, flush=True)


def prepare_fashiongen(options: Options, inputs: dict[str, Path], fashioniq: dict[str, Any] | None) -> None:
    """All FashionGen outputs for the requested splits, then the manifest."""
    data_root = options.data_root
    assert data_root is not None
    write_category_sign_file(data_root)
    results, hashes = [], {}
    for split, path in inputs.items():
        with open_h5(path) as h5file:
            result = prepare_split(h5file, split, data_root, options.chunk_rows, options.quiet)
        hashes[split] = sha256_file(path, options.quiet)
        results.append(result)
        say(options, f"{split}: {result.rows} rows, {len(result.groups)} products ({path.name})")
    if options.extract_images:
        check_product_id_collisions({r.split: r.groups for r in results}, data_root)
        for result in results:
            with open_h5(result.input_path) as h5file:
                written = extract_images(
                    h5file,
                    result.groups,
                    data_root / IMAGE_DIR,
                    options.chunk_rows,
                    options.overwrite,
                    options.workers,
                    options.quiet,
                    desc=result.split,
                )
            result.outputs.append(data_root / IMAGE_DIR)
            say(options, f"{result.split}: {written} images written, {result.rows - written} already present")
    manifest = write_manifest(data_root, options, results, hashes, fashioniq)
    say(options, f"wrote {manifest}")


def run(options: Options) -> None:
    """Carry out everything the options ask for."""
    inputs = {}
    if options.data_root is not None:  # every input is checked for existence before any work
        inputs = {split: h5_path(options.data_root, split) for split in options.splits}
    fashioniq = None
    if options.fashioniq_root is not None:
        fashioniq = merge_fashioniq_captions(options.fashioniq_root)
        counts = ", ".join(f"{name} ({entry['triplets']} triplets)" for name, entry in fashioniq.items())
        say(options, f"fashioniq: wrote {counts}")
    if options.data_root is not None:
        prepare_fashiongen(options, inputs, fashioniq)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prepare_dataset.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        metavar="DIR",
        help="folder holding fashiongen_256_256_{train,validation}.h5; all FashionGen outputs go here",
    )
    parser.add_argument(
        "--split",
        choices=("train", "validation", "all"),
        default="all",
        help="which split(s) to prepare (default: all)",
    )
    parser.add_argument(
        "--extract-images",
        action="store_true",
        help="also write images/<productID>_<k>.png (RGB, pixels unchanged) for the BLIP-style pipeline; "
        "checks that product ids do not collide between splits",
    )
    parser.add_argument(
        "--fashioniq-root",
        type=Path,
        metavar="DIR",
        help="FashionIQ folder: write captions/cap.train.json and captions/cap.val.json from the "
        "per-category files (dress, shirt, toptee)",
    )
    parser.add_argument(
        "--chunk-rows",
        type=_positive_int,
        default=1024,
        metavar="N",
        help="rows read from HDF5 per chunk while streaming (default: 1024); does not change the outputs",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="rewrite image files that already exist (JSON/text outputs are always regenerated)",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=min(4, os.cpu_count() or 1),
        metavar="N",
        help="threads encoding PNG files with --extract-images (default: min(4, CPUs))",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or summary lines")
    return parser


def parse_options(argv: list[str] | None = None) -> Options:
    """Parse and check the command line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data_root is None and args.fashioniq_root is None:
        parser.error("nothing to do: give --data-root and/or --fashioniq-root")
    return Options(
        data_root=args.data_root,
        splits=SPLITS if args.split == "all" else (args.split,),
        extract_images=args.extract_images,
        fashioniq_root=args.fashioniq_root,
        chunk_rows=args.chunk_rows,
        overwrite=args.overwrite,
        workers=args.workers,
        quiet=args.quiet,
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; expected errors are one `error: ...` line on stderr and status 2."""
    options = parse_options(argv)
    try:
        run(options)
    except (DataError, OSError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
