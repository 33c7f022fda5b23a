"""Image transforms: determinism from the passed generator, shapes, normalisation, ops."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    RANDAUG_OPS,
    RandAugment,
    TestTransform,
    TrainTransform,
    apply_op,
    op_magnitude,
    random_resized_crop_box,
)

GREY = 128


def pattern_image(size: int = 48, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def dot_image(size: int, y: int, x: int) -> Image.Image:
    a = np.zeros((size, size, 3), np.uint8)
    a[y, x] = 255
    return Image.fromarray(a)


def brightest(img: Image.Image) -> tuple[int, int]:
    a = np.asarray(img)[..., 0].astype(int)
    a = np.where(a == GREY, 0, a)  # ignore the grey fill
    return tuple(int(v) for v in np.unravel_index(np.argmax(a), a.shape))


def test_train_transform_deterministic_per_generator_and_shape():
    t = TrainTransform(image_res=32)
    img = pattern_image(64)
    a = t(img, np.random.default_rng(5))
    b = t(img, np.random.default_rng(5))
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)
    others = [t(img, np.random.default_rng(s)) for s in range(6, 10)]
    assert all(not torch.equal(a, o) for o in others)


def test_train_transform_uses_no_global_rng_and_needs_a_generator():
    np.random.seed(1)
    torch.manual_seed(1)
    random.seed(1)
    states = (np.random.get_state()[1].copy(), torch.get_rng_state().clone(), random.getstate())
    TrainTransform(32)(pattern_image(40), np.random.default_rng(0))
    assert np.array_equal(np.random.get_state()[1], states[0])
    assert torch.equal(torch.get_rng_state(), states[1]) and random.getstate() == states[2]
    with pytest.raises(ValueError, match="Generator"):
        TrainTransform(32)(pattern_image(40), None)


def test_test_transform_resizes_exactly_and_normalises_with_clip_statistics():
    img = Image.fromarray(np.full((64, 40, 3), (255, 0, 100), np.uint8))
    out = TestTransform(image_res=48)(img)
    assert out.shape == (3, 48, 48) and out.dtype == torch.float32
    expected = [(v / 255 - m) / s for v, m, s in zip((255, 0, 100), CLIP_MEAN, CLIP_STD)]
    assert torch.allclose(out.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-5)
    assert torch.equal(out, TestTransform(48)(img, np.random.default_rng(3)))  # rng ignored
    grey = TestTransform(16)(Image.fromarray(np.zeros((16, 16), np.uint8)))  # L mode -> RGB
    assert grey.shape == (3, 16, 16)


def test_random_resized_crop_box_bounds():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, right, bottom = random_resized_crop_box(64, 48, rng)
        w, h = right - left, bottom - top
        assert 0 <= left < right <= 64 and 0 <= top < bottom <= 48
        assert 0.5 * 64 * 48 * 0.9 <= w * h <= 64 * 48
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1


def test_randaugment_parameters_at_magnitude_7_and_5():
    assert op_magnitude("Brightness", 7) == pytest.approx(1.36)
    assert op_magnitude("Sharpness", 7) == pytest.approx(1.36)
    assert op_magnitude("ShearX", 7) == pytest.approx(0.21)
    assert op_magnitude("TranslateY", 7) == pytest.approx(7.0)
    assert op_magnitude("Rotate", 7) == pytest.approx(21.0)
    assert op_magnitude("Rotate", 5) == pytest.approx(15.0) and op_magnitude("Brightness", 5) == pytest.approx(1.0)
    ra = RandAugment(2, 7)
    seen: dict[str, set[float]] = {}
    counts = []
    for seed in range(800):
        ops = ra.sample(np.random.default_rng(seed))
        counts.append(len(ops))
        for name, p in ops:
            seen.setdefault(name, set()).add(round(p, 6))
    assert set(seen) == set(RANDAUG_OPS)
    assert seen["Rotate"] == {21.0, -21.0}
    assert seen["TranslateX"] == seen["TranslateY"] == {7.0, -7.0}
    assert seen["ShearX"] == seen["ShearY"] == {0.21, -0.21}
    assert seen["Brightness"] == seen["Sharpness"] == {1.36}  # never sign-flipped
    assert max(counts) == 2 and abs(np.mean(counts) - 1.0) < 0.1  # each of 2 ops applied with p = 0.5
    with pytest.raises(ValueError):
        RandAugment(2, 11)


def test_translate_ops_shift_by_seven_pixels_with_grey_fill():
    img = pattern_image(32)
    a = np.asarray(img)
    tx = np.asarray(apply_op(img, "TranslateX", 7.0))
    assert np.array_equal(tx[:, 7:], a[:, :-7]) and (tx[:, :7] == GREY).all()
    ty = np.asarray(apply_op(img, "TranslateY", -7.0))
    assert np.array_equal(ty[:-7], a[7:]) and (ty[-7:] == GREY).all()


def test_rotate_21_degrees_counter_clockwise_about_centre():
    size, r = 41, 14
    out = apply_op(dot_image(size, 20, 20 + r), "Rotate", 21.0)
    y, x = brightest(out)
    cy = cx = (size - 1) / 2
    assert abs(y - (cy - r * math.sin(math.radians(21)))) <= 1
    assert abs(x - (cx + r * math.cos(math.radians(21)))) <= 1
    corner = np.asarray(apply_op(pattern_image(41), "Rotate", -21.0))[0, 0]
    assert (corner == GREY).all()


def test_shear_moves_rows_by_factor_times_y():
    out = apply_op(dot_image(48, 30, 5), "ShearX", 0.21)
    y, x = brightest(out)
    assert y == 30 and abs(x - (5 + 0.21 * 30)) <= 1
    out = apply_op(dot_image(48, 20, 30), "ShearY", -0.21)
    y, x = brightest(out)
    assert x == 30 and abs(y - (20 - 0.21 * 30)) <= 1


def test_brightness_sharpness_autocontrast_equalize():
    flat = Image.fromarray(np.full((8, 8, 3), 100, np.uint8))
    assert (np.asarray(apply_op(flat, "Brightness", 1.36)) == 136).all()
    assert (np.asarray(apply_op(Image.fromarray(np.full((4, 4, 3), 200, np.uint8)), "Brightness", 1.36)) == 255).all()
    assert (np.asarray(apply_op(flat, "Sharpness", 1.36)) == 100).all()  # flat image: nothing to sharpen
    spot = np.full((5, 5, 3), 100, np.uint8)
    spot[2, 2] = 200
    sharp = np.asarray(apply_op(Image.fromarray(spot), "Sharpness", 1.36)).astype(int)
    assert sharp[2, 2, 0] > 200 and sharp[1, 1, 0] < 100 and sharp[0, 0, 0] == 100  # border kept
    low = np.zeros((4, 4, 3), np.uint8)
    low[:2], low[2:] = 51, 102  # scale 255 / 51 = 5 exactly (the op truncates like ALBEF's table)
    stretched = np.asarray(apply_op(Image.fromarray(low), "AutoContrast", 0.0))
    assert stretched.min() == 0 and stretched.max() == 255
    narrow = np.random.default_rng(0).integers(100, 120, (32, 32, 3), dtype=np.uint8)
    eq = np.asarray(apply_op(Image.fromarray(narrow), "Equalize", 0.0))
    assert eq.min() < 20 and eq.max() > 220  # narrow histogram spread over the range
    order = np.argsort(narrow[..., 0], axis=None, kind="stable")
    assert (np.diff(eq[..., 0].reshape(-1)[order].astype(int)) >= 0).all()  # monotone mapping
    assert apply_op(flat, "Identity", 0.0) is flat
