"""ASEN++ image transforms, as published: no augmentation; the local crop lives in models/asen_crop.py."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import transforms


def global_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> transforms.Compose:
    """Resize the short side to `size` (bilinear, aspect kept), centre-crop `size` x `size`, normalise."""
    return transforms.Compose([
        transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize(list(mean), list(std)),
    ])


def original_tensor(image: Image.Image) -> torch.Tensor:
    """The decoded RGB image as a (3, H, W) uint8 tensor, kept for the local crop."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def pad_originals(images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad (3, H, W) uint8 images to one (N, 3, Hmax, Wmax) tensor; also return the (N, 2) [H, W] sizes."""
    sizes = torch.tensor([[img.shape[1], img.shape[2]] for img in images], dtype=torch.long)
    h, w = (int(v) for v in sizes.max(0).values) if len(images) else (1, 1)
    out = torch.zeros(len(images), 3, h, w, dtype=torch.uint8)
    for i, img in enumerate(images):
        out[i, :, : img.shape[1], : img.shape[2]] = img
    return out, sizes
