"""Attention-guided crop: batched boxes vs a per-image reference of the published OpenCV/PIL steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.asen_transforms import pad_originals
from models.asen_crop import crop_boxes, crop_resize, grid_boxes, original_boxes


# ----------------------------------------------------------- reference (the published rules, one image at a time)
def ref_upsample(a: np.ndarray, size: int) -> np.ndarray:
    """OpenCV INTER_LINEAR (half-pixel centres, edge clamp), float32."""
    a = np.asarray(a, np.float32)

    def coords(n_src):
        out = []
        for d in range(size):
            f = (d + 0.5) * (n_src / size) - 0.5
            s = math.floor(f)
            f -= s
            if s < 0:
                s, f = 0, 0.0
            if s >= n_src - 1:
                s, f = n_src - 1, 0.0
            out.append((s, min(s + 1, n_src - 1), np.float32(f)))
        return out

    y0, y1, fy = (np.array(v) for v in zip(*coords(a.shape[0])))
    x0, x1, fx = (np.array(v) for v in zip(*coords(a.shape[1])))
    fx, fy = fx.astype(np.float32)[None, :], fy.astype(np.float32)[:, None]
    top = a[y0][:, x0] * (1 - fx) + a[y0][:, x1] * fx
    bottom = a[y1][:, x0] * (1 - fx) + a[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def ref_grid_box(att: np.ndarray, size: int, tau: float):
    up = ref_upsample(att, size)
    norm = (up - up.min()) / (up.max() - up.min())
    on = (np.float32(255) * norm).astype(np.uint8) > int(255 * tau)
    ys, xs = np.nonzero(on)
    x, y = int(xs.min()), int(ys.min())
    w, h = int(xs.max()) - x + 1, int(ys.max()) - y + 1
    d = max(w, h)
    xc, yc = x + w // 2, y + h // 2
    sx = size - d if xc + d // 2 > size else max(0, xc - d // 2)
    sy = size - d if yc + d // 2 > size else max(0, yc - d // 2)
    return (sx, sy, d), on


def ref_box(att: np.ndarray, size: int, tau: float, width: int, height: int):
    (x, y, d), _ = ref_grid_box(att, size, tau)
    s = width if width < height else height
    x, y, d = int(x / size * s), int(y / size * s), int(d / size * s)
    if width < height:
        y += (height - width) // 2
    else:
        x += (width - height) // 2
    return x, y, max(d, 1)


def block(h: int, y0: int, y1: int, x0: int, x1: int, extra: tuple[int, int, float] | None = None) -> np.ndarray:
    m = np.zeros((h, h), np.float32)
    m[y0:y1, x0:x1] = 1.0
    if extra:
        m[extra[0], extra[1]] = extra[2]
    return m


# hand-made maps: (map, S, tau); block maps upsample to exact multiples of 1/32
HAND_MADE = [
    (block(14, 6, 7, 6, 7), 224, 0.1),  # one hot cell in the middle
    (block(14, 0, 2, 0, 3), 224, 0.1),  # top-left corner: start clamped to 0
    (block(14, 11, 14, 12, 14), 224, 0.4),  # bottom-right: square shifted to S - d
    (block(14, 5, 6, 1, 13), 224, 0.1),  # wide bar: d = w
    (block(14, 1, 13, 7, 8), 224, 0.4),  # tall bar: d = h
    (block(14, 2, 4, 2, 4, (11, 10, 0.5)), 224, 0.1),  # two blobs: the box spans both
    (block(14, 2, 4, 2, 4, (11, 10, 0.5)), 224, 0.4),  # ... the weaker one drops out at tau 0.4
    (block(4, 3, 4, 2, 3, (2, 1, 0.5)), 64, 0.4),  # odd d with centre + d//2 == S: one pixel past the edge
]
SIZES = [(128, 160), (160, 128), (144, 144), (333, 500), (500, 333)]  # (width, height)


def test_hand_made_maps_give_the_reference_boxes():
    for size in (224, 64):
        cases = [(m, tau) for m, s, tau in HAND_MADE if s == size]
        for tau in (0.1, 0.4):
            maps = [m for m, t in cases if t == tau]
            if not maps:
                continue
            n = len(maps) * len(SIZES)
            stacked = torch.tensor(np.stack([m for m in maps for _ in SIZES]))
            sizes = torch.tensor([[h, w] for _ in maps for w, h in SIZES])
            boxes, fallback = crop_boxes(stacked, sizes, size, tau)
            expected = [ref_box(m, size, tau, w, h) for m in maps for w, h in SIZES]
            assert boxes.tolist() == [list(e) for e in expected] and not fallback.any() and len(expected) == n


def test_published_one_pixel_overrun_is_reproduced():
    m, size, tau = HAND_MADE[-1]
    (x, y, d), _ = ref_grid_box(m, size, tau)
    assert y + d == size + 1 and d % 2 == 1
    assert grid_boxes(torch.tensor(m)[None], size, tau)[0].tolist() == [[x, y, d]]


@pytest.mark.parametrize("size,h", [(224, 14), (64, 4)])
def test_random_attention_maps_match_within_one_pixel_cover_the_region_and_stay_inside(size, h):
    g = torch.Generator().manual_seed(size)
    maps = torch.softmax(2 * torch.randn(100, h * h, generator=g), dim=1).view(-1, h, h)
    for tau in (0.1, 0.4):
        boxes, _ = grid_boxes(maps, size, tau)
        for m, (x, y, d) in zip(maps.numpy(), boxes.tolist()):
            (rx, ry, rd), on = ref_grid_box(m, size, tau)
            assert max(abs(x - rx), abs(y - ry), abs(d - rd)) <= 1
            ys, xs = np.nonzero(on)
            assert x <= xs.min() and xs.max() < x + d and y <= ys.min() and ys.max() < y + d  # covers
            assert x >= 0 and y >= 0 and d <= size
            # inside the S x S view, except the published one-pixel overrun (odd d at the far edge)
            for start in (x, y):
                assert start + d <= size or (start + d == size + 1 and d % 2 == 1)


def test_original_boxes_stay_in_the_centre_crop_area_and_cover_the_mapped_region():
    g = torch.Generator().manual_seed(0)
    maps = torch.softmax(3 * torch.randn(len(SIZES) * 40, 196, generator=g), dim=1).view(-1, 14, 14)
    sizes = torch.tensor([[h, w] for _ in range(40) for w, h in SIZES])
    grid, _ = grid_boxes(maps, 224, 0.1)
    boxes = original_boxes(grid, sizes, 224)
    for (x, y, d), (gx, gy, gd), (hh, ww) in zip(boxes.tolist(), grid.tolist(), sizes.tolist()):
        s = min(ww, hh)
        ox, oy = ((ww - hh) // 2, 0) if ww >= hh else (0, (hh - ww) // 2)
        assert ox <= x and oy <= y and d >= 1
        # within the centre-crop area, up to the one-pixel overrun scaled to the original
        assert x + d <= ox + s + math.ceil(s / 224) and y + d <= oy + s + math.ceil(s / 224)
        # the far edge loses at most one pixel to the separate truncation of start and side
        assert x + d >= ox + math.floor((gx + gd) * s / 224) - 1 and y + d >= oy + math.floor((gy + gd) * s / 224) - 1


def test_constant_map_falls_back_to_the_whole_view_and_batch_of_one_works():
    boxes, fallback = crop_boxes(torch.full((1, 14, 14), 1 / 196), torch.tensor([[160, 128]]), 224, 0.1)
    assert fallback.tolist() == [True]
    assert boxes.tolist() == [[0, 16, 128]]  # the centre square of a 128 x 160 portrait image


def test_crop_resize_matches_pil_crop_and_bilinear_resize():
    rng = np.random.default_rng(0)
    images, boxes, expected = [], [], []
    for w, h in [(128, 160), (160, 128), (333, 500), (40, 30)]:
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pil = Image.fromarray(arr)
        for x, y, d in [(0, 0, min(w, h)), (5, 17, 64), (w - 30, h - 20, 41), (-3, -3, 20), (10, 10, 200),
                        (2, 3, 1), (0, 0, 32)]:
            images.append(torch.from_numpy(arr).permute(2, 0, 1))
            boxes.append((x, y, d))
            # PIL fills the part of the box outside the image with black
            expected.append(np.asarray(pil.crop((x, y, x + d, y + d)).resize((32, 32), Image.BILINEAR)))
    originals, sizes = pad_originals(images)
    out = crop_resize(originals, sizes, torch.tensor(boxes), 32, [0.0] * 3, [1 / 255] * 3)
    got = out.permute(0, 2, 3, 1).round().numpy().astype(np.int32)
    diff = np.abs(got - np.stack(expected).astype(np.int32))
    assert diff.max() <= 1 and diff.mean() < 0.3  # PIL rounds to 8 bits between its two passes


def test_crop_resize_normalises_like_the_global_transform():
    img = torch.full((1, 3, 20, 30), 255, dtype=torch.uint8)
    out = crop_resize(img, torch.tensor([[20, 30]]), torch.tensor([[0, 0, 20]]), 8, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    assert out.shape == (1, 3, 8, 8) and torch.allclose(out, torch.ones_like(out))
