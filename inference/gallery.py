"""One self-contained HTML page of queries and their top results (no model, nothing fetched from the network).

Images are inlined as small base64 JPEG thumbnails, ground-truth results get a green frame and a check mark,
every text is escaped. A small inline script records on `<body>` what the page shows once it has loaded:
`data-queries`, `data-results`, `data-positives`, `data-images` (`<img>` elements) and `data-images-loaded`
(those complete with a decoded width), so that a headless browser can check the page.

    write_gallery_page(path, "title", [Section("text -> image", [Query(Item(text="a red dress"),
                       [Item(image=pil_image, label="row 12", score=0.71, positive=True)], rank=0)])])
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from engine.atomic import write_text

THUMBNAIL_PX = 160  # longest side of an inlined thumbnail
JPEG_QUALITY = 80


@dataclass
class Item:
    """A query or a result: an image (PIL image or file path) and/or a text, a label (its id), a score and
    whether it is a ground-truth result."""

    image: Image.Image | str | Path | None = None
    text: str | None = None
    label: str = ""
    score: float | None = None
    positive: bool = False


@dataclass
class Query:
    """One query with its results in rank order; `rank`: the 0-based rank of its positive (None: unknown)."""

    query: Item
    results: list[Item]
    rank: int | None = None
    note: str = ""  # e.g. "attribute: collar design = 2"


@dataclass
class Section:
    """A titled list of queries (e.g. one retrieval direction or one category)."""

    title: str
    queries: list[Query] = field(default_factory=list)
    description: str = ""


def thumbnail_uri(image: Image.Image | str | Path, size: int = THUMBNAIL_PX) -> str:
    """A `data:image/jpeg;base64,...` URI of the image shrunk to `size` px on its longest side."""
    if not isinstance(image, Image.Image):
        with Image.open(image) as opened:
            image = opened.convert("RGB")
    thumb = image.convert("RGB")
    thumb.thumbnail((size, size))
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ccc; }
.query { display: flex; gap: 1em; align-items: flex-start; margin: 1em 0; padding-bottom: 1em;
         border-bottom: 1px dashed #ddd; }
.qcard { flex: 0 0 200px; background: #f4f6fa; padding: .5em; border-radius: 4px; }
.results { display: flex; flex-wrap: wrap; gap: .5em; }
.card { width: 166px; border: 3px solid #e0e0e0; border-radius: 4px; padding: 2px; font-size: .8em;
        position: relative; background: #fff; }
.card.positive { border-color: #1a7f37; }
.card .check { position: absolute; top: 2px; right: 6px; color: #1a7f37; font-weight: bold; font-size: 1.4em; }
.card img, .qcard img { display: block; max-width: 160px; max-height: 160px; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; max-height: 12em; overflow: auto; }
.meta { color: #555; } .rank { font-weight: bold; }
"""

SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var b = document.body;
  b.dataset.images = imgs.length;
  b.dataset.imagesLoaded = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  b.dataset.queries = document.querySelectorAll(".query").length;
  b.dataset.results = document.querySelectorAll(".card").length;
  b.dataset.positives = document.querySelectorAll(".card.positive").length;
  b.dataset.ready = "1";
});
"""


def _content(item: Item, size: int) -> str:
    parts = []
    if item.image is not None:
        parts.append(f'<img src="{thumbnail_uri(item.image, size)}" alt="{html.escape(item.label)}">')
    if item.text is not None:
        parts.append(f'<div class="text">{html.escape(item.text)}</div>')
    return "".join(parts)


def _result(item: Item, position: int, size: int) -> str:
    score = "" if item.score is None else f" &middot; score {item.score:.4f}"
    check = '<span class="check" title="ground truth">&#10003;</span>' if item.positive else ""
    cls = "card positive" if item.positive else "card"
    return (f'<div class="{cls}">{check}{_content(item, size)}'
            f'<div class="meta">#{position + 1} {html.escape(item.label)}{score}</div></div>')


def _rank_line(query: Query, shown: int) -> str:
    if query.rank is None:
        return "no ground truth"
    where = "" if query.rank < shown else f" (not among the {shown} shown)"
    return f'positive at <span class="rank">#{query.rank + 1}</span>{where}'


def _query(query: Query, size: int) -> str:
    note = f'<div class="meta">{html.escape(query.note)}</div>' if query.note else ""
    label = f'<div class="meta">{html.escape(query.query.label)}</div>' if query.query.label else ""
    results = "".join(_result(r, i, size) for i, r in enumerate(query.results))
    return (f'<div class="query"><div class="qcard">{_content(query.query, size)}{label}{note}'
            f'<div class="meta">{_rank_line(query, len(query.results))}</div></div>'
            f'<div class="results">{results}</div></div>')


def render_gallery_page(title: str, sections: Sequence[Section], thumbnail_px: int = THUMBNAIL_PX) -> str:
    """The page as one HTML string."""
    body = []
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.description:
            body.append(f'<p class="meta">{html.escape(section.description)}</p>')
        body.extend(_query(q, thumbnail_px) for q in section.queries)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style><script>{SCRIPT}</script></head>\n"
            f"<body><h1>{html.escape(title)}</h1>\n" + "\n".join(body) + "\n</body></html>\n")


def write_gallery_page(path: str | Path, title: str, sections: Sequence[Section],
                       thumbnail_px: int = THUMBNAIL_PX) -> Path:
    """Write the self-contained page atomically; returns its path."""
    return write_text(path, render_gallery_page(title, sections, thumbnail_px))
