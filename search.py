r"""Use a trained model: index a catalogue, query it, export the encoders.

    # embed a gallery into an index file (a folder of images, a FashionGen split, a FashionIQ split, an ASEN++ split)
    python search.py index --checkpoint RUN/checkpoint_best.pth --out catalogue.index --images FOLDER
    python search.py index --checkpoint CMR/checkpoint_best.pth --out fg.index --fashiongen data/fashiongen [--split validation] [--texts]
    python search.py index --checkpoint TGIR/checkpoint_best.pth --out dress.index --fashioniq data/fashioniq --category dress
    python search.py index --checkpoint ASEN/checkpoint_best.pth --out collar.index --asen-split test --attribute collar_design

    # the top-K of one query, as a table (and --json FILE, --html FILE)
    python search.py query --checkpoint CMR/checkpoint_best.pth --index fg.index --text "black leather jacket" [--category "JACKETS & COATS"]
    python search.py query --checkpoint CMR/checkpoint_best.pth --index fg_texts.index --image photo.jpg
    python search.py query --checkpoint TGIR/checkpoint_best.pth --index dress.index --image ref.png --text "is longer and red"
    python search.py query --checkpoint ASEN/checkpoint_best.pth --index collar.index --image shirt.jpg --attribute collar_design

    # ONNX encoders with their preprocessing (preprocessing.json)
    python search.py export --checkpoint RUN/checkpoint_best.pth --out exported/

A checkpoint this framework wrote describes its model; a released checkpoint needs --task, --config and (for
Fashion-FINE) --tokenizer. An index remembers the model, dimension and attribute it was built with: querying
it with another model is refused. Building is resumable: re-run the same command after an interruption.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from engine.atomic import write_text
from engine.config import ConfigError
from engine.progress import track
from engine.run import run_main
from evaluation.report import format_table

DEFAULT_TOP_K = 10
INDEX_CHUNK_ITEMS = 4096  # items embedded (and kept on disk) per resumable step


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a checkpoint of a training run (or a released one)")
    p.add_argument("--task", help="released checkpoints only: cmr, pretrain, tgir, fine_blip or asen")
    p.add_argument("--config", help="released checkpoints only (or to override the recorded config): its YAML")
    p.add_argument("--tokenizer", help="released Fashion-FINE checkpoints only: the folder holding vocab.txt")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="with --config: config overrides")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: a GPU when there is one)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="autocast precision (auto: bf16 on GPUs that support it, else fp32)")
    p.add_argument("--batch-size", type=int, help="encoding batch (default: the config's evaluation batch)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="embed a gallery into an index file")
    add_model_arguments(p)
    p.add_argument("--out", required=True, help="the index file to write")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", metavar="FOLDER", help="every image under a folder")
    src.add_argument("--fashiongen", metavar="ROOT", help="a prepared FashionGen folder (with --split)")
    src.add_argument("--fashioniq", metavar="ROOT", help="a FashionIQ folder (with --category, --split)")
    src.add_argument("--asen-split", choices=("valid", "test"), help="the candidates of an ASEN++ split (the "
                     "model's DATA config; --data-root overrides DATA.BASE_PATH)")
    p.add_argument("--split", help="FashionGen: train or validation (default); FashionIQ: train, val (default), test")
    p.add_argument("--texts", action="store_true", help="FashionGen: index the product texts (for image queries)")
    p.add_argument("--category", help="FashionIQ category (dress, shirt, toptee)")
    p.add_argument("--image-dir", default="images", help="FashionIQ image folder under ROOT")
    p.add_argument("--image-ext", default=".png", help="FashionIQ image file extension")
    p.add_argument("--attribute", help="ASEN++: the attribute the index is for")
    p.add_argument("--data-root", help="ASEN++: DATA.BASE_PATH of the split")
    p.add_argument("--float16", action="store_true", help="store the embeddings as float16 (half the size)")
    p.add_argument("--faiss", choices=("ivf", "hnsw"), help="also build an approximate FAISS index beside it")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.add_argument("--chunk-items", type=int, default=INDEX_CHUNK_ITEMS,
                   help=f"items embedded and kept on disk per resumable step (default {INDEX_CHUNK_ITEMS})")

    q = sub.add_parser("query", help="the top-K of a query against an index")
    add_model_arguments(q)
    q.add_argument("--index", required=True, help="an index file written by `search.py index`")
    q.add_argument("--text", help="a text query (CMR), or the modification text with --image (TGIR)")
    q.add_argument("--category", help="CMR: the query's FashionGen category (as evaluation adds its sign)")
    q.add_argument("--image", help="an image query (CMR image -> text, TGIR reference, ASEN++ query)")
    q.add_argument("--attribute", help="ASEN++: the attribute to compare on (must be the index's)")
    q.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help=f"results to show (default {DEFAULT_TOP_K})")
    q.add_argument("--approximate", action="store_true", help="search the FAISS index built beside the index")
    q.add_argument("--json", help="also write the results as JSON")
    q.add_argument("--html", help="also write a self-contained HTML page with thumbnails")

    e = sub.add_parser("export", help="export the encoders as ONNX with a preprocessing sidecar")
    add_model_arguments(e)
    e.add_argument("--out", required=True, help="folder for the .onnx files and preprocessing.json")
    e.add_argument("--has-sign", action="store_true", help="BLIP: texts carry their sign token at position 1 "
                   "(default: as the evaluation queries, without)")
    return parser


def load(args: argparse.Namespace) -> Any:
    from inference.load import load_model

    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError("--batch-size must be >= 1")
    return load_model(args.checkpoint, device=args.device, precision=args.precision, task=args.task,
                      config=args.config, tokenizer=args.tokenizer, overrides=args.set, batch_size=args.batch_size)


# ----------------------------------------------------------------------------- index


def make_gallery(encoder: Any, args: argparse.Namespace) -> Any:
    from inference import galleries
    from inference.encoders import AsenEncoder

    if args.images:
        return galleries.folder_gallery(encoder, args.images, args.attribute)
    if args.fashiongen:
        return galleries.fashiongen_gallery(encoder, args.fashiongen, args.split or "validation",
                                            "text" if args.texts else "image")
    if args.fashioniq:
        if not args.category:
            raise ConfigError("--fashioniq needs --category (dress, shirt, toptee)")
        return galleries.fashioniq_gallery(encoder, args.fashioniq, args.category, args.split or "val",
                                           args.image_dir, args.image_ext)
    if not isinstance(encoder, AsenEncoder):
        raise ConfigError(f"--asen-split needs an ASEN++ checkpoint; {args.checkpoint} holds a {encoder.task} model")
    return galleries.asen_gallery(encoder, args.asen_split, args.attribute, args.data_root)


def index_meta(encoder: Any, gallery: Any) -> dict[str, Any]:
    return {**encoder.describe(), "kind": gallery.kind, "attribute": gallery.attribute,
            "attributes": getattr(encoder, "attributes", None), "source": gallery.source,
            "texts": gallery.texts if gallery.kind == "text" else None}


def cmd_index(args: argparse.Namespace) -> int:
    from inference.galleries import encode_gallery
    from inference.index import IndexBuilder, build_faiss, read_index

    if args.chunk_items < 1:
        raise ConfigError("--chunk-items must be >= 1")
    encoder = load(args)
    gallery = make_gallery(encoder, args)
    n = len(gallery.ids)
    builder = IndexBuilder(args.out, index_meta(encoder, gallery), dtype="float16" if args.float16 else "float32",
                           chunk_items=args.chunk_items)
    start = builder.done_items
    if start:
        print(f"resuming {args.out}: {start} of {n} items already embedded")
    steps = range(start, n, args.chunk_items)
    for begin in track(steps, f"indexing {n} items", args.progress, unit="chunk"):
        end = min(n, begin + args.chunk_items)
        emb = encode_gallery(encoder, gallery, Subset(gallery.dataset, range(begin, end)))
        builder.add(gallery.ids[begin:end], gallery.paths[begin:end], emb)
    path = builder.finish()
    print(f"indexed {n} {gallery.kind}s of {gallery.source} -> {path}")
    if args.faiss:
        print(f"approximate index -> {build_faiss(read_index(path), kind=args.faiss)}")
    return 0


# ----------------------------------------------------------------------------- query


def encode_query(encoder: Any, args: argparse.Namespace, meta: dict[str, Any]) -> tuple[torch.Tensor, dict]:
    """The query embedding (1, D) and what the query was, by the model's task and the index's kind."""
    from inference.encoders import AsenEncoder, TGIREncoder

    if isinstance(encoder, AsenEncoder):
        if not args.image or args.text:
            raise ConfigError("an ASEN++ query is --image with --attribute")
        attribute = args.attribute or meta.get("attribute")
        return encoder.encode_images([args.image], attribute), {"image": args.image, "attribute": attribute}
    if isinstance(encoder, TGIREncoder):
        if not (args.image and args.text):
            raise ConfigError("a TGIR query is --image (the reference) with --text (the modification)")
        return encoder.encode_queries([args.image], [args.text]), {"image": args.image, "text": args.text}
    if bool(args.text) == bool(args.image):
        raise ConfigError("a CMR query is --text (and --category) or --image, not both")
    if args.image:  # against texts: image -> text retrieval; against images: the image encoder's similarity
        return encoder.encode_images([args.image]), {"image": args.image}
    return encoder.encode_texts([args.text], args.category), {"text": args.text, "category": args.category}


def cmd_query(args: argparse.Namespace) -> int:
    from inference.index import read_index, search

    if args.top_k < 1:
        raise ConfigError("--top-k must be >= 1")
    index = read_index(args.index)
    encoder = load(args)
    expected = encoder.describe()
    if args.attribute is not None:
        expected["attribute"] = encoder.attributes[encoder.attribute_index(args.attribute)]
    index.check_compatible(expected)
    query, asked = encode_query(encoder, args, index.meta)
    idx, scores = search(index, query, args.top_k, approximate=args.approximate)
    rows = [(r + 1, index.ids[i], float(s), index.paths[i]) for r, (i, s) in
            enumerate(zip(idx[0].tolist(), scores[0].tolist())) if i >= 0]
    print(format_table(["rank", "id", "score", "path"], rows, decimals=4))
    result = {"query": asked, "index": str(args.index), "model": encoder.fingerprint, "top_k": [
        {"rank": r, "id": i, "score": s, "path": p} for r, i, s, p in rows]}
    if args.json:
        print(f"written to {write_text(args.json, json.dumps(result, indent=2) + chr(10))}")
    if args.html:
        print(f"written to {write_query_page(args.html, asked, rows, index)}")
    return 0


def write_query_page(path: str, asked: dict[str, Any], rows: list[tuple], index: Any) -> Path:
    from inference.galleries import item_image
    from inference.gallery import Item, Query, Section, write_gallery_page

    texts = dict(zip(index.ids, index.meta.get("texts") or [])) if index.meta.get("kind") == "text" else {}
    results = [Item(image=None if texts else item_image(p), text=texts.get(i) or None, label=str(i), score=s)
               for _, i, s, p in rows]
    note = ", ".join(f"{k}: {v}" for k, v in asked.items() if v is not None and k not in ("image", "text"))
    query = Query(Item(image=asked.get("image"), text=asked.get("text"), label="query"), results, note=note)
    title = " + ".join(str(asked[k]) for k in ("image", "text") if asked.get(k))
    return write_gallery_page(path, f"search: {title}", [Section(str(index.meta.get("source")), [query])])


# ----------------------------------------------------------------------------- export


def cmd_export(args: argparse.Namespace) -> int:
    """ONNX graphs + preprocessing.json, then each graph checked in onnxruntime on another batch size."""
    from inference.card import preprocessing
    from inference.export import export_encoders, sample_inputs, verify_export

    encoder = load(args)
    model = encoder.model.to("cpu").float()  # the export family follows from the model's class
    written = export_encoders(model, None, Path(args.out), preprocessing(encoder.card), has_sign=args.has_sign)
    worst = verify_export(written, model, None, sample_inputs(model, None, batch=3, length=7, seed=1))
    for role, file in written.items():
        print(f"{role}: {file}")
    print(f"onnxruntime vs PyTorch on a batch of 3: largest absolute difference {worst:.2e}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"index": cmd_index, "query": cmd_query, "export": cmd_export}
    try:
        return commands[args.command](args)
    except ModuleNotFoundError as exc:  # an optional package (faiss-cpu, onnx, onnxruntime)
        raise ConfigError(f"{exc}; pip install {exc.name or 'it'}" if "pip install" not in str(exc) else str(exc)) \
            from None


if __name__ == "__main__":
    run_main(main)
