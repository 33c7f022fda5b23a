"""Silhouette geometry: turns a `GarmentSpec` into drawing primitives in a canonical frame.

Canonical frame: u to the right, v downwards, the garment roughly inside [-1, 1]^2 and
centred on the origin (the body's bounding box is re-centred after construction).
Primitive kinds:
  * ``fill``  — part of the garment; colour ``body`` (primary colour with the pattern),
    ``plain`` (primary colour, no pattern) or a fixed colour name; all fills form the mask;
  * ``cut``   — removes garment pixels (neck openings, the hole of a ring);
  * ``poly`` / ``line`` — details drawn on top (seams, buttons, logo), never patterned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .garment import GarmentSpec


@dataclass(frozen=True)
class Prim:
    kind: str  # "fill" | "cut" | "poly" | "line"
    colour: str
    pts: np.ndarray  # (k, 2) canonical points
    width: float = 0.0  # line width in canonical units


def _p(kind: str, colour: str, pts, width: float = 0.0) -> Prim:
    return Prim(kind, colour, np.asarray(pts, dtype=np.float64), width)


def ellipse_pts(cx: float, cy: float, rx: float, ry: float, a0: float = 0.0, a1: float = 360.0, n: int = 24):
    t = np.radians(np.linspace(a0, a1, n, endpoint=(a1 - a0) < 360.0))
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _mirror(pts) -> np.ndarray:
    pts = np.asarray(pts, dtype=np.float64).copy()
    pts[:, 0] *= -1
    return pts


def _sleeve(shoulder, armpit, direction, length: float) -> np.ndarray:
    d = np.asarray(direction, dtype=np.float64)
    d = d / np.linalg.norm(d)
    s, a = np.asarray(shoulder, float), np.asarray(armpit, float)
    return np.stack([s, s + length * d, a + length * d * 0.93, a])


def _logo(cx: float, cy: float, size: float = 0.15) -> list[Prim]:
    h = size / 2
    return [
        _p("poly", "white", [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]),
        _p("poly", "black", ellipse_pts(cx, cy, h * 0.5, h * 0.5, n=12)),
    ]


def _buttons(us, vs, r: float = 0.035, colour: str = "contrast") -> list[Prim]:
    return [_p("poly", colour, ellipse_pts(u, v, r, r, n=10)) for u in us for v in vs]


# ----------------------------------------------------------------------------------- upper body


def _torso_top(
    spec: GarmentSpec,
    hem: float = 0.72,
    w: float = 0.36,
    flare: float = 0.02,
    sleeve_dir=(-0.8, 0.6),
    sleeve_len: dict | None = None,
    neck_w: float = 0.15,
) -> list[Prim]:
    sh, neck = -0.62, -0.72
    sleeve = spec.sleeve or "long"
    if sleeve == "sleeveless":
        torso = [
            (-neck_w, neck),
            (-w + 0.12, neck - 0.02),
            (-w + 0.02, sh + 0.32),
            (-w - flare, hem),
            (w + flare, hem),
            (w - 0.02, sh + 0.32),
            (w - 0.12, neck - 0.02),
            (neck_w, neck),
        ]
    else:
        torso = [(-neck_w, neck), (-w, sh), (-w - flare, hem), (w + flare, hem), (w, sh), (neck_w, neck)]
    prims = [_p("fill", "body", torso)]
    lengths = sleeve_len or {"short": 0.3, "long": 0.74}
    if sleeve != "sleeveless":
        left = _sleeve((-w, sh), (-w, sh + 0.3), sleeve_dir, lengths[sleeve])
        prims += [_p("fill", "body", left), _p("fill", "body", _mirror(left))]
    return prims


def _neck_cut(spec: GarmentSpec, neck: float = -0.72, neck_w: float = 0.15) -> list[Prim]:
    if spec.neckline == "v":
        return [_p("cut", "", [(-neck_w, neck - 0.06), (neck_w, neck - 0.06), (0.0, neck + 0.32)])]
    return [_p("cut", "", ellipse_pts(0.0, neck, neck_w, 0.13))]


def _top(spec: GarmentSpec) -> list[Prim]:
    prims = _torso_top(spec) + _neck_cut(spec)
    prims.append(_p("line", "dark", [(-0.37, 0.64), (0.37, 0.64)], 0.03))  # hem stitching
    return prims


def _shirt(spec: GarmentSpec) -> list[Prim]:
    prims = _torso_top(spec, hem=0.76) + _neck_cut(spec)
    v_open = spec.neckline == "v"
    tip = 0.3 if v_open else 0.14
    for sgn in (-1, 1):
        collar = [
            (sgn * 0.17, -0.76),
            (sgn * (0.02 if not v_open else 0.06), -0.72 + tip),
            (sgn * 0.22, -0.56 + (0.1 if v_open else 0.0)),
        ]
        prims += [_p("poly", "light", collar), _p("line", "dark", collar + [collar[0]], 0.02)]
    top = -0.4 if v_open else -0.58
    prims.append(_p("line", "dark", [(0.0, top), (0.0, 0.76)], 0.025))
    prims += _buttons([0.05], np.linspace(top + 0.08, 0.62, 5))
    return prims


def _blouse(spec: GarmentSpec) -> list[Prim]:
    prims = _torso_top(spec, hem=0.62, w=0.32, flare=0.2, sleeve_len={"short": 0.28, "long": 0.7})
    prims[0] = _p(
        "fill",
        "body",
        np.concatenate([prims[0].pts[:3], ellipse_pts(0.0, 0.62, 0.52, 0.14, 180, 0, 12), prims[0].pts[4:]]),
    )
    prims += _neck_cut(spec, neck_w=0.13)
    prims += _buttons([0.0], [-0.5, -0.4, -0.3], r=0.028)
    return prims


def _coat(spec: GarmentSpec) -> list[Prim]:
    prims = _torso_top(spec, hem=0.92, w=0.38, flare=0.06, sleeve_dir=(-0.55, 0.85), sleeve_len={"long": 0.9})
    prims.append(_p("cut", "", [(-0.15, -0.78), (0.15, -0.78), (0.0, -0.35)]))
    for sgn in (-1, 1):
        lapel = [(sgn * 0.15, -0.72), (sgn * 0.28, -0.5), (sgn * 0.02, -0.3)]
        prims += [_p("poly", "light", lapel), _p("line", "dark", lapel + [lapel[0]], 0.02)]
    prims.append(_p("line", "dark", [(0.0, -0.3), (0.0, 0.92)], 0.025))
    prims += _buttons([-0.12, 0.12], [-0.12, 0.14, 0.4], r=0.04)
    return prims


def _jacket(spec: GarmentSpec) -> list[Prim]:
    prims = _torso_top(spec, hem=0.4, w=0.38, sleeve_dir=(-0.6, 0.8), sleeve_len={"long": 0.8})
    prims.append(_p("fill", "dark", [(-0.39, 0.28), (0.39, 0.28), (0.39, 0.42), (-0.39, 0.42)]))  # rib hem
    prims.append(
        _p("fill", "dark", [(-0.17, -0.78), (0.17, -0.78), (0.17, -0.66), (-0.17, -0.66)])
    )  # collar band
    prims.append(_p("line", "grey", [(0.0, -0.66), (0.0, 0.42)], 0.035))  # zip
    return prims


def _dress(spec: GarmentSpec) -> list[Prim]:
    sh, neck, waist = -0.72, -0.8, -0.18
    hem, half = (0.3, 0.48) if spec.length == "short" else (0.92, 0.62)
    bodice = [(-0.13, neck), (-0.27, sh), (-0.22, waist), (0.22, waist), (0.27, sh), (0.13, neck)]
    prims = [
        _p("fill", "body", bodice),
        _p("fill", "body", [(-0.22, waist), (-half, hem), (half, hem), (0.22, waist)]),
    ]
    if spec.sleeve != "sleeveless":
        length = {"short": 0.24, "long": 0.66}[spec.sleeve]
        left = _sleeve((-0.27, sh), (-0.25, sh + 0.24), (-0.55, 0.85), length)
        prims += [_p("fill", "body", left), _p("fill", "body", _mirror(left))]
    prims += _neck_cut(spec, neck=neck, neck_w=0.12)
    prims.append(_p("line", "dark", [(-0.22, waist), (0.22, waist)], 0.04))
    return prims


def _swimsuit(spec: GarmentSpec) -> list[Prim]:
    body = [
        (-0.3, -0.82),
        (-0.2, -0.82),
        (-0.14, -0.55),
        (0.14, -0.55),
        (0.2, -0.82),
        (0.3, -0.82),
        (0.36, -0.3),
        (0.32, 0.2),
        (0.46, 0.55),
        (0.12, 0.74),
        (-0.12, 0.74),
        (-0.46, 0.55),
        (-0.32, 0.2),
        (-0.36, -0.3),
    ]
    prims = [_p("fill", "body", body)]
    if spec.neckline == "v":
        prims.append(_p("cut", "", [(-0.15, -0.56), (0.15, -0.56), (0.0, -0.2)]))
    else:
        prims.append(_p("cut", "", ellipse_pts(0.0, -0.56, 0.15, 0.14)))
    return prims


def _bikini(spec: GarmentSpec) -> list[Prim]:
    left = [(-0.5, -0.18), (-0.06, -0.18), (-0.28, -0.66)]
    bottom = [(-0.46, 0.22), (0.46, 0.22), (0.0, 0.72)]
    return [
        _p("fill", "body", left),
        _p("fill", "body", _mirror(left)),
        _p("fill", "body", bottom),
        _p("line", "dark", [(-0.06, -0.2), (0.06, -0.2)], 0.03),
        _p("line", "dark", [(-0.28, -0.66), (-0.2, -0.92)], 0.025),
        _p("line", "dark", [(0.28, -0.66), (0.2, -0.92)], 0.025),
        _p("line", "dark", [(-0.46, 0.22), (-0.62, 0.2)], 0.025),
        _p("line", "dark", [(0.46, 0.22), (0.62, 0.2)], 0.025),
    ]


def _asen_top(spec: GarmentSpec) -> list[Prim]:
    w, sh, hem = 0.42, -0.66, 0.8
    prims = [_p("fill", "body", [(-w, sh), (w, sh), (w, hem), (-w, hem)])]
    if spec.sleeve != "sleeveless":
        length = {"short": 0.42, "long": 0.98}[spec.sleeve]  # elbow vs wrist: lengths differ by > 25 %
        left = _sleeve((-w, sh), (-w, sh + 0.34), (-0.42, 1.0), length)
        prims += [_p("fill", "plain", left), _p("fill", "plain", _mirror(left))]
    prims.append(_p("cut", "", ellipse_pts(0.0, sh, 0.16, 0.12)))
    return prims


# ----------------------------------------------------------------------------------- lower body


def _legs(spec: GarmentSpec, hem: float, taper: float = 0.0) -> list[Prim]:
    waist_top, waist_bottom, crotch = -0.88, -0.76, -0.34
    left = [(-0.38, waist_bottom), (-0.42 + taper, hem), (-0.04 - taper * 0.5, hem), (0.0, crotch)]
    return [
        _p(
            "fill",
            "body",
            [(-0.38, waist_top), (0.38, waist_top), (0.38, waist_bottom), (-0.38, waist_bottom)],
        ),
        _p("fill", "body", [(-0.38, waist_bottom), (0.38, waist_bottom), (0.0, crotch)]),
        _p("fill", "body", left),
        _p("fill", "body", _mirror(left)),
        _p("line", "dark", [(-0.38, waist_bottom), (0.38, waist_bottom)], 0.025),
    ]


def _pants_hem(spec: GarmentSpec) -> float:
    return {"full": 0.9, "cropped": 0.38, None: -0.02}[spec.length]


def _trousers(spec: GarmentSpec) -> list[Prim]:
    hem = _pants_hem(spec)
    prims = _legs(spec, hem)
    for sgn in (-1, 1):
        prims.append(_p("line", "light", [(sgn * 0.21, -0.7), (sgn * 0.23, hem - 0.02)], 0.02))
    return prims


def _sweatpants(spec: GarmentSpec) -> list[Prim]:
    hem = _pants_hem(spec)
    prims = _legs(spec, hem, taper=0.08)
    for sgn in (-1, 1):
        cuff = [(sgn * 0.34, hem - 0.1), (sgn * 0.08, hem - 0.1), (sgn * 0.08, hem), (sgn * 0.34, hem)]
        prims.append(_p("fill", "dark", cuff))
    prims += [
        _p("line", "contrast", [(-0.04, -0.8), (-0.08, -0.58)], 0.025),
        _p("line", "contrast", [(0.04, -0.8), (0.08, -0.58)], 0.025),
    ]
    return prims


def _jeans(spec: GarmentSpec) -> list[Prim]:
    hem = _pants_hem(spec)
    prims = _legs(spec, hem)
    for sgn in (-1, 1):
        pocket = ellipse_pts(sgn * 0.38, -0.76, 0.16, 0.16, 45 + 45 * sgn, 135 + 45 * sgn, 8)
        prims.append(_p("line", "stitch", pocket, 0.022))
    prims.append(_p("line", "stitch", [(0.05, -0.76), (0.05, -0.46), (0.0, -0.38)], 0.022))
    prims.append(_p("line", "stitch", [(-0.4, hem - 0.05), (-0.05, hem - 0.05)], 0.02))
    prims.append(_p("line", "stitch", [(0.4, hem - 0.05), (0.05, hem - 0.05)], 0.02))
    return prims


def _skirt(spec: GarmentSpec) -> list[Prim]:
    hem, half = (0.06, 0.5) if spec.length == "short" else (0.86, 0.64)
    prims = [
        _p("fill", "body", [(-0.33, -0.6), (0.33, -0.6), (half, hem), (-half, hem)]),
        _p("fill", "dark", [(-0.33, -0.72), (0.33, -0.72), (0.33, -0.6), (-0.33, -0.6)]),
    ]
    for t in (-0.5, 0.0, 0.5):
        prims.append(_p("line", "dark", [(t * 0.33, -0.6), (t * half, hem)], 0.02))
    return prims


# ----------------------------------------------------------------------------------- shoes


def _sneaker(spec: GarmentSpec) -> list[Prim]:
    high = spec.silhouette == "sneaker_high"
    if high:
        upper = [
            (-0.85, 0.18),
            (-0.85, -0.62),
            (-0.42, -0.62),
            (-0.3, -0.2),
            (0.1, -0.02),
            (0.6, 0.02),
            (0.86, 0.12),
            (0.86, 0.18),
        ]
    else:
        upper = [
            (-0.85, 0.18),
            (-0.85, -0.14),
            (-0.55, -0.24),
            (-0.22, -0.22),
            (0.1, -0.02),
            (0.6, 0.02),
            (0.86, 0.12),
            (0.86, 0.18),
        ]
    prims = [
        _p("fill", "body", upper),
        _p("fill", "sole", [(-0.88, 0.18), (0.9, 0.18), (0.92, 0.34), (-0.88, 0.34)]),
        _p("line", "dark", [(-0.88, 0.26), (0.92, 0.26)], 0.02),
    ]
    for i in range(4 if high else 3):
        u = -0.2 + 0.12 * i
        prims.append(
            _p("line", "contrast", [(u - 0.04, -0.2 + 0.05 * i), (u + 0.06, -0.12 + 0.05 * i)], 0.03)
        )
    return prims


def _boot(spec: GarmentSpec) -> list[Prim]:
    top = -0.5 if spec.silhouette == "boot_ankle" else -0.95
    body = [(-0.7, top), (-0.2, top), (-0.18, -0.1), (0.3, 0.0), (0.78, 0.1), (0.86, 0.28), (-0.72, 0.28)]
    prims = [
        _p("fill", "body", body),
        _p("fill", "black", [(-0.74, 0.28), (0.88, 0.28), (0.88, 0.36), (-0.74, 0.36)]),
        _p("fill", "black", [(-0.74, 0.36), (-0.46, 0.36), (-0.48, 0.5), (-0.72, 0.5)]),
        _p("line", "dark", [(-0.7, top + 0.08), (-0.2, top + 0.08)], 0.03),
    ]
    return prims


# ----------------------------------------------------------------------------------- bags and accessories


def _handle(cx: float, cy: float, rx: float, ry: float, colour: str = "dark", width: float = 0.07) -> Prim:
    return _p("line", colour, ellipse_pts(cx, cy, rx, ry, 180, 360, 14), width)


def _tote(spec: GarmentSpec) -> list[Prim]:
    return [
        _p("fill", "body", [(-0.6, -0.25), (0.6, -0.25), (0.72, 0.8), (-0.72, 0.8)]),
        _handle(-0.02, -0.25, 0.34, 0.55),
        _p("line", "dark", [(-0.6, -0.12), (0.6, -0.12)], 0.02),
    ]


def _shoulder_bag(spec: GarmentSpec) -> list[Prim]:
    return [
        _p("fill", "body", [(-0.6, -0.1), (0.6, -0.1), (0.6, 0.7), (-0.6, 0.7)]),
        _p("line", "dark", [(-0.58, -0.08), (0.0, -0.95), (0.58, -0.08)], 0.05),
        _p("line", "dark", [(-0.6, -0.1), (-0.5, 0.35), (0.5, 0.35), (0.6, -0.1)], 0.025),
        _p("poly", "gold", [(-0.06, 0.3), (0.06, 0.3), (0.06, 0.42), (-0.06, 0.42)]),
    ]


def _backpack(spec: GarmentSpec) -> list[Prim]:
    outline = np.concatenate(
        [ellipse_pts(0.0, -0.35, 0.55, 0.4, 180, 360, 14), [(0.55, 0.85), (-0.55, 0.85)]]
    )
    return [
        _p("fill", "body", outline),
        _p("line", "dark", [(-0.38, 0.3), (0.38, 0.3), (0.38, 0.75), (-0.38, 0.75), (-0.38, 0.3)], 0.03),
        _handle(0.0, -0.74, 0.12, 0.14, width=0.05),
        _p("line", "grey", [(-0.3, 0.38), (0.3, 0.38)], 0.025),
    ]


def _travel_bag(spec: GarmentSpec) -> list[Prim]:
    body = np.concatenate(
        [ellipse_pts(-0.62, 0.2, 0.3, 0.38, 90, 270, 10), ellipse_pts(0.62, 0.2, 0.3, 0.38, -90, 90, 10)]
    )
    return [
        _p("fill", "body", body),
        _handle(-0.25, -0.18, 0.2, 0.38),
        _handle(0.25, -0.18, 0.2, 0.38),
        _p("line", "grey", [(-0.62, -0.08), (0.62, -0.08)], 0.03),
    ]


def _cap(spec: GarmentSpec) -> list[Prim]:
    dome = ellipse_pts(-0.15, 0.2, 0.62, 0.62, 180, 360, 18)
    return [
        _p("fill", "body", dome),
        _p("fill", "dark", [(0.3, 0.1), (0.95, 0.16), (0.95, 0.26), (0.3, 0.24)]),
        _p("fill", "dark", [(-0.78, 0.14), (0.48, 0.14), (0.48, 0.24), (-0.78, 0.24)]),
        _p("poly", "dark", ellipse_pts(-0.15, -0.42, 0.06, 0.05, n=10)),
        _p("line", "dark", [(-0.15, -0.42), (-0.15, 0.14)], 0.02),
    ]


def _beanie(spec: GarmentSpec) -> list[Prim]:
    prims = [
        _p("fill", "body", ellipse_pts(0.0, 0.25, 0.56, 0.82, 180, 360, 18)),
        _p("fill", "body", [(-0.6, 0.2), (0.6, 0.2), (0.6, 0.58), (-0.6, 0.58)]),
        _p("fill", "plain", ellipse_pts(0.0, -0.62, 0.16, 0.16, n=14)),
    ]
    for u in np.linspace(-0.5, 0.5, 6):
        prims.append(_p("line", "dark", [(u, 0.22), (u, 0.56)], 0.02))
    prims.append(_p("line", "dark", [(-0.6, 0.2), (0.6, 0.2)], 0.03))
    return prims


def _scarf(spec: GarmentSpec) -> list[Prim]:
    prims = [
        _p("fill", "body", [(-0.5, -0.9), (0.5, -0.9), (0.5, -0.55), (-0.5, -0.55)]),
        _p("fill", "body", [(-0.5, -0.9), (-0.18, -0.9), (-0.08, 0.72), (-0.4, 0.72)]),
        _p("fill", "body", [(0.18, -0.62), (0.5, -0.62), (0.45, 0.58), (0.13, 0.58)]),
    ]
    for u in np.linspace(-0.38, -0.1, 5):
        prims.append(_p("line", "dark", [(u, 0.72), (u, 0.86)], 0.02))
    for u in np.linspace(0.15, 0.43, 5):
        prims.append(_p("line", "dark", [(u, 0.58), (u, 0.72)], 0.02))
    return prims


def _snood(spec: GarmentSpec) -> list[Prim]:
    return [
        _p("fill", "body", ellipse_pts(0.0, 0.0, 0.8, 0.62, n=32)),
        _p("cut", "", ellipse_pts(0.0, -0.04, 0.46, 0.3, n=28)),
        _p("line", "dark", ellipse_pts(0.0, 0.28, 0.64, 0.22, 10, 170, 12), 0.02),
    ]


# ----------------------------------------------------------------------------------- assembly

BUILDERS: dict[str, Callable[[GarmentSpec], list[Prim]]] = {
    "top": _top,
    "shirt": _shirt,
    "blouse": _blouse,
    "dress": _dress,
    "coat": _coat,
    "jacket": _jacket,
    "trousers": _trousers,
    "sweatpants": _sweatpants,
    "jeans": _jeans,
    "shorts": _jeans,
    "skirt": _skirt,
    "sneaker_low": _sneaker,
    "sneaker_high": _sneaker,
    "boot_ankle": _boot,
    "boot_tall": _boot,
    "tote": _tote,
    "shoulder_bag": _shoulder_bag,
    "backpack": _backpack,
    "travel_bag": _travel_bag,
    "cap": _cap,
    "beanie": _beanie,
    "scarf": _scarf,
    "snood": _snood,
    "swimsuit": _swimsuit,
    "bikini": _bikini,
    "asen_top": _asen_top,
}

LOGO_POSITION: dict[str, tuple[float, float]] = {
    "chest": (0.17, -0.34),
    "hip": (0.22, -0.62),
    "side": (-0.45, -0.02),
    "front": (0.0, 0.45),
}


def build(spec: GarmentSpec) -> list[Prim]:
    """Primitives of `spec`, re-centred so the garment's bounding box is centred on the origin."""
    prims = list(BUILDERS[spec.silhouette](spec))
    if spec.logo:
        u, v = LOGO_POSITION[spec.info.logo_at]
        if spec.silhouette in ("cap", "beanie"):
            v = -0.05 if spec.silhouette == "cap" else 0.39
            u = -0.2 if spec.silhouette == "cap" else 0.0
        prims += _logo(u, v)
    fills = np.concatenate([p.pts for p in prims if p.kind == "fill"])
    centre = (fills.min(axis=0) + fills.max(axis=0)) / 2
    return [Prim(p.kind, p.colour, p.pts - centre, p.width) for p in prims]
