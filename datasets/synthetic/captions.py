"""FashionIQ-style relative captions: how the target differs from the reference, target's point of view."""

from __future__ import annotations

import numpy as np

from .garment import SLEEVES, GarmentSpec

CHANGEABLE = ("colour", "pattern", "sleeve", "neckline", "length", "logo")

PATTERN_PHRASES = {
    "solid": ("is solid", "is plain", "has no pattern"),
    "stripes": ("has stripes", "is striped", "has horizontal stripes"),
    "dots": ("has polka dots", "is dotted", "has dots"),
    "check": ("is checked", "has a check pattern", "has a checkered print"),
}
PATTERN_NOUN = {"solid": "a plain fabric", "stripes": "stripes", "dots": "dots", "check": "checks"}
SLEEVE_PHRASES = {
    "sleeveless": ("is sleeveless", "has no sleeves"),
    "short": ("has short sleeves", "is short sleeved"),
    "long": ("has long sleeves", "is long sleeved"),
}
NECK_PHRASES = {
    "round": ("has a round neckline", "has a crew neck"),
    "v": ("has a v-neck", "has a v neckline"),
}
SHIRT_NECK_PHRASES = {
    "round": ("is buttoned up to the collar", "has a closed collar"),
    "v": ("has an open collar", "has an open v collar"),
}
LENGTH_PHRASES = {
    "short": ("is shorter", "is a short dress", "is above the knee"),
    "long": ("is longer", "is a long dress", "is floor length"),
}
LOGO_PHRASES = {True: ("has a logo", "has a logo on the chest"), False: ("has no logo", "is without a logo")}

def changed_attributes(reference: GarmentSpec, target: GarmentSpec) -> list[str]:
    return [a for a in CHANGEABLE if getattr(reference, a) != getattr(target, a)]


def change_phrases(attribute: str, reference: GarmentSpec, target: GarmentSpec) -> list[str]:
    """Alternative phrasings of one attribute change."""
    r, t = getattr(reference, attribute), getattr(target, attribute)
    if attribute == "colour":
        return [f"is {t} instead of {r}", f"is {t}", f"is {t} and not {r}", f"has a {t} colour", f"is in {t}"]
    if attribute == "pattern":
        return list(PATTERN_PHRASES[t]) + [f"{PATTERN_PHRASES[t][0]} instead of {PATTERN_NOUN[r]}"]
    if attribute == "sleeve":
        relative = "has longer sleeves" if SLEEVES.index(t) > SLEEVES.index(r) else "has shorter sleeves"
        return list(SLEEVE_PHRASES[t]) + [relative]
    if attribute == "neckline":
        table = SHIRT_NECK_PHRASES if target.silhouette == "shirt" else NECK_PHRASES
        return list(table[t])
    if attribute == "length":
        return list(LENGTH_PHRASES[t])
    if attribute == "logo":
        return list(LOGO_PHRASES[t])
    raise ValueError(f"unknown attribute {attribute!r}")


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def make_captions(reference: GarmentSpec, target: GarmentSpec, rng: np.random.Generator) -> list[str]:
    """Two captions: one per change for two changes; for one change a paraphrase or a true extra remark."""
    changed = changed_attributes(reference, target)
    if not 1 <= len(changed) <= 2:
        raise ValueError(f"expected one or two changed attributes, got {changed}")
    if len(changed) == 2:
        first, second = (changed[i] for i in rng.permutation(2))
        return [
            _pick(rng, change_phrases(first, reference, target)),
            _pick(rng, change_phrases(second, reference, target)),
        ]
    options = change_phrases(changed[0], reference, target)
    i, j = rng.choice(len(options), size=2, replace=False)
    if changed[0] != "colour" and rng.random() < 0.3:
        return [options[i], f"is also {target.colour}"]
    return [options[i], options[j]]
