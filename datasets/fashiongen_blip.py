"""FashionGen for the BLIP variant: annotation JSONs + extracted image files (`prepare_dataset.py
--extract-images`); sign handling: docs/compat.md, compat.blip_sign_token.

* `load_blip_tokenizer` / `add_blip_tokens` — a local bert-base-uncased vocabulary plus `[DEC]` (bos) and
  `[ENC]` (vocab 30524 for the stock file) and, in fixed sign mode, the nine `[xxx_sign]` special tokens.
* `BlipCaptions` — BLIP cleaner, sign handling and `[CLS] (sign) pieces [SEP]` ids for one caption.
* `BlipTrainAnnotation` / `FashionGenBlipTrainDataset` — per-image training records (`image`, `caption`,
  `image_id`; dense id per distinct `image_id` in first-appearance order), one item per record.
* `BlipEvalSet` — evaluation images (every listed file) and texts (one per product) of the test annotation
  or of held-out training products, with the product structure the CMR evaluation needs.

Everything read from disk is checked; a bad file or record raises `DataError` naming it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from transformers import BertTokenizer

from datasets.fashiongen_meta import SIGN_TOKENS
from datasets.images import load_rgb
from datasets.text import BUILD_VOCAB_HINT, VOCAB_FILENAME, encode_fixed_length, pre_caption_blip, read_vocab
from datasets.transforms import TestTransform, TrainTransform
from engine.errors import DataError
from engine.seeding import item_rng

DEC_TOKEN, ENC_TOKEN = "[DEC]", "[ENC]"
SIGN_NAMES: dict[str, str] = {tok[1:-1]: tok for tok in SIGN_TOKENS}  # "coats_sign" -> "[coats_sign]"
PREPARE_HINT = "create it with `python prepare_dataset.py --data-root {root} --extract-images`"
_IMAGE_NAME = re.compile(r"^(\d+)_(\d+)\.[A-Za-z]+$")


# ----------------------------------------------------------------------------- tokenizer


def add_blip_tokens(tokenizer: BertTokenizer, sign_tokens: bool = False) -> BertTokenizer:
    """Register BLIP's `[DEC]` (bos) and `[ENC]` and, with `sign_tokens`, the nine `[xxx_sign]`
    (fixed sign mode) as special tokens; tokens missing from the vocabulary get new ids at its end, in that order. Sets
    `tokenizer.enc_token_id`. With the stock 30522-entry vocabulary: 30524 entries (30533 with the signs,
    which a Fashion-FINE vocabulary already holds at ids 1..9)."""
    tokenizer.add_special_tokens({"bos_token": DEC_TOKEN})
    tokenizer.add_special_tokens({"additional_special_tokens": [ENC_TOKEN, *(SIGN_TOKENS if sign_tokens else ())]})
    tokenizer.enc_token_id = tokenizer.convert_tokens_to_ids(ENC_TOKEN)
    return tokenizer


def load_blip_tokenizer(folder: str | Path, sign_tokens: bool = False) -> BertTokenizer:
    """Lower-casing WordPiece tokenizer from a local folder's `vocab.txt` (stock bert-base-uncased, or the
    Fashion-FINE vocabulary, whose ids 1..9 hold the sign tokens) plus the BLIP tokens; never downloads."""
    path = Path(folder) / VOCAB_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer vocabulary not found: {path}; copy bert-base-uncased's vocab.txt "
                                f"there, or {BUILD_VOCAB_HINT}")
    return blip_tokenizer_from_vocab(read_vocab(path), str(path), sign_tokens)


def blip_tokenizer_from_vocab(vocab: dict[str, int], source: str, sign_tokens: bool = False) -> BertTokenizer:
    """`load_blip_tokenizer` over a vocabulary table (`source` names it in errors)."""
    missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t not in vocab]
    if missing:
        raise DataError(f"{source}: special tokens missing: {', '.join(missing)}")
    if vocab["[PAD]"] != 0:
        raise DataError(f"{source}: [PAD] must have id 0 (found {vocab['[PAD]']})")
    return add_blip_tokens(BertTokenizer(vocab=vocab, do_lower_case=True), sign_tokens)


# ----------------------------------------------------------------------------- captions


def split_sign(caption: str) -> tuple[str | None, str]:
    """(`[xxx_sign]`, rest) when the caption starts with a sign name and a space (`coats_sign Wool ...`),
    else (None, caption)."""
    head, _, rest = caption.lstrip().partition(" ")
    token = SIGN_NAMES.get(head.lower())
    return (token, rest) if token is not None else (None, caption)


class BlipCaptions:
    """Caption -> `[CLS] (sign) pieces [SEP]` ids padded to `max_length`, BLIP-cleaned.

    `sign_tokens` (fixed sign mode, docs/compat.md): a leading sign name becomes the `[xxx_sign]` token at
    position 1, or is dropped with `keep_sign=False`; otherwise (compat) the caption is tokenised as it is, so
    the published `coats_sign` is split into `coats`, `_`, `sign` and stays in evaluation queries too.
    """

    def __init__(self, tokenizer: BertTokenizer, *, max_words: int = 180, max_length: int = 180,
                 sign_tokens: bool = False) -> None:
        self.tokenizer, self.max_words, self.max_length = tokenizer, max_words, max_length
        self.sign_tokens = sign_tokens

    def keeps_sign(self, keep_sign: bool) -> bool:
        """Whether texts that start with a sign still carry it at position 1 after encoding."""
        return keep_sign or not self.sign_tokens

    def encode(self, caption: str, keep_sign: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """`(input_ids, attention_mask)`, long `(max_length,)` each."""
        prefix: list[list[str]] | None = None
        if self.sign_tokens:
            sign, caption = split_sign(caption)
            if sign is not None and keep_sign:
                prefix = [[sign]]
        text = pre_caption_blip(caption, self.max_words)
        ids, mask = encode_fixed_length(self.tokenizer, [text], self.max_length, add_sep=True, prefix_tokens=prefix)
        return ids[0], mask[0]


# ----------------------------------------------------------------------------- files


def read_annotation(path: str | Path, root: str | Path | None = None) -> list[dict[str, Any]]:
    """A JSON list of objects; a missing file names the command that writes it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}; "
                                + PREPARE_HINT.format(root=root or path.parent.parent))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not a JSON file ({exc})") from None
    if not isinstance(data, list) or not data:
        raise DataError(f"{path}: expected a non-empty JSON list of records")
    bad = next((i for i, rec in enumerate(data) if not isinstance(rec, dict)), None)
    if bad is not None:
        raise DataError(f"{path}: record {bad} is not an object")
    return data


def _field(path: Path, i: int, record: dict, key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in record:
        raise DataError(f"{path}: record {i} has no {key!r} key (keys: {sorted(record)})")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{path}: record {i}: {key!r} has type {type(value).__name__}, "
                        f"expected {getattr(kind, '__name__', kind)}")
    return value


def load_image(path: Path, source: str) -> Image.Image:
    """An RGB PIL image; a missing or unreadable file is named with the annotation record that lists it."""
    return load_rgb(path, source, PREPARE_HINT.format(root=path.parent.parent))


def image_subcategories(info_data: str | Path) -> dict[str, str]:
    """Extracted image name (`<productID>_<k>.png`) -> subcategory, from a split's `info_data.json`
    (rows in order, k = position of the row within its product's run)."""
    path = Path(info_data)
    rows = read_annotation(path)
    out: dict[str, str] = {}
    last, k = None, 0
    for i, row in enumerate(rows):
        pid = _field(path, i, row, "input_productID", (int, float, str))
        sub = _field(path, i, row, "input_subcategory", str)
        k = k + 1 if pid == last else 0
        last = pid
        out[f"{int(pid)}_{k}.png"] = sub
    return out


# ----------------------------------------------------------------------------- training


@dataclass
class BlipTrainAnnotation:
    """Per-image training records; `labels[r]` = dense id of record r's `image_id` (first-appearance order)."""

    path: Path
    images: list[str]
    captions: list[str]
    labels: np.ndarray
    image_ids: list[Hashable]

    @classmethod
    def load(cls, path: str | Path, root: str | Path | None = None) -> BlipTrainAnnotation:
        path = Path(path)
        records = read_annotation(path, root)
        images, captions, labels, ids = [], [], [], {}
        for i, rec in enumerate(records):
            images.append(_field(path, i, rec, "image", str))
            captions.append(_field(path, i, rec, "caption", str))
            image_id = _field(path, i, rec, "image_id", (int, str, float))
            labels.append(ids.setdefault(image_id, len(ids)))
        return cls(path, images, captions, np.asarray(labels, dtype=np.int64), list(ids))

    @property
    def num_products(self) -> int:
        return len(self.image_ids)

    def product_records(self) -> list[list[int]]:
        """Records of each dense id, in file order."""
        groups: list[list[int]] = [[] for _ in range(self.num_products)]
        for r, label in enumerate(self.labels.tolist()):
            groups[label].append(r)
        return groups

    def records_of(self, products: Sequence[int] | None) -> np.ndarray:
        """Record indices whose dense id is in `products` (None = all), file order."""
        if products is None:
            return np.arange(len(self.images), dtype=np.int64)
        return np.flatnonzero(np.isin(self.labels, np.asarray(list(products), dtype=np.int64)))

    def require_signs(self) -> None:
        """Stage 1 reads the sign at position 1: every caption must start with a sign name."""
        bad = next((i for i, c in enumerate(self.captions) if split_sign(c)[0] is None), None)
        if bad is not None:
            raise DataError(f"{self.path}: record {bad} has no sign prefix (e.g. 'coats_sign ...'); stage 1 "
                            "trains on the sign-prefixed captions (fashiongen_train_symbol.json)")


class FashionGenBlipTrainDataset(Dataset):
    """One item per training record (image) of the chosen records (default: all).

    Item: `image` float32 (3, R, R) (random resized crop, flip, RandAugment magnitude 5); `input_ids`,
    `attention_mask` long (max_length,); `product_idx` long (dense id of the record's `image_id`).
    Augmentation draws come from `item_rng(seed, epoch, record)`.
    """

    def __init__(self, annotation: BlipTrainAnnotation, image_root: str | Path, captions: BlipCaptions, *,
                 image_res: int = 384, randaugment_magnitude: float = 5, records: Sequence[int] | None = None,
                 seed: int = 0, keep_sign: bool = True) -> None:
        self.annotation, self.image_root, self.captions = annotation, Path(image_root), captions
        self.records = np.arange(len(annotation.images)) if records is None else np.asarray(records)
        if self.records.size == 0:
            raise DataError(f"{annotation.path}: no training records selected")
        self.transform = TrainTransform(image_res, randaugment_magnitude)
        self.seed, self.epoch, self.keep_sign = seed, 0, keep_sign

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return int(self.records.size)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        r = int(self.records[i])
        ann = self.annotation
        image = load_image(self.image_root / ann.images[r], f"{ann.path}, record {r}")
        ids, mask = self.captions.encode(ann.captions[r], self.keep_sign)
        return {
            "image": self.transform(image, item_rng(self.seed, self.epoch, r)),
            "input_ids": ids,
            "attention_mask": mask,
            "product_idx": torch.tensor(int(ann.labels[r]), dtype=torch.long),
        }


# ----------------------------------------------------------------------------- evaluation


class BlipEvalImages(Dataset):
    """Evaluation images in order: `image` float32 (3, R, R) (bicubic resize), `index` long."""

    def __init__(self, image_root: Path, names: list[str], source: str, image_res: int) -> None:
        self.image_root, self.names, self.source = image_root, names, source
        self.transform = TestTransform(image_res)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = load_image(self.image_root / self.names[i], self.source)
        return {"image": self.transform(image), "index": torch.tensor(i, dtype=torch.long)}


class BlipEvalTexts(Dataset):
    """One text per product: `input_ids`, `attention_mask` long (max_length,), `index` long."""

    def __init__(self, captions: list[str], encoder: BlipCaptions, keep_sign: bool) -> None:
        self.captions, self.encoder, self.keep_sign = captions, encoder, keep_sign

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids, mask = self.encoder.encode(self.captions[i], self.keep_sign)
        return {"input_ids": ids, "attention_mask": mask, "index": torch.tensor(i, dtype=torch.long)}


class BlipEvalSet:
    """CMR candidates: `images` (every image of every product, product by product), `texts` (one per
    product), `product_rows[p]` (positions of product p's images), `product_ids` (from the image names when
    they are `<productID>_<k>.png`, else None) and, loaded on first use for the sampled protocol,
    `row_subcategory` from the split's `info_data.json`.

    Evaluation queries carry no sign in fixed sign mode (stripped); in compat the published sign word
    stays. `text_has_sign`: whether position 1 of the encoded texts holds a sign.
    """

    def __init__(self, captions: list[str], image_lists: list[list[str]], image_root: str | Path,
                 encoder: BlipCaptions, *, source: str, image_res: int, info_data: str | Path | None = None) -> None:
        if len(captions) != len(image_lists) or not captions:
            raise DataError(f"{source}: no products to evaluate")
        empty = next((p for p, names in enumerate(image_lists) if not names), None)
        if empty is not None:
            raise DataError(f"{source}: product {empty} lists no image")
        names = [n for group in image_lists for n in group]
        if len(set(names)) != len(names):
            raise DataError(f"{source}: an image is listed for more than one product")
        offsets = np.concatenate([[0], np.cumsum([len(g) for g in image_lists])]).tolist()
        self.product_rows = [list(range(a, b)) for a, b in zip(offsets[:-1], offsets[1:])]
        self.image_names, self.source, self.info_data = names, source, info_data
        self.images = BlipEvalImages(Path(image_root), names, source, image_res)
        self.text_has_sign = encoder.keeps_sign(False) and all(split_sign(c)[0] is not None for c in captions)
        self.texts = BlipEvalTexts(captions, encoder, keep_sign=False)
        firsts = [_IMAGE_NAME.match(group[0]) for group in image_lists]
        ids = [int(m.group(1)) for m in firsts] if all(firsts) else None
        self.product_ids = ids if ids is not None and len(set(ids)) == len(ids) else None
        self._row_subcategory: list[str] | None = None

    @classmethod
    def from_test_annotation(cls, path: str | Path, image_root: str | Path, encoder: BlipCaptions, *,
                             image_res: int, info_data: str | Path | None = None) -> BlipEvalSet:
        """Per-product records `{"caption": str, "image": [names]}` (`prepare_dataset.py`)."""
        path = Path(path)
        records = read_annotation(path)
        captions = [_field(path, i, rec, "caption", str) for i, rec in enumerate(records)]
        lists = [_field(path, i, rec, "image", list) for i, rec in enumerate(records)]
        for i, names in enumerate(lists):
            if not all(isinstance(n, str) for n in names):
                raise DataError(f"{path}: record {i}: 'image' must be a list of file names")
        return cls(captions, lists, image_root, encoder, source=str(path), image_res=image_res, info_data=info_data)

    @classmethod
    def from_train_products(cls, annotation: BlipTrainAnnotation, products: Sequence[int], image_root: str | Path,
                            encoder: BlipCaptions, *, image_res: int, info_data: str | Path | None = None) -> BlipEvalSet:
        """Held-out training products: the caption of each product's first record, all its images."""
        groups = annotation.product_records()
        chosen = [groups[p] for p in sorted(products)]
        return cls([annotation.captions[g[0]] for g in chosen], [[annotation.images[r] for r in g] for g in chosen],
                   image_root, encoder, source=f"{annotation.path} (held-out products)", image_res=image_res,
                   info_data=info_data)

    @property
    def num_images(self) -> int:
        return len(self.image_names)

    @property
    def num_products(self) -> int:
        return len(self.product_rows)

    @property
    def row_subcategory(self) -> list[str]:
        """Subcategory of every evaluation image (needed by the sampled protocol only)."""
        if self._row_subcategory is None:
            if self.info_data is None:
                raise DataError(f"{self.source}: the sampled protocol needs subcategories (info_data.json)")
            table = image_subcategories(self.info_data)
            unknown = [n for n in self.image_names if n not in table]
            if unknown:
                raise DataError(f"{self.source}: {len(unknown)} image(s) not in {self.info_data} (e.g. "
                                f"{unknown[0]}); the sampled protocol needs each image's subcategory")
            self._row_subcategory = [table[n] for n in self.image_names]
        return self._row_subcategory
