"""FashionGen-style texts for a synthetic product: description (every visual attribute named, plus
distractor sentences without visual content), name, composition, brand and the other metadata."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .catalogue import DEPARTMENT, PRICE_RANGE, WOMENSWEAR, Subcategory
from .garment import GarmentSpec

PATTERN_ADJ = {"solid": "solid", "stripes": "striped", "dots": "polka-dot", "check": "check"}
SLEEVE_PHRASE = {"sleeveless": "sleeveless", "short": "short sleeve", "long": "long sleeve"}
LENGTH_ADJ = {"short": "mini", "long": "maxi", "full": "full-length", "cropped": "cropped"}
NECK_SENTENCE = {"round": "Crew neck.", "v": "V-neck."}
SHIRT_NECK_SENTENCE = {"round": "Collar buttoned to the top.", "v": "Open v-neck collar."}

# Sentences that carry no visual information (fit, material feel, care, origin, sizing).
DISTRACTORS: tuple[str, ...] = (
    "Relaxed fit.",
    "Slim fit.",
    "Regular fit.",
    "Fits true to size.",
    "Machine wash cold.",
    "Dry clean only.",
    "Hand wash.",
    "Made in Portugal.",
    "Made in Italy.",
    "Made in Canada.",
    "Made in Japan.",
    "Tonal stitching.",
    "Unlined.",
    "Mid-weight.",
    "Brushed interior.",
    "Men's sizing.",
    "Model is 185 cm and wears size M.",
    "Designed in Genève.",
    "Soft crêpe lining.",
)
ACCENTED: tuple[str, ...] = ("Lightweight piqué weave.", "Signature détail label at inner seam.")
BRANDS: tuple[str, ...] = (
    "Maison Rémy",
    "Atelier Noé",
    "Northfield",
    "Kato & Sons",
    "Bellweather",
    "Studio Lune",
    "Ostra",
    "Hallberg",
    "Café Society",
    "Verano",
    "Fjällström",
    "Oakmont",
)
COMPOSITION = {
    "CLOTHING": (
        "100% cotton.",
        "95% cotton, 5% elastane.",
        "100% wool.",
        "70% wool, 30% polyamide.",
        "100% linen.",
        "100% polyester.",
        "100% silk.",
        "80% polyamide, 20% elastane.",
    ),
    "SHOES": (
        "Upper: leather. Sole: rubber.",
        "Upper: textile, leather. Sole: rubber.",
        "Upper: suede. Sole: leather.",
    ),
    "BAGS": ("100% leather.", "100% nylon.", "Canvas, leather trim.", "100% polyurethane."),
    "ACCESSORIES": ("100% wool.", "100% cashmere.", "100% silk.", "100% cotton.", "100% acrylic."),
}


@dataclass(frozen=True)
class ProductText:
    """All per-product string/number fields of a FashionGen row except image, ids and pose."""

    description: str
    name: str
    composition: str
    gender: str
    season: str
    brand: str
    department: str
    msrp: float


def main_sentence(sub: Subcategory, spec: GarmentSpec) -> str:
    """'Long sleeve striped shirt in navy.' style sentence naming sleeve, pattern, length, colour."""
    words = []
    if spec.sleeve is not None:
        words.append(SLEEVE_PHRASE[spec.sleeve])
    words.append(PATTERN_ADJ[spec.pattern])
    if spec.length is not None:
        words.append(LENGTH_ADJ[spec.length])
    words.append(sub.noun)
    text = " ".join(words) + f" in {spec.colour}."
    return text[0].upper() + text[1:]


def attribute_sentences(sub: Subcategory, spec: GarmentSpec) -> list[str]:
    """Sentences for neckline, logo and the subcategory's always-visible construction details."""
    out = list(sub.details)
    if spec.neckline is not None:
        table = SHIRT_NECK_SENTENCE if spec.silhouette == "shirt" else NECK_SENTENCE
        out.insert(0, table[spec.neckline])
    if spec.logo:
        out.append(f"Logo patch at {spec.info.logo_at}.")
    return out


def product_name(sub: Subcategory, spec: GarmentSpec) -> str:
    words = (
        [spec.colour] + ([] if spec.pattern == "solid" else [PATTERN_ADJ[spec.pattern]]) + sub.noun.split()
    )
    return " ".join(w[:1].upper() + w[1:] for w in words)


def make_text(
    sub: Subcategory, spec: GarmentSpec, rng: np.random.Generator, accented: bool = False, br: bool = False
) -> ProductText:
    """Texts of one product; `accented` adds a sentence with 'é', `br` joins one sentence with '<br>'."""
    department = DEPARTMENT[sub.category]
    n_distract = int(rng.integers(1, 4))
    distract = [DISTRACTORS[i] for i in rng.choice(len(DISTRACTORS), size=n_distract, replace=False)]
    if accented:
        distract.append(ACCENTED[int(rng.integers(len(ACCENTED)))])
    tail = attribute_sentences(sub, spec) + distract
    tail = [tail[i] for i in rng.permutation(len(tail))]
    sentences = [main_sentence(sub, spec)] + tail
    if br and len(sentences) > 1:
        cut = int(rng.integers(1, len(sentences)))
        description = " ".join(sentences[:cut]) + "<br>" + " ".join(sentences[cut:])
    else:
        description = " ".join(sentences)
    if sub.category in WOMENSWEAR or sub.name == "blouses":
        gender = "WOMEN"
    else:
        gender = ("MEN", "WOMEN")[int(rng.integers(2))]
    lo, hi = PRICE_RANGE[department]
    return ProductText(
        description=description,
        name=product_name(sub, spec),
        composition=COMPOSITION[department][int(rng.integers(len(COMPOSITION[department])))],
        gender=gender,
        season=("SS", "FW")[int(rng.integers(2))] + str(int(rng.integers(2014, 2019))),
        brand=BRANDS[int(rng.integers(len(BRANDS)))],
        department=department,
        msrp=float(int(rng.integers(lo // 5, hi // 5 + 1)) * 5),
    )
