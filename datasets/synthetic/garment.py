"""Garment description shared by every synthetic writer: colours, patterns, silhouettes, `GarmentSpec`."""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, fields, replace

import numpy as np

# Twelve saturated, well separated colours (two achromatic). Names are the words used in texts.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 25, 35),
    "orange": (250, 125, 0),
    "yellow": (245, 210, 0),
    "green": (35, 155, 55),
    "teal": (0, 145, 150),
    "blue": (35, 95, 230),
    "navy": (25, 35, 110),
    "purple": (125, 45, 170),
    "pink": (240, 95, 170),
    "brown": (120, 70, 30),
    "black": (28, 28, 28),
    "grey": (135, 135, 135),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
PATTERNS: tuple[str, ...] = ("solid", "stripes", "dots", "check")
SLEEVES: tuple[str, ...] = ("sleeveless", "short", "long")
NECKLINES: tuple[str, ...] = ("round", "v")


@dataclass(frozen=True)
class Silhouette:
    """Which optional attributes a silhouette has, their possible values and where a logo sits."""

    domains: tuple[tuple[str, tuple[str, ...]], ...] = ()
    logo_at: str | None = None  # word used in texts ("chest", "hip", ...); None = never a logo

    def domain(self, attribute: str) -> tuple[str, ...] | None:
        return dict(self.domains).get(attribute)


_TOP = (("sleeve", SLEEVES), ("neckline", NECKLINES))
_PANTS = (("length", ("full", "cropped")),)
SILHOUETTES: dict[str, Silhouette] = {
    "top": Silhouette(_TOP, "chest"),
    "shirt": Silhouette((("sleeve", ("short", "long")), ("neckline", NECKLINES)), "chest"),
    "blouse": Silhouette((("sleeve", ("short", "long")), ("neckline", NECKLINES)), None),
    "dress": Silhouette(_TOP + (("length", ("short", "long")),), "chest"),
    "coat": Silhouette((), None),
    "jacket": Silhouette((), "chest"),
    "trousers": Silhouette(_PANTS, None),
    "sweatpants": Silhouette(_PANTS, "hip"),
    "jeans": Silhouette(_PANTS, "hip"),
    "shorts": Silhouette((), "hip"),
    "skirt": Silhouette((("length", ("short", "long")),), None),
    "sneaker_low": Silhouette((), "side"),
    "sneaker_high": Silhouette((), "side"),
    "boot_ankle": Silhouette((), None),
    "boot_tall": Silhouette((), None),
    "tote": Silhouette((), "front"),
    "shoulder_bag": Silhouette((), "front"),
    "backpack": Silhouette((), "front"),
    "travel_bag": Silhouette((), "front"),
    "cap": Silhouette((), "front"),
    "beanie": Silhouette((), "front"),
    "scarf": Silhouette((), None),
    "snood": Silhouette((), None),
    "swimsuit": Silhouette((("neckline", NECKLINES),), None),
    "bikini": Silhouette((), None),
    # ASEN++ test garment: torso rectangle + two sleeves, pattern on the torso only.
    "asen_top": Silhouette((("sleeve", SLEEVES),), None),
}


@dataclass(frozen=True)
class GarmentSpec:
    """Every visual attribute of one garment; rendering it with any pose shows exactly these."""

    silhouette: str
    colour: str
    pattern: str = "solid"
    sleeve: str | None = None
    neckline: str | None = None
    length: str | None = None
    logo: bool = False

    def __post_init__(self) -> None:
        if self.silhouette not in SILHOUETTES:
            raise ValueError(f"unknown silhouette {self.silhouette!r}")
        if self.colour not in PALETTE:
            raise ValueError(f"unknown colour {self.colour!r}")
        if self.pattern not in PATTERNS:
            raise ValueError(f"unknown pattern {self.pattern!r}")
        info = SILHOUETTES[self.silhouette]
        for name in ("sleeve", "neckline", "length"):
            value, domain = getattr(self, name), info.domain(name)
            if (value is None) != (domain is None) or (domain is not None and value not in domain):
                raise ValueError(f"{self.silhouette}: invalid {name} {value!r} (allowed: {domain})")
        if self.logo and info.logo_at is None:
            raise ValueError(f"{self.silhouette} cannot carry a logo")

    @property
    def info(self) -> Silhouette:
        return SILHOUETTES[self.silhouette]

    def key(self) -> tuple:
        """Hashable identity of the visual content (used to keep images of a split distinct)."""
        return tuple(getattr(self, f.name) for f in fields(self))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def attribute_domains(
    silhouette: str, restrict: dict[str, tuple] | None = None, logo: bool = True
) -> dict[str, tuple]:
    """All attributes of a silhouette with their allowed values; `restrict` narrows some of them."""
    info = SILHOUETTES[silhouette]
    domains: dict[str, tuple] = {"colour": COLOURS, "pattern": PATTERNS}
    domains.update(dict(info.domains))
    domains["logo"] = (False, True) if (logo and info.logo_at is not None) else (False,)
    for name, values in (restrict or {}).items():
        if name not in domains or not set(values) <= set(domains[name]):
            raise ValueError(f"{silhouette}: cannot restrict {name} to {values}")
        domains[name] = tuple(values)
    return domains


def sample_spec(
    rng: np.random.Generator,
    silhouette: str,
    restrict: dict[str, tuple] | None = None,
    logo_probability: float = 0.35,
) -> GarmentSpec:
    """Draw every attribute uniformly from its domain (logo with `logo_probability`)."""
    values = {}
    for name, domain in attribute_domains(silhouette, restrict).items():
        if name == "logo":
            values[name] = bool(len(domain) > 1 and rng.random() < logo_probability)
        else:
            values[name] = domain[int(rng.integers(len(domain)))]
    return GarmentSpec(silhouette=silhouette, **values)


def mutable_attributes(spec: GarmentSpec, restrict: dict[str, tuple] | None = None) -> list[str]:
    """Attributes of `spec` that can take another value."""
    domains = attribute_domains(spec.silhouette, restrict)
    return [name for name, domain in domains.items() if len(domain) > 1]


def change_attributes(
    spec: GarmentSpec,
    attributes: list[str],
    rng: np.random.Generator,
    restrict: dict[str, tuple] | None = None,
) -> GarmentSpec:
    """Copy of `spec` where each named attribute takes a different value drawn uniformly."""
    domains = attribute_domains(spec.silhouette, restrict)
    changes = {}
    for name in attributes:
        others = [v for v in domains[name] if v != getattr(spec, name)]
        if not others:
            raise ValueError(f"{spec.silhouette}: attribute {name} has a single value")
        changes[name] = others[int(rng.integers(len(others)))]
    return replace(spec, **changes)


def colour_rgb(name: str, hue_shift_deg: float = 0.0) -> tuple[int, int, int]:
    """Palette colour, optionally rotated in hue by `hue_shift_deg` degrees."""
    r, g, b = PALETTE[name]
    if hue_shift_deg == 0.0:
        return (r, g, b)
    h, s, v = colorsys.rgb_to_hsv(r / 255.0, g / 255.0, b / 255.0)
    r2, g2, b2 = colorsys.hsv_to_rgb((h + hue_shift_deg / 360.0) % 1.0, s, v)
    return (round(r2 * 255), round(g2 * 255), round(b2 * 255))
