"""Attention-guided local crop (the published rules), batched on the device.

The published code does this per image with OpenCV and PIL; here the same rules run on tensors:
bilinear half-pixel upsampling of the attention map to S x S, min-max normalisation, 8-bit truncation,
a strict threshold at floor(255 * tau), the tight box of the "on" pixels made square, mapped back to
the original image, cropped with black outside the image and resized with PIL's bilinear filter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def grid_boxes(maps: torch.Tensor, size: int, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Square boxes (x, y, d) in the S x S grid of the global view, one per (B, h, w) attention map.

    Returns (boxes (B, 3) int64, fallback (B,) bool); a constant map (no usable box) falls back to the
    whole grid (0, 0, S).
    """
    if maps.dim() != 3:
        raise ValueError(f"attention maps must be (B, h, w), got {tuple(maps.shape)}")
    up = F.interpolate(maps.detach().float()[:, None], size=(size, size), mode="bilinear",
                       align_corners=False)[:, 0]
    low = up.amin(dim=(1, 2), keepdim=True)
    span = up.amax(dim=(1, 2), keepdim=True) - low
    fallback = ~(span[:, 0, 0] > 0)  # also catches NaN maps
    norm = (up - low) / torch.where(span > 0, span, torch.ones_like(span))
    level = (norm.clamp(0, 1) * 255).to(torch.uint8)  # truncation, as numpy's uint8 cast
    on = level > math.floor(255 * threshold)
    cols, rows = on.any(dim=1), on.any(dim=2)  # (B, S): columns / rows holding an "on" pixel
    x, w = _extent(cols)
    y, h = _extent(rows)
    d = torch.maximum(w, h)
    xs = _square_start(x + w // 2, d, size)
    ys = _square_start(y + h // 2, d, size)
    boxes = torch.stack([xs, ys, d], dim=1)
    whole = torch.tensor([0, 0, size], dtype=boxes.dtype, device=boxes.device)
    return torch.where(fallback[:, None] | (d[:, None] <= 0), whole, boxes), fallback


def _extent(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First index and length of the span of True entries per row of a (B, S) mask (length 0 if none)."""
    s = mask.shape[1]
    m = mask.to(torch.uint8)
    first = m.argmax(dim=1)
    last = s - 1 - m.flip(1).argmax(dim=1)
    length = torch.where(mask.any(dim=1), last - first + 1, torch.zeros_like(first))
    return first, length


def _square_start(centre: torch.Tensor, d: torch.Tensor, size: int) -> torch.Tensor:
    """Published rule: S - d if centre + d//2 passes S, else max(0, centre - d//2)."""
    half = d // 2
    return torch.where(centre + half > size, size - d, (centre - half).clamp(min=0))


def original_boxes(grid: torch.Tensor, sizes: torch.Tensor, size: int) -> torch.Tensor:
    """Map (x, y, d) grid boxes to original-image pixels, undoing "resize short side to S, centre crop".

    `sizes` is (B, 2) [H0, W0]. Coordinates are scaled by short/S and truncated (in float64, as the
    published Python code), then the centre-crop offset is added along the long side; d >= 1.
    """
    h0, w0 = sizes[:, 0].to(grid.device), sizes[:, 1].to(grid.device)
    portrait = w0 < h0  # a square image counts as "height is short"
    short = torch.where(portrait, w0, h0).double()
    offset = (torch.where(portrait, h0, w0) - torch.where(portrait, w0, h0)) // 2
    scaled = torch.floor(grid.double() / size * short[:, None]).long()
    x, y, d = scaled.unbind(1)
    x = x + torch.where(portrait, torch.zeros_like(offset), offset)
    y = y + torch.where(portrait, offset, torch.zeros_like(offset))
    return torch.stack([x, y, d.clamp(min=1)], dim=1)


def crop_boxes(maps: torch.Tensor, sizes: torch.Tensor, size: int, threshold: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3) [x, y, d] crop squares in original-image pixels, and the constant-map fallback flags."""
    grid, fallback = grid_boxes(maps, size, threshold)
    return original_boxes(grid, sizes, size), fallback


def resample_weights(start: torch.Tensor, length: torch.Tensor, extent: torch.Tensor, out_size: int,
                     in_size: int) -> torch.Tensor:
    """(B, out_size, in_size) matrices applying PIL's bilinear resize of the crop [start, start + length)
    along one axis; columns outside [0, extent) are black in the crop, so they get no weight."""
    device = start.device
    length_f = length.double()[:, None, None]
    scale = length_f / out_size
    filterscale = scale.clamp(min=1.0)
    support = filterscale  # bilinear support 1.0, widened when reducing
    centre = (torch.arange(out_size, device=device, dtype=torch.float64)[None, :, None] + 0.5) * scale
    width = int(length.max()) if length.numel() else 1
    x = torch.arange(width, device=device, dtype=torch.float64)[None, None, :]  # crop coordinate
    lo = (centre - support + 0.5).trunc().clamp(min=0)
    hi = torch.minimum((centre + support + 0.5).trunc(), length_f)
    w = (1.0 - ((x - centre + 0.5) / filterscale).abs()).clamp(min=0)
    w = torch.where((x >= lo) & (x < hi), w, torch.zeros_like(w))
    total = w.sum(dim=2, keepdim=True)
    w = w / torch.where(total > 0, total, torch.ones_like(total))
    # crop coordinate of every original pixel; keep those inside both the crop and the image
    pos = torch.arange(in_size, device=device)[None, :] - start[:, None]  # (B, in_size)
    inside = (pos >= 0) & (pos < length[:, None]) & (torch.arange(in_size, device=device)[None] < extent[:, None])
    gathered = torch.gather(w, 2, pos.clamp(0, width - 1)[:, None, :].expand(-1, out_size, -1))
    return torch.where(inside[:, None, :], gathered, torch.zeros_like(gathered)).float()


def crop_resize(originals: torch.Tensor, sizes: torch.Tensor, boxes: torch.Tensor, out_size: int,
                mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Crop squares from zero-padded uint8 originals (B, 3, Hmax, Wmax), resize to out_size, normalise.

    Black outside the real image (PIL's crop), PIL bilinear weights, rounded to 8-bit levels like
    PIL's output, then ToTensor/Normalize. Returns (B, 3, out_size, out_size) float32.
    """
    sizes = sizes.to(boxes.device)
    h_max, w_max = originals.shape[2], originals.shape[3]
    x, y, d = boxes.unbind(1)
    wx = resample_weights(x, d, sizes[:, 1], out_size, w_max)  # (B, L, Wmax)
    wy = resample_weights(y, d, sizes[:, 0], out_size, h_max)  # (B, L, Hmax)
    img = originals.float()
    out = torch.matmul(torch.matmul(wy[:, None], img), wx[:, None].transpose(2, 3))  # (B, 3, L, L)
    out = out.round().clamp(0, 255) / 255.0
    mean_t = torch.tensor(mean, device=out.device, dtype=out.dtype)[None, :, None, None]
    std_t = torch.tensor(std, device=out.device, dtype=out.dtype)[None, :, None, None]
    return (out - mean_t) / std_t
