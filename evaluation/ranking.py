"""Fast per-row descending order of score blocks, identical to a stable descending sort.

`descending_order(scores)` equals `torch.sort(scores, dim=1, descending=True, stable=True).indices`:
highest score first, equal scores by ascending candidate index, -0.0 equal to +0.0, NaN above +inf
(all NaNs equal). Each score becomes one unique int64 key, (order-preserving score bits << 32) |
candidate index, so that any sort of the keys, stable or not, gives exactly that order. On CPU the keys
are built and sorted with NumPy (its vectorised integer sort), several times faster than torch's stable
float sort; on other devices the stable float sort is kept (a radix sort there, with 4-byte keys; the
int64-key variant `descending_keys` is device-agnostic but unmeasured on GPUs).
"""

from __future__ import annotations

import sys

import numpy as np
import torch

_LOW32 = 0xFFFFFFFF
_KEY_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # exactly representable in float32
_MAX_CANDIDATES = 2**31 - 1


def _check(scores: torch.Tensor) -> None:
    if scores.dim() != 2:
        raise ValueError("scores must be a 2-D (queries x candidates) block")
    if scores.dtype not in _KEY_DTYPES:
        raise ValueError(f"unsupported score dtype {scores.dtype} (float32, float16, bfloat16)")
    if scores.shape[1] > _MAX_CANDIDATES:
        raise ValueError(f"at most {_MAX_CANDIDATES} candidates per row")


def _has_nan(scores: torch.Tensor) -> bool:
    return scores.numel() > 0 and bool(torch.isnan(scores.amax()))  # amax propagates NaN: one pass, no mask


def descending_keys(scores: torch.Tensor) -> torch.Tensor:
    """(B, C) int64 keys whose ascending order per row is the stable descending order of `scores`."""
    _check(scores)
    bits = (scores.to(torch.float32) + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0
    if _has_nan(scores):
        bits = bits.masked_fill((bits & 0x7FFFFFFF) > 0x7F800000, 0x7FC00000)  # one positive NaN: above +inf
    # signed order of the float bits: flip the magnitude bits of negative numbers, then invert (descending)
    key = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).bitwise_not_().to(torch.int64).bitwise_left_shift_(32)
    return key.bitwise_or_(torch.arange(scores.shape[1], device=scores.device, dtype=torch.int64))


def _numpy_keys(scores: torch.Tensor) -> np.ndarray:
    """`descending_keys` of a CPU block, built in NumPy (fewer passes, no page-faulting temporaries)."""
    rows, cols = scores.shape
    bits = (scores.detach().to(torch.float32).numpy() + np.float32(0.0)).view(np.int32)  # a fresh array: safe to modify
    if _has_nan(scores):
        bits[(bits & 0x7FFFFFFF) > 0x7F800000] = 0x7FC00000
    bits ^= (bits >> 31) & 0x7FFFFFFF
    keys = np.empty((rows, cols), dtype=np.int64)
    halves = keys.view(np.int32).reshape(rows, cols, 2)  # little-endian: [..., 0] low word, [..., 1] high word
    np.invert(bits, out=halves[:, :, 1])
    halves[:, :, 0] = np.arange(cols, dtype=np.int32)
    return keys


def descending_order(scores: torch.Tensor) -> torch.Tensor:
    """(B, C) int64 candidate indices per row by decreasing score, ties by ascending index."""
    if scores.device.type != "cpu" or sys.byteorder != "little":
        return torch.sort(scores, dim=-1, descending=True, stable=True).indices
    _check(scores)
    keys = np.sort(_numpy_keys(scores), axis=1)  # keys are unique: any sort gives the one order
    return torch.from_numpy(keys).bitwise_and_(_LOW32)
