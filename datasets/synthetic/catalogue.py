"""Synthetic FashionGen catalogue: 14 real categories (all nine signs), two real subcategories each."""

from __future__ import annotations

from dataclasses import dataclass, field

from datasets.fashiongen_meta import categories, category_to_sign, subcategories


@dataclass(frozen=True)
class Subcategory:
    """One subcategory: its silhouette, attribute restrictions and the words used in texts."""

    name: str  # lower case, from the real 121-name list
    category: str  # lower case, from the real 48-name list
    silhouette: str
    noun: str
    details: tuple[str, ...] = ()  # sentences naming always-visible construction details
    restrict: dict = field(default_factory=dict)


def _subs(category: str, *items: tuple) -> list[Subcategory]:
    out = []
    for name, silhouette, noun, details, *rest in items:
        out.append(Subcategory(name, category, silhouette, noun, tuple(details), rest[0] if rest else {}))
    return out


CATALOGUE: tuple[Subcategory, ...] = tuple(
    _subs(
        "tops",
        ("t-shirts", "top", "t-shirt", ["Rib knit neckline."], {"sleeve": ("short", "long")}),
        ("tank tops", "top", "tank top", ["Scoop armholes."], {"sleeve": ("sleeveless",)}),
    )
    + _subs(
        "shirts",
        ("shirts", "shirt", "shirt", ["Spread collar.", "Button closure at front."]),
        ("blouses", "blouse", "blouse", ["Flared hem.", "Button closure at neck."]),
    )
    + _subs(
        "pants",
        ("trousers", "trousers", "trousers", ["Pressed crease at legs.", "Belt loops at waistband."]),
        ("sweatpants", "sweatpants", "sweatpants", ["Drawstring at waist.", "Rib knit cuffs."]),
    )
    + _subs(
        "jeans",
        ("jeans", "jeans", "jeans", ["Five-pocket styling.", "Contrast stitching in tan."]),
        ("shorts", "shorts", "denim shorts", ["Five-pocket styling.", "Contrast stitching in tan."]),
    )
    + _subs(
        "skirts",
        ("short skirts", "skirt", "skirt", ["Pleats throughout.", "Wide waistband."], {"length": ("short",)}),
        ("long skirts", "skirt", "skirt", ["Pleats throughout.", "Wide waistband."], {"length": ("long",)}),
    )
    + _subs(
        "dresses",
        ("short dresses", "dress", "dress", ["Seam at waist.", "Flared skirt."], {"length": ("short",)}),
        ("long dresses", "dress", "dress", ["Seam at waist.", "Flared skirt."], {"length": ("long",)}),
    )
    + _subs(
        "jackets & coats",
        ("coats", "coat", "coat", ["Long sleeves.", "Notched lapel.", "Double-breasted button closure."]),
        (
            "jackets",
            "jacket",
            "jacket",
            ["Long sleeves.", "Zip closure at front.", "Rib knit hem and collar."],
        ),
    )
    + _subs(
        "sneakers",
        (
            "low top sneakers",
            "sneaker_low",
            "low-top sneakers",
            ["Lace-up closure.", "Rubber sole in white."],
        ),
        (
            "high top sneakers",
            "sneaker_high",
            "high-top sneakers",
            ["Lace-up closure.", "Rubber sole in white."],
        ),
    )
    + _subs(
        "boots",
        ("ankle boots", "boot_ankle", "ankle boots", ["Stacked heel in black.", "Pull tab at collar."]),
        ("tall boots", "boot_tall", "tall boots", ["Stacked heel in black.", "Knee-high shaft."]),
    )
    + _subs(
        "tote bags",
        ("tote bags", "tote", "tote", ["Twin rolled carry handles.", "Open top."]),
        ("shoulder bags", "shoulder_bag", "shoulder bag", ["Adjustable shoulder strap.", "Foldover flap."]),
    )
    + _subs(
        "backpacks",
        ("backpacks", "backpack", "backpack", ["Carry handle at top.", "Zip pocket at front."]),
        ("travel bags", "travel_bag", "duffle bag", ["Twin carry handles.", "Zip closure at top."]),
    )
    + _subs(
        "hats",
        ("caps", "cap", "cap", ["Curved brim.", "Button at crown."]),
        ("beanies", "beanie", "beanie", ["Rib knit fold-over cuff.", "Pompom at crown."]),
    )
    + _subs(
        "scarves",
        ("scarves", "scarf", "scarf", ["Fringed edges."]),
        ("silks & cashmeres", "snood", "snood", ["Loop construction."]),
    )
    + _subs(
        "swimwear",
        ("swimsuits", "swimsuit", "one-piece swimsuit", ["Scoop back."]),
        ("bikinis", "bikini", "bikini", ["Triangle cups.", "String ties."]),
    )
)

# The subcategory kept deliberately small in validation (exercises the sampled protocol's top-up).
SMALL_SUBCATEGORY = "bikinis"

DEPARTMENT = {
    "tops": "CLOTHING",
    "shirts": "CLOTHING",
    "pants": "CLOTHING",
    "jeans": "CLOTHING",
    "skirts": "CLOTHING",
    "dresses": "CLOTHING",
    "jackets & coats": "CLOTHING",
    "swimwear": "CLOTHING",
    "sneakers": "SHOES",
    "boots": "SHOES",
    "tote bags": "BAGS",
    "backpacks": "BAGS",
    "hats": "ACCESSORIES",
    "scarves": "ACCESSORIES",
}
WOMENSWEAR = {"skirts", "dresses", "swimwear"}
PRICE_RANGE = {"CLOTHING": (60, 900), "SHOES": (150, 800), "BAGS": (200, 2400), "ACCESSORIES": (40, 450)}


def check_catalogue() -> None:
    """Every name is a real FashionGen category/subcategory and all nine signs are covered."""
    real_cats, real_subs = set(categories()), set(subcategories())
    for sub in CATALOGUE:
        if sub.category not in real_cats:
            raise ValueError(f"category {sub.category!r} is not a FashionGen category")
        if sub.name not in real_subs:
            raise ValueError(f"subcategory {sub.name!r} is not a FashionGen subcategory")
    signs = {category_to_sign()[sub.category] for sub in CATALOGUE}
    if len(signs) != 9:
        raise ValueError(f"catalogue covers {len(signs)} signs, expected 9")
    if SMALL_SUBCATEGORY not in {s.name for s in CATALOGUE}:
        raise ValueError(f"small subcategory {SMALL_SUBCATEGORY!r} not in the catalogue")
