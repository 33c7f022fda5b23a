"""Reading image files for the datasets that keep images on disk (FashionIQ, ASEN++, the BLIP variant)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from engine.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def image_files(folder: str | Path) -> list[str]:
    """Every image file under `folder` (by suffix, any depth), as sorted paths relative to it."""
    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_rgb(path: str | Path, source: str | None = None, missing_hint: str | None = None) -> Image.Image:
    """The image at `path` as RGB. A missing file raises FileNotFoundError and an unreadable one DataError,
    both naming the file and `source` (the list, annotation or record that names it); `missing_hint` says
    how to create a missing file."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        where = f" (listed in {source})" if source else ""
        hint = f"; {missing_hint}" if missing_hint else ""
        raise FileNotFoundError(f"image {path}{where} not found{hint}") from None
    except (OSError, UnidentifiedImageError) as exc:
        prefix = f"{source}: " if source else ""
        raise DataError(f"{prefix}cannot read image {path}: {exc}") from None
