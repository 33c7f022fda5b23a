"""Synthetic ASEN++ data set in the published split-file formats (K = 3 attributes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .garment import GarmentSpec
from .render import Pose, render
from .writers import write_json, write_lines, write_png

ATTRIBUTES: tuple[str, ...] = ("colour", "sleeve_length", "pattern")
VALUE_NAMES: dict[str, tuple[str, ...]] = {
    "colour": ("Red", "Green", "Blue", "Yellow"),
    "sleeve_length": ("Sleeveless", "Short Sleeves", "Long Sleeves"),
    "pattern": ("Plain", "Horizontal Stripes", "Polka Dots"),
}
# value index -> GarmentSpec field value
_SPEC_VALUES = {
    "colour": ("red", "green", "blue", "yellow"),
    "sleeve_length": ("sleeveless", "short", "long"),
    "pattern": ("solid", "stripes", "dots"),
}
NUM_VALUES: tuple[int, ...] = tuple(len(VALUE_NAMES[a]) for a in ATTRIBUTES)
PORTRAIT, LANDSCAPE, SQUARE = (128, 160), (160, 128), (144, 144)  # (width, height)
SPLITS = ("train", "valid", "test")
YAML_NAME = "synthetic.yaml"
MANIFEST = "synth_manifest.json"
_KIND = 3  # seed stream id of this writer


def balanced(rng: np.random.Generator, n: int, n_values: int) -> np.ndarray:
    """n values in [0, n_values) with counts differing by at most one, randomly ordered."""
    return rng.permutation(np.resize(np.arange(n_values), n))


def draw_labels(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, K) value matrix; each attribute independent with (near-)uniform, balanced marginals."""
    return np.stack([balanced(rng, n, v) for v in NUM_VALUES], axis=1) if n else np.zeros((0, 3), np.int64)


def spec_for(values: np.ndarray) -> GarmentSpec:
    return GarmentSpec(
        silhouette="asen_top",
        colour=_SPEC_VALUES["colour"][values[0]],
        sleeve=_SPEC_VALUES["sleeve_length"][values[1]],
        pattern=_SPEC_VALUES["pattern"][values[2]],
    )


def canvas_sizes(rng: np.random.Generator, n: int, landscape: float, square: float) -> list[tuple[int, int]]:
    draws = rng.random(n)
    return [LANDSCAPE if d < landscape else SQUARE if d < landscape + square else PORTRAIT for d in draws]


def render_image(values: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Garment with +-8 px position, +-10 % scale and +-5 degree hue jitter."""
    short = min(size)
    dx, dy = rng.uniform(-8, 8, size=2) / short
    pose = Pose(float(dx), float(dy), float(rng.uniform(0.9, 1.1)) * 0.95, 0.0, False)
    return render(spec_for(values), pose, size, rng, hue_shift=float(rng.uniform(-5, 5)))


def split_queries(
    rng: np.random.Generator, values: np.ndarray, query_fraction: float
) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """Each image once per attribute, about `query_fraction` of the lines as queries (stratified by value)."""
    queries, candidates = [], []
    for a, n_values in enumerate(NUM_VALUES):
        for v in range(n_values):
            fids = np.flatnonzero(values[:, a] == v)
            if len(fids) < 2:
                raise ValueError(f"attribute {ATTRIBUTES[a]} value {v}: {len(fids)} images; need >= 2")
            fids = rng.permutation(fids)
            n_q = min(len(fids) - 1, max(1, round(query_fraction * len(fids))))
            queries += [(int(f), a, v) for f in fids[:n_q]]
            candidates += [(int(f), a, v) for f in fids[n_q:]]
    return sorted(queries, key=lambda x: (x[1], x[0])), sorted(candidates, key=lambda x: (x[1], x[0]))


def train_label_lines(values: np.ndarray, attrs: np.ndarray | None = None) -> list[str]:
    """`fid a1 v1 a2 v2 a3 v3` lines (DARN style), or `fid a v` for the attribute in `attrs` (FashionAI style)."""
    if attrs is None:
        return [" ".join([str(i)] + [f"{a} {v}" for a, v in enumerate(row)]) for i, row in enumerate(values)]
    return [f"{i} {a} {values[i, a]}" for i, a in enumerate(attrs)]


def one_attribute_values(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Values and the labelled attribute per image for FashionAI-style labels, balanced per attribute."""
    values = draw_labels(rng, n)
    attrs = balanced(rng, n, len(ATTRIBUTES))
    for a, n_values in enumerate(NUM_VALUES):
        members = np.flatnonzero(attrs == a)
        values[members, a] = balanced(rng, len(members), n_values)
    return values, attrs


def check_guarantees(label_lines: list[str], query_lines: dict, candidate_lines: dict) -> None:
    """Every value has >= 2 training images and appears among queries and candidates of each split."""
    train_count = np.zeros((len(ATTRIBUTES), max(NUM_VALUES)), dtype=np.int64)
    for line in label_lines:
        ints = [int(x) for x in line.split()]
        for a, v in zip(ints[1::2], ints[2::2], strict=True):
            train_count[a, v] += 1
    for a, name in enumerate(ATTRIBUTES):
        for v in range(NUM_VALUES[a]):
            if train_count[a, v] < 2:
                raise ValueError(
                    f"{name}={VALUE_NAMES[name][v]}: {train_count[a, v]} training images; need >= 2"
                )
            for split in query_lines:
                for kind, lines in (("queries", query_lines[split]), ("candidates", candidate_lines[split])):
                    if not any(la == a and lv == v for _, la, lv in lines):
                        raise ValueError(f"{name}={VALUE_NAMES[name][v]} missing from {split} {kind}")


def dataset_yaml(dataset: str, seed: int) -> str:
    """yacs-style dataset config (the published keys); DATA.BASE_PATH is left to the run config."""
    names = ", ".join(ATTRIBUTES)
    nums = ", ".join(str(n) for n in NUM_VALUES)
    return (
        f"# Synthetic ASEN++ data set (python -m datasets.synthetic asen, seed {seed}).\n"
        f"# Image paths are relative to <DATA.BASE_PATH>/{dataset}/: set DATA.BASE_PATH to the folder\n"
        f"# that holds this '{dataset}' folder.\n"
        "DATA:\n"
        f"  DATASET: {dataset}\n"
        f"  NUM_ATTRIBUTES: {len(ATTRIBUTES)}\n"
        "  ATTRIBUTES:\n"
        f"    NAME: [{names}]\n"
        f"    NUM: [{nums}]\n"
        "  PATH_FILE:\n"
        "    TRAIN: filenames_train.txt\n"
        "    VALID: filenames_valid.txt\n"
        "    TEST: filenames_test.txt\n"
        "  GROUNDTRUTH:\n"
        "    TRAIN: label_train.txt\n"
        "    QUERY:\n"
        "      VALID: query_valid.txt\n"
        "      TEST: query_test.txt\n"
        "    CANDIDATE:\n"
        "      VALID: candidate_valid.txt\n"
        "      TEST: candidate_test.txt\n"
    )


def generate_asen(
    out_dir: str | Path,
    seed: int = 0,
    n_train: int = 240,
    n_valid: int = 60,
    n_test: int = 60,
    label_mode: str = "all",
    query_fraction: float = 0.25,
    landscape_fraction: float = 0.15,
    square_fraction: float = 0.1,
) -> dict:
    """Write images, split/label/query/candidate files, meta.json and synthetic.yaml; return the manifest."""
    if label_mode not in ("all", "one"):
        raise ValueError(f"unknown label mode {label_mode!r} (use 'all' or 'one')")
    out = Path(out_dir)
    counts = {"train": n_train, "valid": n_valid, "test": n_test}
    need = 2 * max(NUM_VALUES)  # two images of every value (training) / a query and a candidate (eval)
    need_train = need * len(ATTRIBUTES) if label_mode == "one" else need
    for split, n in counts.items():
        if n < (need_train if split == "train" else need):
            raise ValueError(
                f"ASEN {split} split: {n} images is too few to guarantee every value twice; "
                f"need at least {need_train if split == 'train' else need}"
            )
    label_lines: list[str] = []
    queries: dict[str, list] = {}
    candidates: dict[str, list] = {}
    manifest: dict = {"kind": "asen", "seed": seed, "label_mode": label_mode, "splits": {}}
    for s_idx, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, _KIND, s_idx])
        n = counts[split]
        if split == "train" and label_mode == "one":
            values, attrs = one_attribute_values(rng, n)
            label_lines = train_label_lines(values, attrs)
        else:
            values = draw_labels(rng, n)
            if split == "train":
                label_lines = train_label_lines(values)
            else:
                queries[split], candidates[split] = split_queries(rng, values, query_fraction)
        sizes = canvas_sizes(rng, n, landscape_fraction, square_fraction)
        paths = [f"img/{split}/{i:06d}.png" for i in range(n)]
        for path, row, size in zip(paths, values, sizes, strict=True):
            write_png(out / path, render_image(row, size, rng))
        write_lines(out / f"filenames_{split}.txt", paths)
        manifest["splits"][split] = {
            "images": n,
            "canvas_sizes": {
                f"{w}x{h}": sum(1 for s in sizes if s == (w, h)) for w, h in (PORTRAIT, LANDSCAPE, SQUARE)
            },
            "values": values.tolist(),
        }
    check_guarantees(label_lines, queries, candidates)
    write_lines(out / "label_train.txt", label_lines)
    for split in ("valid", "test"):
        write_lines(out / f"query_{split}.txt", [f"{f} {a} {v}" for f, a, v in queries[split]])
        write_lines(out / f"candidate_{split}.txt", [f"{f} {a} {v}" for f, a, v in candidates[split]])
        manifest["splits"][split]["queries"] = len(queries[split])
        manifest["splits"][split]["candidates"] = len(candidates[split])
    write_json(
        out / "meta.json",
        {
            "ATTRIBUTES": list(ATTRIBUTES),
            "ATTRIBUTES_NUM": {a: n for a, n in zip(ATTRIBUTES, NUM_VALUES, strict=True)},
            "ATTRIBUTES_VALUES": {a: list(VALUE_NAMES[a]) for a in ATTRIBUTES},
        },
    )
    (out / YAML_NAME).write_text(dataset_yaml(out.resolve().name, seed), encoding="utf-8")
    write_json(out / MANIFEST, manifest)
    return manifest
