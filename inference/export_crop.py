"""ASEN++'s attention-guided crop (models/asen_crop.py) in a form that traces into one ONNX graph.

`models.asen_crop.resample_weights` sizes a gather by `int(length.max())`, a number read from the data, which a
traced graph would freeze at the example's value. Here the resize weights are evaluated directly at every
original pixel's crop coordinate instead (the same float64 formula, so the same weights), so the graph holds
for any box. The box rules themselves (`grid_boxes`, `original_boxes`) are tensor operations and are reused.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from models.asen_crop import crop_boxes


def resample_weights(start: torch.Tensor, length: torch.Tensor, extent: torch.Tensor, out_size: int,
                     in_size: int | torch.Tensor) -> torch.Tensor:
    """(B, out_size, in_size) PIL-bilinear weights of the crop [start, start + length), as
    `models.asen_crop.resample_weights` computes them, without a data-dependent shape."""
    device = start.device
    length_f = length.double()[:, None, None]
    scale = length_f / out_size
    filterscale = scale.clamp(min=1.0)  # bilinear support 1.0, widened when reducing
    centre = (torch.arange(out_size, device=device, dtype=torch.float64)[None, :, None] + 0.5) * scale
    lo = torch.floor(centre - filterscale + 0.5).clamp(min=0)  # floor = trunc here: negatives clamp to 0
    hi = torch.minimum(torch.floor(centre + filterscale + 0.5), length_f)

    def weights(x: torch.Tensor) -> torch.Tensor:
        w = (1.0 - ((x - centre + 0.5) / filterscale).abs()).clamp(min=0)
        return torch.where((x >= lo) & (x < hi), w, torch.zeros_like(w))

    pixels = torch.arange(in_size, device=device)
    # normalisation over crop coordinates 0..in_size-1, a superset of 0..length-1 (length <= in_size)
    total = weights(pixels.double()[None, None, :]).sum(dim=2, keepdim=True)
    pos = pixels[None, :] - start[:, None]  # crop coordinate of every original pixel, (B, in_size)
    w = weights(pos.double()[:, None, :]) / torch.where(total > 0, total, torch.ones_like(total))
    inside = (pos >= 0) & (pos < length[:, None]) & (pixels[None, :] < extent[:, None])
    return torch.where(inside[:, None, :], w, torch.zeros_like(w)).float()


def crop_resize(originals: torch.Tensor, sizes: torch.Tensor, boxes: torch.Tensor, out_size: int,
                mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """`models.asen_crop.crop_resize` (crop, PIL-bilinear resize, 8-bit rounding, normalise) with the weights above."""
    sizes = sizes.to(boxes.device)
    h_max, w_max = originals.shape[2], originals.shape[3]
    x, y, d = boxes.unbind(1)
    wx = resample_weights(x, d, sizes[:, 1], out_size, w_max)
    wy = resample_weights(y, d, sizes[:, 0], out_size, h_max)
    out = torch.matmul(torch.matmul(wy[:, None], originals.float()), wx[:, None].transpose(2, 3))
    out = out.round().clamp(0, 255) / 255.0
    mean_t = torch.tensor(list(mean), dtype=out.dtype, device=out.device)[None, :, None, None]
    std_t = torch.tensor(list(std), dtype=out.dtype, device=out.device)[None, :, None, None]
    return (out - mean_t) / std_t


def local_view(attn: torch.Tensor, originals: torch.Tensor, sizes: torch.Tensor, global_size: int,
               threshold: float, local_size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The local branch's input for attention maps `attn` (B, h, w): box from the map, crop of the original."""
    boxes, _ = crop_boxes(attn.float(), sizes, global_size, threshold)
    return crop_resize(originals, sizes, boxes, local_size, mean, std)
