"""CLI: python -m datasets.synthetic {fashiongen,fashioniq,asen,all} --out DIR [options]."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from .asen import generate_asen
from .fashiongen import DEFAULT_TRAIN_PRODUCTS, DEFAULT_VAL_PRODUCTS, generate_fashiongen
from .fashioniq import generate_fashioniq

KINDS = ("fashiongen", "fashioniq", "asen")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m datasets.synthetic",
        description="Write deterministic synthetic data sets in the real file formats. Each kind goes to "
        "<out>/<kind>/ (fashiongen/, fashioniq/, asen/); the same seed gives byte-identical files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("kind", choices=(*KINDS, "all"), help="which data set to write ('all' = the three)")
    p.add_argument("--out", type=Path, default=Path("data/synthetic"), help="output root folder")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    p.add_argument(
        "--image-size",
        type=int,
        default=64,
        help="side of the square FashionGen and FashionIQ images (256 = the real FashionGen size)",
    )
    g = p.add_argument_group("FashionGen")
    g.add_argument(
        "--train-products", type=int, default=DEFAULT_TRAIN_PRODUCTS, help="products in the train file"
    )
    g.add_argument(
        "--val-products",
        type=int,
        default=DEFAULT_VAL_PRODUCTS,
        help="products in the validation file (>= 330 keeps >= 12 products in every subcategory "
        "but the deliberately small one)",
    )
    g.add_argument("--min-poses", type=int, default=2, help="fewest images (poses) per product")
    g.add_argument("--max-poses", type=int, default=4, help="most images (poses) per product")
    g = p.add_argument_group("FashionIQ")
    g.add_argument("--fiq-train-triplets", type=int, default=120, help="train triplets per category")
    g.add_argument("--fiq-val-triplets", type=int, default=40, help="val triplets per category")
    g.add_argument(
        "--fiq-base-images",
        type=int,
        default=60,
        help="reference base images per category, shared among splits by triplet count",
    )
    g.add_argument(
        "--fiq-distractors",
        type=float,
        default=0.2,
        help="distractor images in each split file, as a fraction of the triplet images",
    )
    g.add_argument(
        "--fiq-test", action="store_true", help="also write test captions (no targets) and split files"
    )
    g.add_argument(
        "--fiq-test-triplets", type=int, default=40, help="test triplets per category (with --fiq-test)"
    )
    g = p.add_argument_group("ASEN++")
    g.add_argument("--n-train", type=int, default=240, help="training images")
    g.add_argument("--n-valid", type=int, default=60, help="validation images")
    g.add_argument("--n-test", type=int, default=60, help="test images")
    g.add_argument(
        "--asen-labels",
        choices=("all", "one"),
        default="all",
        help="label_train.txt lines: all three attribute pairs (DARN style) or one random "
        "attribute per image (FashionAI style)",
    )
    g.add_argument(
        "--asen-query-fraction",
        type=float,
        default=0.25,
        help="fraction of each split's (image, attribute) lines used as queries",
    )
    p.add_argument(
        "--clean",
        action="store_true",
        help="delete <out>/<kind>/ before writing it (otherwise files of an earlier run that this run "
        "does not rewrite stay in place)",
    )
    p.add_argument("--quiet", action="store_true", help="print nothing")
    return p


def describe(folder: Path) -> list[str]:
    """One line per entry of `folder`: file name and size, or sub-folder and its file count."""
    lines = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            lines.append(f"{entry.name}/ ({sum(1 for f in entry.rglob('*') if f.is_file())} files)")
        else:
            lines.append(f"{entry.name} ({entry.stat().st_size / 1024:.0f} KiB)")
    return lines


def run(args: argparse.Namespace) -> dict[str, dict]:
    """Generate the requested kinds; return their manifests by kind."""
    kinds = KINDS if args.kind == "all" else (args.kind,)
    results = {}
    for kind in kinds:
        out = args.out / kind
        if args.clean and out.exists():
            shutil.rmtree(out)
        start = time.perf_counter()
        if kind == "fashiongen":
            m = generate_fashiongen(
                out,
                args.seed,
                args.image_size,
                args.train_products,
                args.val_products,
                args.min_poses,
                args.max_poses,
            )
            summary = ", ".join(
                f"{s}: {v['products']} products / {v['rows']} rows" for s, v in m["splits"].items()
            )
        elif kind == "fashioniq":
            m = generate_fashioniq(
                out,
                args.seed,
                args.image_size,
                args.fiq_train_triplets,
                args.fiq_val_triplets,
                args.fiq_base_images,
                args.fiq_distractors,
                args.fiq_test,
                args.fiq_test_triplets,
            )
            per_split: dict[str, int] = {}
            for splits in m["splits"].values():
                for s, v in splits.items():
                    per_split[s] = per_split.get(s, 0) + v["triplets"]
            summary = f"{len(m['images'])} images; triplets " + ", ".join(
                f"{s}: {n}" for s, n in per_split.items()
            )
        else:
            m = generate_asen(
                out,
                args.seed,
                args.n_train,
                args.n_valid,
                args.n_test,
                args.asen_labels,
                args.asen_query_fraction,
            )
            summary = ", ".join(f"{s}: {v['images']} images" for s, v in m["splits"].items())
        results[kind] = m
        if not args.quiet:
            print(f"{kind}: {out} ({time.perf_counter() - start:.1f} s; {summary})")
            for line in describe(out):
                print(f"  {line}")
    return results


def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
