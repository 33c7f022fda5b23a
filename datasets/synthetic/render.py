"""Garment renderer: `GarmentSpec` + `Pose` -> RGB uint8 array on a light, slightly noisy background.

Drawing happens at `supersample` times the output size with PIL (polygons into a label image),
the pattern is computed with NumPy in the garment's own frame (so it follows rotation, scale and
mirroring), then the image is box-downsampled and pixel noise is added at output resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .garment import COLOURS, PALETTE, PATTERNS, GarmentSpec, colour_rgb, sample_spec
from .shapes import Prim, build

# Pattern geometry in canonical units (garment widths are 0.7-1.8 units, so every period is
# >= 10 % of the garment width, and >= 4 output pixels at 64 px).
STRIPE_PERIOD, STRIPE_DUTY = 0.26, 0.42
DOT_SPACING, DOT_RADIUS = 0.26, 0.075
CHECK_PERIOD = 0.24
# Garment half-extent (1 canonical unit) as a fraction of the canvas' shorter side at scale 1.
UNIT_FRACTION = 0.46

_FIXED = {
    "white": (245, 245, 245),
    "black": (30, 30, 30),
    "grey": (150, 150, 150),
    "sole": (236, 234, 228),
    "stitch": (226, 160, 60),
    "gold": (205, 168, 60),
}
# Label ids of the fill pass: 0 background, 1 patterned body, 2 plain body, 3.. fixed colours.
_FILL_LABELS = ("background", "body", "plain", "dark", "light", "contrast", *_FIXED)


@dataclass(frozen=True)
class Pose:
    """Placement of the garment: shift (fraction of the shorter side), scale, rotation (deg), mirror."""

    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0
    angle: float = 0.0
    mirror: bool = False


def random_pose(
    rng: np.random.Generator,
    shift: float = 0.05,
    scale: float = 0.08,
    angle: float = 10.0,
    mirror: bool = False,
) -> Pose:
    """Pose with shift in [-shift, shift], scale in [1-scale, 1+scale], angle in [-angle, angle] degrees."""
    dx, dy = rng.uniform(-shift, shift, size=2)
    return Pose(
        float(dx),
        float(dy),
        float(rng.uniform(1 - scale, 1 + scale)),
        float(rng.uniform(-angle, angle)),
        mirror,
    )


def garment_colours(primary: tuple[int, int, int]) -> dict[str, tuple[int, int, int]]:
    """Named colours used by one garment: shades of the primary colour plus fixed colours."""
    p = np.asarray(primary, dtype=np.float64)
    luminance = 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]
    dark = p * 0.55 if luminance > 60 else p + 0.35 * (255 - p)
    contrast = (242, 242, 238) if luminance < 150 else (38, 38, 42)
    out = {
        "body": primary,
        "plain": primary,
        "dark": tuple(int(x) for x in dark),
        "light": tuple(int(x) for x in p + 0.45 * (255 - p)),
        "contrast": contrast,
    }
    out.update(_FIXED)
    return out


def _secondary(pattern: str, colours: dict) -> np.ndarray:
    body, contrast = np.asarray(colours["body"], float), np.asarray(colours["contrast"], float)
    return (body + contrast) / 2 if pattern == "check" else contrast


def pattern_mask(pattern: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """True where the secondary colour of `pattern` shows, at canonical coordinates (u, v)."""
    if pattern == "solid":
        return np.zeros(u.shape, dtype=bool)
    if pattern == "stripes":
        return np.mod(v / STRIPE_PERIOD, 1.0) < STRIPE_DUTY
    if pattern == "check":
        return (np.floor(u / CHECK_PERIOD) + np.floor(v / CHECK_PERIOD)).astype(np.int64) % 2 == 1
    if pattern == "dots":
        row_h = DOT_SPACING * 0.866
        j = np.round(v / row_h)
        us = u - np.mod(j, 2) * DOT_SPACING / 2
        du = us - np.round(us / DOT_SPACING) * DOT_SPACING
        dv = v - j * row_h
        return du * du + dv * dv < DOT_RADIUS * DOT_RADIUS
    raise ValueError(f"unknown pattern {pattern!r}")


def _affine(pose: Pose, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Matrix M and offset t with pixel = M @ (u, v) + t."""
    k = UNIT_FRACTION * min(width, height) * pose.scale
    a = np.radians(pose.angle)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    flip = np.diag([-1.0 if pose.mirror else 1.0, 1.0])
    m = k * rot @ flip
    t = np.array([width / 2 + pose.dx * min(width, height), height / 2 + pose.dy * min(width, height)])
    return m, t


def _to_px(pts: np.ndarray, m: np.ndarray, t: np.ndarray) -> list[tuple[float, float]]:
    return [tuple(p) for p in (pts @ m.T + t).tolist()]


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        nxt = out.copy()
        nxt[1:] &= out[:-1]
        nxt[:-1] &= out[1:]
        nxt[:, 1:] &= out[:, :-1]
        nxt[:, :-1] &= out[:, 1:]
        out = nxt
    return out


@lru_cache(maxsize=1)
def _fill_label_index() -> dict[str, int]:
    return {name: i for i, name in enumerate(_FILL_LABELS)}


def background(
    rng: np.random.Generator | None, width: int, height: int
) -> tuple[tuple[int, int, int], np.ndarray | None]:
    """Light background colour and per-pixel noise (None without an rng)."""
    if rng is None:
        return (240, 240, 238), None
    level = rng.uniform(218.0, 248.0)
    tint = rng.uniform(-6.0, 6.0, size=3)
    colour = tuple(int(np.clip(level + x, 0, 255)) for x in tint)
    noise = rng.normal(0.0, 3.0, size=(height, width, 3)).astype(np.float32)
    return colour, noise


def render(
    spec: GarmentSpec,
    pose: Pose = Pose(),
    size: int | tuple[int, int] = 64,
    rng: np.random.Generator | None = None,
    hue_shift: float = 0.0,
    supersample: int | None = None,
) -> np.ndarray:
    """Render `spec` in `pose` on a (width, height) canvas; `rng` draws background tone and noise."""
    width, height = (size, size) if isinstance(size, int) else size
    ss = supersample or (2 if min(width, height) < 200 else 1)
    wi, hi = width * ss, height * ss
    m, t = _affine(pose, wi, hi)
    prims = build(spec)
    colours = garment_colours(colour_rgb(spec.colour, hue_shift))
    bg_colour, noise = background(rng, width, height)
    labels = _fill_label_index()

    label_img = Image.new("L", (wi, hi), 0)
    draw = ImageDraw.Draw(label_img)
    for prim in prims:
        if prim.kind == "fill":
            draw.polygon(_to_px(prim.pts, m, t), fill=labels[prim.colour])
        elif prim.kind == "cut":
            draw.polygon(_to_px(prim.pts, m, t), fill=0)
    lab = np.asarray(label_img)

    table = np.array([bg_colour] + [colours[name] for name in _FILL_LABELS[1:]], dtype=np.uint8)
    img = table[lab]
    if spec.pattern != "solid":
        ys, xs = np.nonzero(lab == labels["body"])
        px = np.stack([xs + 0.5, ys + 0.5], axis=1) - t
        uv = px @ np.linalg.inv(m).T
        hit = pattern_mask(spec.pattern, uv[:, 0], uv[:, 1])
        img[ys[hit], xs[hit]] = _secondary(spec.pattern, colours).astype(np.uint8)
    mask = lab > 0
    edge = mask & ~_erode(mask, max(1, round(ss * min(width, height) / 64)))
    img[edge] = colours["dark"]

    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    scale = float(np.sqrt(abs(np.linalg.det(m))))
    for prim in prims:
        if prim.kind == "poly":
            draw.polygon(_to_px(prim.pts, m, t), fill=colours[prim.colour])
        elif prim.kind == "line":
            w = max(1, round(prim.width * scale))
            draw.line(_to_px(prim.pts, m, t), fill=colours[prim.colour], width=w, joint="curve")
    if ss > 1:
        pil = pil.reduce(ss)
    out = np.asarray(pil)
    if noise is not None:
        out = np.clip(out.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out)


__all__ = [
    "COLOURS",
    "PALETTE",
    "PATTERNS",
    "GarmentSpec",
    "Pose",
    "Prim",
    "garment_colours",
    "pattern_mask",
    "random_pose",
    "render",
    "sample_spec",
]
