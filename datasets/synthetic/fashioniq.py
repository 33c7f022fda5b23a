"""Synthetic FashionIQ folder: `images/`, `captions/cap.<c>.<split>.json`, `image_splits/split.<c>.<split>.json`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .captions import make_captions
from .garment import GarmentSpec, change_attributes, mutable_attributes, sample_spec
from .render import Pose, random_pose, render
from .writers import write_json, write_png

CATEGORIES = ("dress", "shirt", "toptee")
# category -> (silhouette, attribute restrictions); dresses carry no logo.
CATEGORY_GARMENT: dict[str, tuple[str, dict]] = {
    "dress": ("dress", {"logo": (False,)}),
    "shirt": ("shirt", {}),
    "toptee": ("top", {}),
}
MANIFEST = "synth_manifest.json"
_KIND = 2  # seed stream id of this writer


@dataclass
class SplitData:
    """Images (specs and poses), triplets and distractors of one category and split."""

    specs: list[GarmentSpec] = field(default_factory=list)
    poses: list[Pose] = field(default_factory=list)
    triplets: list[tuple[int, int, list[str]]] = field(default_factory=list)  # (reference, target, captions)
    distractors: list[int] = field(default_factory=list)
    seen: set = field(default_factory=set)

    def add(self, spec: GarmentSpec, rng: np.random.Generator) -> int:
        self.specs.append(spec)
        self.poses.append(random_pose(rng, shift=0.04, scale=0.06, angle=4.0))
        self.seen.add(spec.key())
        return len(self.specs) - 1

    def triplet_images(self) -> set[int]:
        return {i for r, t, _ in self.triplets for i in (r, t)}


def _fresh(data: SplitData, category: str, rng: np.random.Generator) -> GarmentSpec:
    silhouette, restrict = CATEGORY_GARMENT[category]
    for _ in range(2000):
        spec = sample_spec(rng, silhouette, restrict, logo_probability=0.4)
        if spec.key() not in data.seen:
            return spec
    raise RuntimeError(f"{category}: attribute space exhausted; ask for fewer images")


def _derive(
    data: SplitData, category: str, source: GarmentSpec, rng: np.random.Generator
) -> GarmentSpec | None:
    """A new, unseen spec differing from `source` in one (65 %) or two attributes."""
    restrict = CATEGORY_GARMENT[category][1]
    candidates = mutable_attributes(source, restrict)
    for _ in range(50):
        n = 1 if rng.random() < 0.65 else 2
        attrs = [candidates[i] for i in rng.choice(len(candidates), size=n, replace=False)]
        spec = change_attributes(source, attrs, rng, restrict)
        if spec.key() not in data.seen:
            return spec
    return None


def build_split(
    category: str, n_triplets: int, n_base: int, distractor_fraction: float, rng: np.random.Generator
) -> SplitData:
    """Triplets whose target is the reference with one or two real attribute changes.

    Most triplets start from a base image; about 15 % reuse an existing target with a new reference
    (several triplets share that target) and about 7 % take an existing reference as their target.
    """
    data = SplitData()
    bases = [data.add(_fresh(data, category, rng), rng) for _ in range(max(1, n_base))]
    targets: list[int] = []
    references: list[int] = []
    for t in range(n_triplets):
        draw = rng.random()
        if (t == 2 or draw < 0.15) and targets:
            mode, anchor = "reuse_target", targets[int(rng.integers(len(targets)))]
        elif (t == 3 or draw < 0.22) and references:
            mode, anchor = "reference_as_target", references[int(rng.integers(len(references)))]
        else:
            mode, anchor = "new", bases[int(rng.integers(len(bases)))]
        derived = _derive(data, category, data.specs[anchor], rng)
        if derived is None:  # crowded neighbourhood: start from a fresh base-like image instead
            anchor, mode = data.add(_fresh(data, category, rng), rng), "new"
            derived = _derive(data, category, data.specs[anchor], rng)
            if derived is None:
                raise RuntimeError(f"{category}: cannot derive a distinct target")
        new = data.add(derived, rng)
        ref, tgt = (anchor, new) if mode == "new" else (new, anchor)
        data.triplets.append((ref, tgt, make_captions(data.specs[ref], data.specs[tgt], rng)))
        targets.append(tgt)
        references.append(ref)
    used = data.triplet_images()
    unused = [i for i in range(len(data.specs)) if i not in used]
    n_extra = max(0, round(distractor_fraction * len(used)) - len(unused))
    extra = [data.add(_fresh(data, category, rng), rng) for _ in range(n_extra)]
    data.distractors = unused + extra
    return data


def generate_fashioniq(
    out_dir: str | Path,
    seed: int = 0,
    image_size: int = 64,
    train_triplets: int = 120,
    val_triplets: int = 40,
    base_images: int = 60,
    distractor_fraction: float = 0.2,
    with_test: bool = False,
    test_triplets: int = 40,
    image_dir: str = "images",
) -> dict:
    """Write the FashionIQ layout (captions/, image_splits/, images/) into `out_dir`; return the manifest.

    `base_images` per category are shared among the splits in proportion to their triplet counts.
    Images of different splits never coincide. Test caption files (no targets) only with `with_test`.
    """
    out = Path(out_dir)
    splits = {"train": train_triplets, "val": val_triplets}
    if with_test:
        splits["test"] = test_triplets
    total = sum(splits.values())
    built: dict[tuple[str, str], SplitData] = {}
    for c_idx, category in enumerate(CATEGORIES):
        for s_idx, (split, n_trip) in enumerate(splits.items()):
            rng = np.random.default_rng([seed, _KIND, c_idx, s_idx])
            n_base = max(2, round(base_images * n_trip / max(1, total)))
            built[(category, split)] = build_split(category, n_trip, n_base, distractor_fraction, rng)

    n_images = sum(len(d.specs) for d in built.values())
    name_rng = np.random.default_rng([seed, _KIND, 99])
    numbers = name_rng.choice(1_000_000, size=n_images, replace=False)
    manifest: dict = {
        "kind": "fashioniq",
        "seed": seed,
        "image_size": image_size,
        "image_dir": image_dir,
        "categories": list(CATEGORIES),
        "splits": {},
        "images": {},
    }
    offset = 0
    merged: dict[str, list] = {split: [] for split in splits}
    for (category, split), data in built.items():
        names = [f"S{n:06d}" for n in numbers[offset : offset + len(data.specs)]]
        offset += len(data.specs)
        rng = np.random.default_rng([seed, _KIND, CATEGORIES.index(category), 50 + list(splits).index(split)])
        for name, spec, pose in zip(names, data.specs, data.poses, strict=True):
            write_png(out / image_dir / f"{name}.png", render(spec, pose, image_size, rng))
            manifest["images"][name] = {"category": category, "split": split, "spec": spec.to_dict()}
        if split == "test":
            entries = [{"candidate": names[r], "captions": caps} for r, _, caps in data.triplets]
        else:
            entries = [
                {"target": names[t], "candidate": names[r], "captions": caps} for r, t, caps in data.triplets
            ]
        write_json(out / "captions" / f"cap.{category}.{split}.json", entries)
        merged[split].extend(entries)
        gallery = sorted({names[i] for i in data.triplet_images()} | {names[i] for i in data.distractors})
        write_json(out / "image_splits" / f"split.{category}.{split}.json", gallery)
        manifest["splits"].setdefault(category, {})[split] = {
            "triplets": len(data.triplets),
            "images": len(data.specs),
            "triplet_images": len(data.triplet_images()),
            "distractors": len(data.distractors),
        }
    for split in ("train", "val"):
        write_json(out / "captions" / f"cap.{split}.json", merged[split])
    manifest["images"] = dict(sorted(manifest["images"].items()))
    write_json(out / MANIFEST, manifest)
    return manifest
