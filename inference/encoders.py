"""Encoders of a loaded model: images, texts, TGIR queries and ASEN++ images for an attribute, in batches, without
gradients, through the task's own evaluation transforms and text layout and the evaluation's feature extraction
(`tasks.fine_common.extract`, `tasks.asen_eval.embed_dataset`), so that the float32, L2-normalised vectors they
return are the very vectors evaluation ranks.

Images may be file paths, PIL images, uint8 tensors (3, H, W) (raw pixels, transformed like a file) or float
tensors already shaped like the model input (3, size, size), used as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from datasets.fashiongen_meta import SIGN_TOKENS, sign_for_category
from datasets.images import load_rgb
from datasets.text import encode_fixed_length, join_fashioniq_captions, pre_caption
from datasets.transforms import TestTransform
from engine.data import build_eval_loader
from engine.distributed import DistInfo
from engine.errors import DataError

ImageInput = str | Path | Image.Image | torch.Tensor


def to_pil(image: ImageInput, where: str) -> Image.Image:
    """A PIL RGB image from a path, PIL image or uint8 (3, H, W) tensor; one-line errors name the file."""
    if isinstance(image, (str, Path)):
        return load_rgb(image, where)
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    if isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.dim() == 3 and image.shape[0] == 3:
        return Image.fromarray(image.permute(1, 2, 0).contiguous().numpy(), "RGB")
    raise DataError(f"{where}: not an image (a path, a PIL image, a uint8 (3, H, W) tensor or a float model input "
                    f"tensor), got {type(image).__name__}")


class ImageInputs(Dataset):
    """Images through an evaluation transform; float (3, S, S) tensors pass unchanged (already model input)."""

    def __init__(self, images: Sequence[ImageInput], transform: Any, size: int, source: str = "image") -> None:
        if len(images) == 0:
            raise DataError("no images to encode")
        self.images, self.transform, self.size, self.source = list(images), transform, size, source

    def __len__(self) -> int:
        return len(self.images)

    def model_input(self, i: int) -> torch.Tensor:
        image = self.images[i]
        if isinstance(image, torch.Tensor) and image.is_floating_point():
            if tuple(image.shape) != (3, self.size, self.size):
                raise DataError(f"{self.source} {i}: a float tensor must be a model input of shape "
                                f"(3, {self.size}, {self.size}), got {tuple(image.shape)}")
            return image
        return self.transform(to_pil(image, f"{self.source} {i}"))

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.model_input(i), "index": i}


class TokenInputs(Dataset):
    """Pre-tokenised texts (ids and masks), optionally with a reference image per text (TGIR queries)."""

    def __init__(self, ids: torch.Tensor, mask: torch.Tensor, images: ImageInputs | None = None) -> None:
        self.ids, self.mask, self.images = ids, mask, images

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {"input_ids": self.ids[i], "attention_mask": self.mask[i], "index": i}
        if self.images is not None:
            item["ref_image"] = self.images.model_input(i)
        return item


def _as_list(values: str | Sequence[Any], what: str) -> list[Any]:
    items = [values] if isinstance(values, (str, Path, Image.Image, torch.Tensor)) else list(values)
    if not items:
        raise DataError(f"no {what} to encode")
    return items


def _categories(categories: str | Sequence[str | None] | None, n: int) -> list[str | None]:
    if categories is None or isinstance(categories, str):
        return [categories] * n
    cats = list(categories)
    if len(cats) != n:
        raise DataError(f"{len(cats)} categories for {n} texts")
    return cats


def category_sign(category: str) -> str:
    """The sign token of a FashionGen category (e.g. 'JACKETS & COATS' -> '[coats_sign]'), or a sign itself
    ('coats' / 'coats_sign' / '[coats_sign]'); an unknown one is one line listing the signs."""
    key = category.strip().lower()
    for sign in SIGN_TOKENS:
        if key in (sign, sign[1:-1], sign[1:-1].removesuffix("_sign")):
            return sign
    try:
        return sign_for_category(category)
    except DataError:
        names = ", ".join(s[1:-1].removesuffix("_sign") for s in SIGN_TOKENS)
        raise DataError(f"unknown category {category!r}: give a FashionGen category (datasets/data/"
                        f"categorys_to_sign.txt) or a sign ({names})") from None


@dataclass
class Encoder:
    """A trained model ready for inference. `model` is in eval mode on `device`; `precision` is the autocast
    precision of the evaluation (bf16 on GPUs that support it); `fingerprint` identifies the weights."""

    model: nn.Module
    task: str
    family: str
    card: dict[str, Any]
    cfg: Any
    tokenizer: Any
    device: torch.device
    precision: str
    fingerprint: str
    source: str
    batch_size: int = 64
    num_workers: int = 0
    progress_bar: bool = False

    @property
    def image_size(self) -> int:
        return int(self.card["image"]["size"])

    def _loader(self, dataset: Dataset) -> Any:
        return build_eval_loader(dataset, self.batch_size, self.num_workers)

    def _extract(self, dataset: Dataset, encode: Any, desc: str) -> torch.Tensor:
        from tasks.fine_common import extract  # the evaluation's feature extraction

        self.model.eval()
        return extract(self._loader(dataset), encode, self.device, self.precision, progress_bar=self.progress_bar,
                       desc=desc).cpu()

    def image_inputs(self, images: ImageInput | Sequence[ImageInput]) -> ImageInputs:
        return ImageInputs(_as_list(images, "images"), TestTransform(self.image_size), self.image_size)

    def encode_images(self, images: ImageInput | Sequence[ImageInput]) -> torch.Tensor:
        """(N, D) float32 image embeddings (the gallery side of CMR and TGIR)."""
        return self.encode_image_inputs(self.image_inputs(images))

    def encode_image_inputs(self, dataset: Dataset) -> torch.Tensor:
        """Embeddings of a dataset whose items hold `image` (e.g. an evaluation set's images)."""
        return self._extract(dataset, lambda b: self.model.encode_image(b["image"]), "images")

    def describe(self) -> dict[str, Any]:
        """What an index built with this model records (search.py refuses an index of another model)."""
        return {"model": self.fingerprint, "task": self.task, "family": self.family}


class FashionGenEncoder(Encoder):
    """Fashion-FINE (ALBEF variant) CMR and pretraining models: images and product descriptions."""

    def text_tokens(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids as the evaluation builds them: prefix + cleaned text, [CLS] ... [SEP], padded."""
        layout = self.card["text"]
        full = [layout["prefix"] + pre_caption(t) for t in texts]
        return encode_fixed_length(self.tokenizer, full, layout["max_length"], add_sep=layout["add_sep"])

    def encode_texts(self, texts: str | Sequence[str], categories: str | Sequence[str | None] | None = None
                     ) -> torch.Tensor:
        """(N, D) float32 text embeddings. A category is checked; the ALBEF-variant evaluation texts carry no
        category sign, so it does not change the vector."""
        items = _as_list(texts, "texts")
        for c in _categories(categories, len(items)):
            if c is not None:
                category_sign(c)
        ids, mask = self.text_tokens(items)
        return self.encode_token_inputs(TokenInputs(ids, mask))

    def encode_token_inputs(self, dataset: Dataset) -> torch.Tensor:
        """Embeddings of a dataset whose items hold `input_ids` / `attention_mask` (e.g. evaluation texts)."""
        return self._extract(dataset, lambda b: self.model.encode_text(b["input_ids"], b["attention_mask"]),
                             "texts")


class BlipEncoder(Encoder):
    """Fashion-FINE on BLIP: images and captions (a category adds its sign as the evaluation texts have it)."""

    def captions(self) -> Any:
        from datasets.fashiongen_blip import BlipCaptions

        layout = self.card["text"]
        return BlipCaptions(self.tokenizer, max_words=layout["max_words"], max_length=layout["max_length"],
                            sign_tokens=layout["sign_prefix"] == "stripped")

    def encode_texts(self, texts: str | Sequence[str], categories: str | Sequence[str | None] | None = None
                     ) -> torch.Tensor:
        """(N, D) float32 caption embeddings, encoded as the evaluation encodes its queries: a category becomes
        the leading sign word of the caption (kept in compat sign mode, stripped in fixed sign mode)."""
        items = _as_list(texts, "texts")
        cats = _categories(categories, len(items))
        captions = [t if c is None else f"{category_sign(c)[1:-1]} {t}" for t, c in zip(items, cats)]
        enc = self.captions()
        pairs = [enc.encode(c, keep_sign=False) for c in captions]
        ids, mask = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        has_sign = enc.keeps_sign(False) and all(c is not None for c in cats)
        return self._extract(TokenInputs(ids, mask), lambda b: self.model.encode_text(
            b["input_ids"], b["attention_mask"], has_sign), "texts")


class TGIREncoder(Encoder):
    """Fashion-FINE TGIR: gallery images and queries (reference image + modification text)."""

    def query_tokens(self, texts: Sequence[str | Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Relative captions as the evaluation joins them (prefix, ' and ', cleaned), then tokenised."""
        layout = self.card["text"]
        joined = [join_fashioniq_captions([t] if isinstance(t, str) else list(t)) for t in texts]
        return encode_fixed_length(self.tokenizer, joined, layout["max_length"], add_sep=layout["add_sep"])

    def encode_queries(self, ref_images: ImageInput | Sequence[ImageInput],
                       texts: str | Sequence[str | Sequence[str]]) -> torch.Tensor:
        """(N, D) float32 query embeddings of (reference image, modification text) pairs; a text may be one
        caption or the list of relative captions of a FashionIQ entry."""
        refs = self.image_inputs(ref_images)
        items = [texts] if isinstance(texts, str) else list(texts)
        if len(items) != len(refs):
            raise DataError(f"{len(refs)} reference images for {len(items)} modification texts")
        ids, mask = self.query_tokens(items)
        return self._extract(TokenInputs(ids, mask, refs), lambda b: self.model.encode_query(
            b["input_ids"], b["attention_mask"], b["ref_image"]), "queries")


class AsenImageInputs(Dataset):
    """ASEN++ items for one attribute, built as the evaluation builds its lines (global view, attribute, and the
    decoded original for the local branch)."""

    def __init__(self, images: Sequence[ImageInput], attr: int, card: dict[str, Any]) -> None:
        from datasets.asen_transforms import global_transform

        if len(images) == 0:
            raise DataError("no images to encode")
        img = card["image"]
        self.images, self.attr, self.local = list(images), attr, bool(card.get("local"))
        self.transform = global_transform(img["size"], img["mean"], img["std"])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from datasets.asen_transforms import original_tensor

        image = to_pil(self.images[i], f"image {i}")
        item = {"image": self.transform(image), "attr": self.attr}
        if self.local:
            item["original"] = original_tensor(image)
        return item


class AsenEncoder(Encoder):
    """ASEN++: attribute-specific embeddings of images (global, or fused global + local in stage 2)."""

    @property
    def attributes(self) -> list[str]:
        return list(self.card["attributes"])

    def attribute_index(self, attribute: str | int) -> int:
        names = self.attributes
        if isinstance(attribute, (int, np.integer)) and 0 <= int(attribute) < len(names):
            return int(attribute)
        if isinstance(attribute, str):
            if attribute in names:
                return names.index(attribute)
            if attribute.isdigit() and int(attribute) < len(names):
                return int(attribute)
        raise DataError(f"unknown attribute {attribute!r}; this model's attributes: {', '.join(names)}")

    def encode_images(self, images: ImageInput | Sequence[ImageInput],  # type: ignore[override]
                      attribute: str | int | None = None) -> torch.Tensor:
        """(N, D) float32 embeddings of `images` for `attribute` (a name or index)."""
        if attribute is None:
            raise DataError(f"ASEN++ embeds images for an attribute; give one of: {', '.join(self.attributes)}")
        return self.encode_asen_inputs(AsenImageInputs(_as_list(images, "images"),
                                                       self.attribute_index(attribute), self.card))

    def encode_asen_inputs(self, dataset: Dataset) -> torch.Tensor:
        """Embeddings of a dataset of ASEN++ items (`image`, `attr`, `original`), as evaluation embeds them."""
        from tasks.asen_eval import embed_dataset

        info = DistInfo(rank=0, world_size=1, local_rank=0, device=self.device, backend=None)
        return embed_dataset(self.model, dataset, self.cfg, info, self.precision,
                             progress_bar=self.progress_bar, desc="images")["fused"].cpu()


ENCODERS: dict[str, type[Encoder]] = {"pretrain": FashionGenEncoder, "cmr": FashionGenEncoder, "tgir": TGIREncoder,
                                      "fine_blip": BlipEncoder, "asen": AsenEncoder}
__all__ = ["ENCODERS", "AsenEncoder", "BlipEncoder", "Encoder", "FashionGenEncoder", "TGIREncoder"]
