"""Image transforms of the ALBEF-based tasks, with every random draw from a passed generator.

`TrainTransform`: random resized crop (scale 0.5-1, ratio 3/4-4/3, bicubic), horizontal flip (p 0.5), the
ALBEF RandAugment op (N=2 ops drawn with replacement from ten, each applied with p 0.5, magnitude M of 10),
to tensor, CLIP normalisation. `TestTransform`: bicubic resize to image_res x image_res, to tensor, normalise.
Both are called as `transform(img, rng)`; the test transform ignores `rng`. Draws never touch the global
NumPy/torch generators (which the published DataLoader workers shared), so an item's augmentation depends
only on the generator it is given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
FILL: tuple[int, int, int] = (128, 128, 128)
MAX_LEVEL = 10.0

# ALBEF order of the op pool (the draw is an index into this tuple).
RANDAUG_OPS: tuple[str, ...] = (
    "Identity",
    "AutoContrast",
    "Equalize",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
)
_SIGNED_OPS = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"})
_NO_PARAM_OPS = frozenset({"Identity", "AutoContrast", "Equalize"})

_MEAN = torch.tensor(CLIP_MEAN).view(3, 1, 1)
_STD = torch.tensor(CLIP_STD).view(3, 1, 1)
# (v / 255 - mean_c) / std_c in float32 for every byte value v of channel c: the same three rounded float32
# operations as normalising the pixels themselves, so looking the pixels up gives the same bits.
_TABLE = torch.arange(256, dtype=torch.float32).expand(3, 1, 256).div(255.0).sub_(_MEAN).div_(_STD).view(3, 256)
_TABLE_NP = _TABLE.numpy()


def to_normalized_tensor(img: Image.Image) -> torch.Tensor:
    """uint8 RGB image -> contiguous float32 (3, H, W) tensor of (pixel / 255 - mean) / std (CLIP statistics).

    One table look-up per pixel and channel, written straight into the channel-first output (2x faster
    than converting, scaling and normalising the whole image, with the same result bit for bit).
    """
    img = img.convert("RGB") if img.mode != "RGB" else img
    out = np.empty((3, img.height, img.width), dtype=np.float32)
    for channel, band in enumerate(img.split()):
        np.take(_TABLE_NP[channel], np.asarray(band), out=out[channel], mode="clip")  # bytes never clip
    return torch.from_numpy(out)


def op_magnitude(name: str, magnitude: float) -> float:
    """Unsigned parameter of an op at magnitude M (ALBEF level functions, max level 10)."""
    level = magnitude / MAX_LEVEL
    if name in ("Brightness", "Sharpness"):
        return 0.1 + 1.8 * level
    if name in ("ShearX", "ShearY"):
        return 0.3 * level
    if name in ("TranslateX", "TranslateY"):
        return 10.0 * level  # absolute pixels, whatever the image size
    if name == "Rotate":
        return 30.0 * level
    if name in _NO_PARAM_OPS:
        return 0.0
    raise ValueError(f"unknown RandAugment op {name!r}; expected one of {RANDAUG_OPS}")


def _affine(img: Image.Image, data: tuple[float, ...]) -> Image.Image:
    # PIL's data maps output to input coordinates (the inverse of OpenCV's warpAffine matrix).
    return img.transform(img.size, Image.Transform.AFFINE, data, Image.Resampling.BILINEAR, fillcolor=FILL)


def apply_op(img: Image.Image, name: str, param: float) -> Image.Image:
    """Apply one RandAugment op with its (signed) parameter to an RGB image.

    Geometry follows the ALBEF/OpenCV conventions: ShearX moves row y right by `param * y`, TranslateX/Y
    move the content right/down by `param` pixels, Rotate turns counter-clockwise by `param` degrees about
    the centre; uncovered pixels are grey (128, 128, 128).
    """
    if name == "Identity":
        return img
    if name == "AutoContrast":
        return ImageOps.autocontrast(img, cutoff=0)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Brightness":
        # ALBEF scales with a truncating lookup table (no blend rounding).
        table = [min(255, int(i * param)) for i in range(256)]
        return img.point(table * len(img.getbands()))
    if name == "Sharpness":
        # Blend with PIL's SMOOTH filter (kernel 1 1 1 / 1 5 1 / 1 1 1, /13), borders kept: the ALBEF op.
        return ImageEnhance.Sharpness(img).enhance(param)
    if name == "ShearX":
        return _affine(img, (1.0, -param, 0.0, 0.0, 1.0, 0.0))
    if name == "ShearY":
        return _affine(img, (1.0, 0.0, 0.0, -param, 1.0, 0.0))
    if name == "TranslateX":
        return _affine(img, (1.0, 0.0, -param, 0.0, 1.0, 0.0))
    if name == "TranslateY":
        return _affine(img, (1.0, 0.0, 0.0, 0.0, 1.0, -param))
    if name == "Rotate":
        return img.rotate(param, resample=Image.Resampling.BILINEAR, fillcolor=FILL)
    raise ValueError(f"unknown RandAugment op {name!r}; expected one of {RANDAUG_OPS}")


class RandAugment:
    """ALBEF's RandomAugment(N, M): N ops drawn uniformly with replacement, each applied with probability p.

    Draw order per call (for exact replay): N op indices, then per op a uniform for the probability test
    and, if applied and the op is signed, a uniform for the sign (negative when > 0.5).
    """

    def __init__(self, num_ops: int = 2, magnitude: float = 7, prob: float = 0.5,
                 ops: Sequence[str] = RANDAUG_OPS) -> None:
        if num_ops < 0:
            raise ValueError(f"num_ops must be >= 0, got {num_ops}")
        if not 0 <= magnitude <= MAX_LEVEL:
            raise ValueError(f"RandAugment magnitude must be in [0, {MAX_LEVEL:g}], got {magnitude}")
        for name in ops:
            op_magnitude(name, magnitude)  # validates the name
        self.num_ops, self.magnitude, self.prob, self.ops = num_ops, float(magnitude), prob, tuple(ops)

    def sample(self, rng: np.random.Generator) -> list[tuple[str, float]]:
        """The ops (name, signed parameter) this call applies, in order; skipped ops are left out."""
        chosen = rng.integers(0, len(self.ops), size=self.num_ops)
        applied: list[tuple[str, float]] = []
        for index in chosen:
            name = self.ops[int(index)]
            if rng.random() > self.prob:
                continue
            param = op_magnitude(name, self.magnitude)
            if name in _SIGNED_OPS and rng.random() > 0.5:
                param = -param
            applied.append((name, param))
        return applied

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        for name, param in self.sample(rng):
            img = apply_op(img, name, param)
        return img


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            scale: tuple[float, float] = (0.5, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """Crop box (left, top, right, bottom) drawn as torchvision's RandomResizedCrop does, from `rng`."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    # Fallback: central crop at the nearest allowed aspect ratio.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


class TrainTransform:
    """Random resized crop + horizontal flip + RandAugment + to tensor + CLIP normalisation."""

    def __init__(self, image_res: int = 256, randaugment_magnitude: float = 7, *,
                 scale: tuple[float, float] = (0.5, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 flip_prob: float = 0.5, num_ops: int = 2, op_prob: float = 0.5) -> None:
        if image_res < 1:
            raise ValueError(f"image_res must be >= 1, got {image_res}")
        self.image_res, self.scale, self.ratio, self.flip_prob = image_res, scale, ratio, flip_prob
        self.randaugment = RandAugment(num_ops, randaugment_magnitude, op_prob)

    def __call__(self, img: Image.Image, rng: np.random.Generator | None) -> torch.Tensor:
        if rng is None:
            raise ValueError("the train transform needs a numpy Generator (e.g. engine.seeding.item_rng)")
        img = img.convert("RGB") if img.mode != "RGB" else img
        img = self.flip(self.crop_resize(img, rng), rng)
        return to_normalized_tensor(self.randaugment(img, rng))

    def crop_resize(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        """The random resized crop (draws the box from `rng`), bicubic to image_res x image_res."""
        box = random_resized_crop_box(img.width, img.height, rng, self.scale, self.ratio)
        return img.crop(box).resize((self.image_res, self.image_res), Image.Resampling.BICUBIC)

    def flip(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        """Horizontal flip with probability flip_prob (one draw from `rng`)."""
        if rng.random() < self.flip_prob:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img


class TestTransform:
    """Bicubic resize to exactly image_res x image_res (no crop) + to tensor + CLIP normalisation."""

    __test__ = False  # not a pytest test class

    def __init__(self, image_res: int = 256) -> None:
        if image_res < 1:
            raise ValueError(f"image_res must be >= 1, got {image_res}")
        self.image_res = image_res

    def __call__(self, img: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        img = img.convert("RGB") if img.mode != "RGB" else img
        if img.size != (self.image_res, self.image_res):
            img = img.resize((self.image_res, self.image_res), Image.Resampling.BICUBIC)
        return to_normalized_tensor(img)
