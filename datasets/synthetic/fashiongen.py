"""Synthetic FashionGen: `fashiongen_256_256_{train,validation}.h5` with every key of the real files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .catalogue import CATALOGUE, SMALL_SUBCATEGORY, Subcategory, check_catalogue
from .descriptions import ProductText, make_text
from .garment import GarmentSpec, sample_spec
from .render import Pose, random_pose, render
from .writers import latin1_column, write_h5, write_json

SPLITS = ("train", "validation")
FILE_TEMPLATE = "fashiongen_256_256_{split}.h5"
MANIFEST = "synth_manifest.json"
DEFAULT_TRAIN_PRODUCTS = 240
# 27 subcategories x 12 products + 6 in the small one: the smallest validation size for which every
# subcategory but one has >= 12 products (the sampled protocol with 10 negatives needs 11 others).
DEFAULT_VAL_PRODUCTS = 330
MIN_PRODUCTS_PER_SUBCATEGORY = 12
SMALL_SUBCATEGORY_SIZE = 6
_KIND = 1  # seed stream id of this writer


@dataclass(frozen=True)
class Product:
    product_id: int
    sub: Subcategory
    spec: GarmentSpec
    text: ProductText
    poses: tuple[Pose, ...]


def allocate(
    n_products: int, names: list[str], small: str, small_size: int, rng: np.random.Generator
) -> dict:
    """Products per subcategory: `small` gets `small_size` (less for tiny splits), the rest share evenly."""
    small_n = min(small_size, n_products // len(names))
    others = [n for n in names if n != small]
    base, extra = divmod(n_products - small_n, len(others))
    lucky = set(rng.permutation(len(others))[:extra].tolist())
    counts = {n: base + (1 if i in lucky else 0) for i, n in enumerate(others)}
    counts[small] = small_n
    return {n: counts[n] for n in names}


def _poses(rng: np.random.Generator, n: int) -> tuple[Pose, ...]:
    """Pose 0 near-frontal, pose 1 mirrored, further poses shifted/scaled/rotated up to 10 degrees."""
    poses = [random_pose(rng, shift=0.03, scale=0.04, angle=3.0)]
    if n > 1:
        poses.append(random_pose(rng, shift=0.06, scale=0.08, angle=10.0, mirror=True))
    poses += [random_pose(rng, shift=0.08, scale=0.1, angle=10.0) for _ in range(n - 2)]
    return tuple(poses)


def make_products(
    n_products: int, ids: np.ndarray, rng: np.random.Generator, min_poses: int = 2, max_poses: int = 4
) -> list[Product]:
    """Products of one split in row order; visual specs are distinct within the split."""
    by_name = {s.name: s for s in CATALOGUE}
    counts = allocate(n_products, list(by_name), SMALL_SUBCATEGORY, SMALL_SUBCATEGORY_SIZE, rng)
    drawn: list[tuple[Subcategory, GarmentSpec]] = []
    seen: set = set()
    for name, count in counts.items():
        sub = by_name[name]
        for _ in range(count):
            for _attempt in range(1000):
                spec = sample_spec(rng, sub.silhouette, sub.restrict)
                if spec.key() not in seen:
                    break
            else:
                raise RuntimeError(f"cannot draw {count} distinct products for subcategory {name!r}")
            seen.add(spec.key())
            drawn.append((sub, spec))
    order = rng.permutation(len(drawn))
    products = []
    for row, i in enumerate(order.tolist()):
        sub, spec = drawn[i]
        accented = row == 0 or rng.random() < 0.2
        br = row == 1 or rng.random() < 0.15
        text = make_text(sub, spec, rng, accented=accented, br=br)
        n_poses = int(rng.integers(min_poses, max_poses + 1))
        products.append(Product(int(ids[row]), sub, spec, text, _poses(rng, n_poses)))
    return products


def split_arrays(products: list[Product], image_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """All HDF5 datasets of one split, in the key order of the real files."""
    images, rows = [], []
    for p in products:
        for k, pose in enumerate(p.poses):
            images.append(render(p.spec, pose, image_size, rng))
            rows.append((p, k))
    n = len(rows)
    col = latin1_column
    return {
        "input_image": np.stack(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8),
        "input_productID": np.array([p.product_id for p, _ in rows], dtype=np.int64).reshape(n, 1),
        "input_description": col([p.text.description for p, _ in rows]),
        "input_category": col([p.sub.category.upper() for p, _ in rows]),
        "input_subcategory": col([p.sub.name.upper() for p, _ in rows]),
        "input_name": col([p.text.name for p, _ in rows]),
        "input_composition": col([p.text.composition for p, _ in rows]),
        "input_gender": col([p.text.gender for p, _ in rows]),
        "input_season": col([p.text.season for p, _ in rows]),
        "index": np.arange(n, dtype=np.int64).reshape(n, 1),
        "index_2": np.arange(n, dtype=np.int64),
        "input_brand": col([p.text.brand for p, _ in rows]),
        "input_department": col([p.text.department for p, _ in rows]),
        "input_concat_description": col([f"{p.text.name}. {p.text.description}" for p, _ in rows]),
        "input_msrpUSD": np.array([p.text.msrp for p, _ in rows], dtype=np.float64).reshape(n, 1),
        "input_pose": col([f"id_gridfs_{k + 1}" for _, k in rows]),
    }


def generate_fashiongen(
    out_dir: str | Path,
    seed: int = 0,
    image_size: int = 64,
    train_products: int = DEFAULT_TRAIN_PRODUCTS,
    val_products: int = DEFAULT_VAL_PRODUCTS,
    min_poses: int = 2,
    max_poses: int = 4,
) -> dict:
    """Write both HDF5 files and `synth_manifest.json` into `out_dir`; return the manifest."""
    if not 1 <= min_poses <= max_poses:
        raise ValueError("need 1 <= min_poses <= max_poses")
    if train_products < 1 or val_products < 1:
        raise ValueError("each split needs at least one product")
    check_catalogue()
    out = Path(out_dir)
    sizes = {"train": train_products, "validation": val_products}
    id_rng = np.random.default_rng([seed, _KIND, 99])
    all_ids = id_rng.choice(990_000, size=train_products + val_products, replace=False) + 10_000
    ids = {"train": all_ids[:train_products], "validation": all_ids[train_products:]}
    manifest: dict = {
        "kind": "fashiongen",
        "seed": seed,
        "image_size": image_size,
        "poses": [min_poses, max_poses],
        "small_subcategory": SMALL_SUBCATEGORY,
        "min_products_per_subcategory": MIN_PRODUCTS_PER_SUBCATEGORY,
        "files": {},
        "splits": {},
        "products": {},
    }
    for s_idx, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, _KIND, s_idx])
        products = make_products(sizes[split], ids[split], rng, min_poses, max_poses)
        arrays = split_arrays(products, image_size, rng)
        name = FILE_TEMPLATE.format(split=split)
        write_h5(out / name, arrays)
        per_sub: dict[str, int] = {}
        for p in products:
            per_sub[p.sub.name] = per_sub.get(p.sub.name, 0) + 1
        manifest["files"][split] = name
        manifest["splits"][split] = {
            "products": len(products),
            "rows": int(arrays["index_2"].shape[0]),
            "products_per_subcategory": per_sub,
        }
        manifest["products"][split] = [
            {
                "product_id": p.product_id,
                "category": p.sub.category,
                "subcategory": p.sub.name,
                "poses": len(p.poses),
                "spec": p.spec.to_dict(),
            }
            for p in products
        ]
    write_json(out / MANIFEST, manifest)
    return manifest
