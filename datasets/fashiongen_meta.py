"""FashionGen label tables: the 48 categories, 121 subcategories and the category -> sign map."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from engine.errors import DataError

DATA_DIR = Path(__file__).resolve().parent / "data"
CATEGORY_SIGN_FILENAME = "categorys_to_sign.txt"  # spelling as in the published code

# Sign tokens in vocabulary order; they occupy ids 1..9 (the former [unused0]..[unused8]).
SIGN_TOKENS: tuple[str, ...] = (
    "[tops_sign]",
    "[pants_sign]",
    "[skirts_sign]",
    "[coats_sign]",
    "[dresses_sign]",
    "[shoes_sign]",
    "[bags_sign]",
    "[accessories_sign]",
    "[others_sign]",
)
SIGN_TOKEN_IDS: dict[str, int] = {tok: i + 1 for i, tok in enumerate(SIGN_TOKENS)}


def normalise_category(value: str) -> str:
    """Key used for every category/subcategory lookup: strip, tabs to spaces, lower case."""
    return value.strip().replace("\t", " ").lower()


def _read_lines(path: Path) -> list[str]:
    return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@cache
def categories() -> tuple[str, ...]:
    """The 48 FashionGen categories (lower case) in the published recognition label order."""
    return tuple(_read_lines(DATA_DIR / "fashiongen_categories.txt"))


@cache
def subcategories() -> tuple[str, ...]:
    """The 121 FashionGen subcategories (lower case) in the published recognition label order."""
    return tuple(_read_lines(DATA_DIR / "fashiongen_subcategories.txt"))


def read_category_sign_file(path: str | Path) -> dict[str, str]:
    """Parse a `category<TAB>sign` file; malformed lines are reported with their line number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"category->sign map not found: {path} "
            f"(create it with: python prepare_dataset.py --data-root {path.parent})"
        )
    table: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise DataError(f"{path}:{lineno}: expected 'category<TAB>sign', got {line!r}")
        category, sign = normalise_category(parts[0]), parts[1].strip()
        if sign not in SIGN_TOKEN_IDS:
            raise DataError(f"{path}:{lineno}: unknown sign {sign!r}; valid signs: {', '.join(SIGN_TOKENS)}")
        table[category] = sign
    return table


@cache
def category_to_sign() -> dict[str, str]:
    """The packaged 48-entry category -> sign table."""
    return read_category_sign_file(DATA_DIR / CATEGORY_SIGN_FILENAME)


def sign_for_category(category: str, table: dict[str, str] | None = None) -> str:
    """Sign token for a raw `input_category` value; an unknown category is an error."""
    table = category_to_sign() if table is None else table
    key = normalise_category(category)
    try:
        return table[key]
    except KeyError:
        raise DataError(f"category {category!r} has no sign in the category->sign map") from None
