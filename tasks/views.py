"""What a final evaluation leaves to look at, next to its results JSON: each query's top-K as JSON Lines
(`topk_<split>_<set>.jsonl`, evaluation.topk) and, with `--gallery N`, one HTML page of the first N queries of
every set (`gallery_<split>.html`, inference.gallery). The task evaluators call these on rank 0."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from engine.config import ConfigError
from engine.logger import get_logger
from evaluation.map import MapResult
from evaluation.topk import DEFAULT_K, TopK, write_topk
from inference.gallery import Item, Query, Section, write_gallery_page

CMR_DIRECTIONS = {"t2i": "text → image", "i2t": "image → text"}


@dataclass(frozen=True)
class ViewOptions:
    """`topk`: K of the top-K files (0: none); `gallery`: queries per set on the HTML page (0: no page)."""

    topk: int = DEFAULT_K
    gallery: int = 0

    def __post_init__(self) -> None:
        if self.topk < 0 or self.gallery < 0:
            raise ConfigError(f"--topk and --gallery must be >= 0, got {self.topk} and {self.gallery}")
        if self.gallery and not self.topk:
            raise ConfigError("--gallery shows each query's top-K: it needs --topk > 0")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ViewOptions:
        """From `RunRequest.options` (`topk`, `gallery`; missing = the defaults)."""
        topk, gallery = options.get("topk"), options.get("gallery")
        return cls(DEFAULT_K if topk is None else int(topk), 0 if gallery is None else int(gallery))


def add_view_arguments(parser: argparse.ArgumentParser) -> None:
    """`--topk K` and `--gallery N` of the evaluating entry points."""
    parser.add_argument("--topk", type=int, default=DEFAULT_K, metavar="K",
                        help=f"write each query's K best results next to the final results JSON "
                             f"(topk_<split>_<set>.jsonl; default {DEFAULT_K}, 0: none)")
    parser.add_argument("--gallery", type=int, default=0, metavar="N",
                        help="also write gallery_<split>.html: the first N queries of every set with their top-K "
                             "(thumbnails inlined, ground truth marked)")


def view_options(args: argparse.Namespace) -> dict[str, int]:
    """The `RunRequest.options` entries of the parsed `--topk` / `--gallery` (checked here: one clear line)."""
    options = ViewOptions(getattr(args, "topk", DEFAULT_K), getattr(args, "gallery", 0))
    return {"topk": options.topk, "gallery": options.gallery}


def _queries(top: TopK, n: int, query: Callable[[int], Item], result: Callable[[int], Item],
             note: Callable[[int], str] | None = None) -> list[Query]:
    """Gallery entries of the first `n` queries of `top`."""
    out = []
    for q in range(min(n, len(top))):
        results = []
        for idx, score, pos in zip(top.indices[q].tolist(), top.scores[q].tolist(), top.positive[q].tolist()):
            if idx < 0:
                continue
            item = result(idx)
            item.score, item.positive = score, bool(pos)
            results.append(item)
        rank = int(top.ranks[q])
        out.append(Query(query(q), results, rank if rank >= 0 else None, note(q) if note else ""))
    return out


# ----------------------------------------------------------------------------- FashionGen CMR


@dataclass
class CMRMedia:
    """Ids and contents of a CMR evaluation set: product (text) and image ids as the data set names them,
    and readers of an evaluation image and a product text by position."""

    product_ids: Sequence[Any]
    image_ids: Sequence[Any]
    image: Callable[[int], Image.Image]
    text: Callable[[int], str]


def write_cmr_views(folder: Path, split: str, top: Mapping[str, TopK], media: CMRMedia, view: ViewOptions,
                    title: str) -> list[Path]:
    """`topk_<split>_t2i.jsonl` / `_i2t.jsonl` (ids: product ids and image ids) and, with `view.gallery`,
    `gallery_<split>.html`."""
    written = []
    ids = {"t2i": (media.product_ids, media.image_ids), "i2t": (media.image_ids, media.product_ids)}
    for direction, t in top.items():
        written.append(write_topk(folder / f"topk_{split}_{direction}.jsonl", t, *ids[direction]))
    if view.gallery and top:
        def text_item(p: int) -> Item:
            return Item(text=media.text(p), label=f"product {media.product_ids[p]}")

        def image_item(i: int) -> Item:
            return Item(image=media.image(i), label=f"image {media.image_ids[i]}")

        sections = []
        for direction in ("t2i", "i2t"):
            if direction in top:
                query, result = (text_item, image_item) if direction == "t2i" else (image_item, text_item)
                sections.append(Section(CMR_DIRECTIONS[direction], _queries(top[direction], view.gallery, query,
                                                                            result)))
        written.append(write_gallery_page(folder / f"gallery_{split}.html", title, sections))
    _log(written)
    return written


# ----------------------------------------------------------------------------- FashionIQ TGIR


@dataclass
class TGIRSetMedia:
    """One TGIR query set: its triplets (reference, target, captions, text) and gallery names, and a reader
    of a FashionIQ image by name."""

    triplets: Sequence[Any]
    gallery_names: Sequence[str]
    image: Callable[[str], Image.Image]


def write_tgir_views(folder: Path, split: str, top: Mapping[str, TopK], sets: Mapping[str, TGIRSetMedia],
                     view: ViewOptions, title: str) -> list[Path]:
    """`topk_<split>_<set>.jsonl` per query set (query = reference image name, with target and captions; ids =
    gallery image names) and, with `view.gallery`, `gallery_<split>.html`."""
    written = []
    for name, t in top.items():
        media = sets[name]

        def extra(q: int, triplets: Sequence[Any] = media.triplets) -> dict[str, Any]:
            return {"target": triplets[q].target, "captions": list(triplets[q].captions)}

        written.append(write_topk(folder / f"topk_{split}_{name}.jsonl", t, [x.reference for x in media.triplets],
                                  media.gallery_names, extra))
    if view.gallery and top:
        sections = []
        for name, t in top.items():
            media = sets[name]

            def query(q: int, m: TGIRSetMedia = media) -> Item:
                x = m.triplets[q]
                return Item(image=m.image(x.reference), text=x.text, label=f"reference {x.reference}")

            def result(i: int, m: TGIRSetMedia = media) -> Item:
                return Item(image=m.image(m.gallery_names[i]), label=m.gallery_names[i])

            def note(q: int, m: TGIRSetMedia = media) -> str:
                return f"target {m.triplets[q].target}"

            sections.append(Section(name, _queries(t, view.gallery, query, result, note),
                                    "reference image + modification text → target images"))
        written.append(write_gallery_page(folder / f"gallery_{split}.html", title, sections))
    _log(written)
    return written


# ----------------------------------------------------------------------------- ASEN++


@dataclass
class AsenMedia:
    """An ASEN++ evaluation split: image paths by fid, query and candidate lines (fid, attribute, value),
    attribute names, and a reader of an image by fid."""

    paths: Sequence[str]
    query_fid: Sequence[int]
    query_attr: Sequence[int]
    query_value: Sequence[int]
    candidate_fid: Sequence[int]
    attributes: Sequence[str]
    image: Callable[[int], Image.Image]


def write_asen_views(folder: Path, split: str, result: MapResult, media: AsenMedia, view: ViewOptions,
                     title: str) -> list[Path]:
    """`topk_<split>.jsonl` (query = image path, with its attribute, value and AP; ids = candidate image paths,
    each query ranked within its attribute's candidates; `rank` = the first relevant position) and, with
    `view.gallery`, `gallery_<split>.html`."""
    if result.top is None:
        raise ValueError("the MAP result holds no top-K lists (attribute_map top_k=0)")
    top, ap = result.top, result.ap.tolist()
    paths, qf, qa, qv = media.paths, media.query_fid, media.query_attr, media.query_value

    def extra(q: int) -> dict[str, Any]:
        return {"attribute": media.attributes[qa[q]], "value": int(qv[q]), "ap": ap[q]}

    written = [write_topk(folder / f"topk_{split}.jsonl", top, [paths[f] for f in qf],
                          [paths[f] for f in media.candidate_fid], extra)]
    if view.gallery:
        def query(q: int) -> Item:
            return Item(image=media.image(qf[q]), label=paths[qf[q]])

        def result(c: int) -> Item:
            fid = media.candidate_fid[c]
            return Item(image=media.image(fid), label=paths[fid])

        def note(q: int) -> str:
            return f"attribute {media.attributes[qa[q]]} = value {int(qv[q])}"

        section = Section(f"{split}: query image + attribute → images", _queries(top, view.gallery, query, result,
                                                                                   note),
                          "each query ranks the candidates of its attribute; ✓ = same attribute value")
        written.append(write_gallery_page(folder / f"gallery_{split}.html", title, [section]))
    _log(written)
    return written


def _log(paths: list[Path]) -> None:
    if paths:
        get_logger().info("top-K results written to %s", ", ".join(str(p) for p in paths))
