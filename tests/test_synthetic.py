"""Synthetic data generator: determinism, real file formats, and the guarantees of the specs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from PIL import Image

from datasets.fashiongen_meta import SIGN_TOKENS, category_to_sign, subcategories
from datasets.synthetic import GarmentSpec, Pose, change_attributes, generate_asen, render, sample_spec
from datasets.synthetic.__main__ import main as cli_main
from datasets.synthetic.asen import ATTRIBUTES, NUM_VALUES
from datasets.synthetic.captions import changed_attributes
from datasets.synthetic.fashioniq import CATEGORIES, generate_fashioniq
from datasets.synthetic.garment import PALETTE

FG_FILES = ("fashiongen_256_256_train.h5", "fashiongen_256_256_validation.h5")
# Words a FashionIQ caption about each changed attribute contains.
KEYWORDS = {
    "pattern": ("solid", "plain", "pattern", "stripe", "dot", "check"),
    "sleeve": ("sleeve",),
    "neckline": ("neck", "collar"),
    "length": ("short", "long", "knee", "floor"),
    "logo": ("logo",),
}
STRING_KEYS = (
    "input_description",
    "input_category",
    "input_subcategory",
    "input_name",
    "input_composition",
    "input_gender",
    "input_season",
    "input_brand",
    "input_department",
    "input_concat_description",
    "input_pose",
)
ALL_KEYS = set(STRING_KEYS) | {"input_image", "input_productID", "index", "index_2", "input_msrpUSD"}
SMALL = [
    "--image-size",
    "32",
    "--train-products",
    "14",
    "--val-products",
    "12",
    "--fiq-train-triplets",
    "8",
    "--fiq-val-triplets",
    "4",
    "--fiq-base-images",
    "6",
    "--n-train",
    "24",
    "--n-valid",
    "12",
    "--n-test",
    "12",
    "--quiet",
]


@pytest.fixture(scope="module")
def default_root(tmp_path_factory) -> Path:
    """All three kinds with default sizes, written through the CLI."""
    root = tmp_path_factory.mktemp("synthetic_default")
    assert cli_main(["all", "--out", str(root), "--quiet"]) == 0
    return root


@pytest.fixture(scope="module")
def small_roots(tmp_path_factory) -> dict[str, Path]:
    """Small runs: seed 0 twice, seed 1 once, and seed 0 written one kind at a time."""
    roots = {}
    for name, seed in (("a", 0), ("b", 0), ("other", 1)):
        roots[name] = tmp_path_factory.mktemp(f"synthetic_{name}")
        cli_main(["all", "--out", str(roots[name]), "--seed", str(seed), *SMALL])
    roots["single"] = tmp_path_factory.mktemp("synthetic_single")
    for kind in ("fashiongen", "fashioniq", "asen"):
        cli_main([kind, "--out", str(roots["single"]), *SMALL])
    return roots


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _h5(root: Path, split: str) -> h5py.File:
    return h5py.File(root / "fashiongen" / f"fashiongen_256_256_{split}.h5", "r")


def _product_runs(ids: np.ndarray) -> list[tuple[int, int, int]]:
    """(product id, first row, row count) for every contiguous run of equal ids."""
    runs: list[list[int]] = []
    for row, pid in enumerate(ids.tolist()):
        if runs and runs[-1][0] == pid:
            runs[-1][2] += 1
        else:
            runs.append([pid, row, 1])
    return [tuple(r) for r in runs]


def _lines(path: Path) -> list[list[int]]:
    return [[int(x) for x in line.split()] for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes(small_roots):
    a, b = _files(small_roots["a"]), _files(small_roots["b"])
    assert a.keys() == b.keys()
    suffixes = {Path(name).suffix for name in a}
    assert {".h5", ".png", ".json", ".txt", ".yaml"} <= suffixes
    different = [name for name in a if a[name] != b[name]]
    assert not different


def test_single_kind_runs_match_all(small_roots):
    assert _files(small_roots["single"]) == _files(small_roots["a"])


def test_different_seed_changes_every_file_kind(small_roots):
    a, other = small_roots["a"], small_roots["other"]
    for rel in (
        "fashiongen/fashiongen_256_256_train.h5",
        "fashiongen/fashiongen_256_256_validation.h5",
        "fashioniq/captions/cap.train.json",
        "asen/label_train.txt",
        "asen/query_valid.txt",
        "asen/img/train/000000.png",
    ):
        assert (a / rel).read_bytes() != (other / rel).read_bytes(), rel
    assert sorted(p.name for p in (a / "fashioniq/images").iterdir()) != sorted(
        p.name for p in (other / "fashioniq/images").iterdir()
    )


# ----------------------------------------------------------------------------------- renderer


def test_garment_spec_validates_attributes():
    with pytest.raises(ValueError):
        GarmentSpec("top", "red")  # sleeve and neckline missing
    with pytest.raises(ValueError):
        GarmentSpec("skirt", "red", length="short", logo=True)  # skirts never carry a logo
    with pytest.raises(ValueError):
        GarmentSpec("cap", "magenta")


def test_render_shapes_poses_and_attribute_changes():
    rng = np.random.default_rng(0)
    spec = GarmentSpec("top", "navy", "solid", sleeve="short", neckline="round")
    img = render(spec, Pose(), 64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert render(spec, Pose(), (128, 160)).shape == (160, 128, 3)
    assert np.array_equal(img, render(spec, Pose(), 64))  # no rng: deterministic, noise-free
    assert not np.array_equal(img, render(spec, Pose(angle=10.0), 64))
    striped = change_attributes(spec, ["pattern"], rng, {"pattern": ("stripes",)})
    assert striped.pattern == "stripes" and striped.colour == spec.colour
    assert np.abs(render(striped, Pose(), 64).astype(int) - img).sum() > 64 * 64
    for silhouette in ("dress", "sneaker_high", "snood", "bikini", "asen_top"):
        out = render(sample_spec(rng, silhouette), Pose(mirror=True), 48, rng)
        assert out.shape == (48, 48, 3)


# ----------------------------------------------------------------------------------- FashionGen


def test_fashiongen_keys_dtypes_shapes(default_root):
    for split in ("train", "validation"):
        with _h5(default_root, split) as f:
            assert set(f.keys()) == ALL_KEYS
            n = f["input_image"].shape[0]
            assert f["input_image"].shape == (n, 64, 64, 3) and f["input_image"].dtype == np.uint8
            for key in ("input_productID", "index"):
                assert f[key].shape == (n, 1) and f[key].dtype.kind == "i"
            assert f["index_2"].shape == (n,) and f["index_2"].dtype.kind == "i"
            assert f["input_msrpUSD"].shape == (n, 1) and f["input_msrpUSD"].dtype.kind == "f"
            for key in STRING_KEYS:
                assert f[key].shape == (n, 1) and f[key].dtype.kind == "S", key
            assert np.array_equal(f["index"][:, 0], np.arange(n))
            assert np.array_equal(f["index_2"][:], np.arange(n))
            assert all(re.fullmatch(r"(SS|FW)\d{4}", s[0].decode("latin-1")) for s in f["input_season"][:])


def test_fashiongen_latin1_text(default_root):
    with _h5(default_root, "validation") as f:
        raw = [row[0] for row in f["input_description"][:]]
        texts = [b.decode("latin-1") for b in raw]
        assert any("é" in t for t in texts)
        assert any(b"\xe9" in b for b in raw)  # stored as ISO-8859-1, not UTF-8
        assert any("<br>" in t for t in texts)
        assert any("'" in t for t in texts)
        for key in STRING_KEYS:
            for row in f[key][:]:
                assert row[0].decode("latin-1").encode("latin-1") == row[0]


def test_fashiongen_products_contiguous_and_unique(default_root):
    manifest = json.loads((default_root / "fashiongen/synth_manifest.json").read_text())
    expected = {"train": 240, "validation": 330}
    ids_by_split = {}
    for split in ("train", "validation"):
        with _h5(default_root, split) as f:
            ids = f["input_productID"][:, 0]
            descriptions = f["input_description"][:, 0]
            poses = [p.decode() for p in f["input_pose"][:, 0]]
        runs = _product_runs(ids)
        run_ids = [r[0] for r in runs]
        assert len(run_ids) == len(set(run_ids)) == expected[split]  # no product split into two runs
        assert all(2 <= count <= 4 for _, _, count in runs)
        assert 2 * expected[split] <= len(ids) <= 4 * expected[split]
        for _, start, count in runs:
            assert len(set(descriptions[start : start + count])) == 1
            assert poses[start : start + count] == [f"id_gridfs_{k + 1}" for k in range(count)]
        ids_by_split[split] = set(run_ids)
        assert manifest["splits"][split] == {
            **manifest["splits"][split],
            "products": expected[split],
            "rows": len(ids),
        }
    assert not ids_by_split["train"] & ids_by_split["validation"]


def test_fashiongen_categories_and_subcategories(default_root):
    table = category_to_sign()
    real_subcats = set(subcategories())
    subcats_of: dict[str, set[str]] = {}
    for split in ("train", "validation"):
        with _h5(default_root, split) as f:
            cats = [c[0].decode("latin-1").strip().lower() for c in f["input_category"][:]]
            subs = [s[0].decode("latin-1").strip().lower() for s in f["input_subcategory"][:]]
        for c, s in zip(cats, subs, strict=True):
            subcats_of.setdefault(c, set()).add(s)
    assert len(subcats_of) == 14
    assert {table[c] for c in subcats_of} == set(SIGN_TOKENS)
    assert all(len(s) >= 2 for s in subcats_of.values())
    assert set().union(*subcats_of.values()) <= real_subcats


def test_fashiongen_validation_subcategory_sizes(default_root):
    with _h5(default_root, "validation") as f:
        ids = f["input_productID"][:, 0]
        subs = [s[0].decode("latin-1") for s in f["input_subcategory"][:]]
    products: dict[str, set[int]] = {}
    for pid, sub in zip(ids.tolist(), subs, strict=True):
        products.setdefault(sub, set()).add(pid)
    sizes = sorted(len(p) for p in products.values())
    assert sizes[0] < 11  # exactly one deliberately small subcategory (sampled protocol top-up path)
    assert all(n >= 12 for n in sizes[1:])


def test_fashiongen_descriptions_name_the_visual_attributes(default_root):
    manifest = json.loads((default_root / "fashiongen/synth_manifest.json").read_text())
    adjective = {"solid": "solid", "stripes": "striped", "dots": "polka-dot", "check": "check"}
    with _h5(default_root, "train") as f:
        ids = f["input_productID"][:, 0]
        descriptions = [d[0].decode("latin-1").lower() for d in f["input_description"][:]]
    first_row = {}
    for row, pid in enumerate(ids.tolist()):
        first_row.setdefault(pid, row)
    for product in manifest["products"]["train"]:
        text, spec = descriptions[first_row[product["product_id"]]], product["spec"]
        assert f" in {spec['colour']}." in text
        assert adjective[spec["pattern"]] in text
        assert ("logo patch" in text) == spec["logo"]
        if spec["sleeve"]:
            assert {"sleeveless": "sleeveless", "short": "short sleeve", "long": "long sleeve"}[
                spec["sleeve"]
            ] in text


def test_fashiongen_poses_share_identity(default_root):
    """Learnable signal: a raw-pixel nearest neighbour often finds another pose of the same product."""
    with _h5(default_root, "validation") as f:
        x = f["input_image"][:].astype(np.float32)
        ids = f["input_productID"][:, 0]
    n = len(x)
    x = x.reshape(n, 16, 4, 16, 4, 3).mean(axis=(2, 4)).reshape(n, -1)
    x -= x.mean(axis=1, keepdims=True)
    sq = (x * x).sum(axis=1)
    dist = sq[:, None] + sq[None, :] - 2 * x @ x.T
    np.fill_diagonal(dist, np.inf)
    hit_rate = (ids[dist.argmin(axis=1)] == ids).mean()
    assert hit_rate > 0.15  # chance is about 3 / 330


def test_fashiongen_true_size_flag(tmp_path):
    cli_main(
        [
            "fashiongen",
            "--out",
            str(tmp_path),
            "--image-size",
            "256",
            "--train-products",
            "2",
            "--val-products",
            "2",
            "--quiet",
        ]
    )
    for name in FG_FILES:
        with h5py.File(tmp_path / "fashiongen" / name, "r") as f:
            assert f["input_image"].shape[1:] == (256, 256, 3)


# ----------------------------------------------------------------------------------- FashionIQ


def _fiq(root: Path, rel: str):
    return json.loads((root / "fashioniq" / rel).read_text(encoding="utf-8"))


def test_fashioniq_layout_and_schema(default_root):
    root = default_root / "fashioniq"
    assert not list((root / "captions").glob("*.test.json"))
    for split in ("train", "val"):
        merged = []
        for c in CATEGORIES:
            triplets = _fiq(default_root, f"captions/cap.{c}.{split}.json")
            assert len(triplets) == (120 if split == "train" else 40)
            for t in triplets:
                assert list(t) == ["target", "candidate", "captions"]
                assert re.fullmatch(r"S\d{6}", t["target"]) and re.fullmatch(r"S\d{6}", t["candidate"])
                assert t["target"] != t["candidate"]
                assert len(t["captions"]) == 2 and all(isinstance(x, str) and x for x in t["captions"])
            merged += triplets
        assert _fiq(default_root, f"captions/cap.{split}.json") == merged
    names = [p.stem for p in (root / "images").glob("*.png")]
    with Image.open(root / "images" / f"{names[0]}.png") as im:
        assert im.mode == "RGB" and im.size == (64, 64)


def test_fashioniq_splits_distractors_and_disjointness(default_root):
    images = {p.stem for p in (default_root / "fashioniq/images").glob("*.png")}
    per_split: dict[str, set[str]] = {"train": set(), "val": set()}
    for c in CATEGORIES:
        for split in ("train", "val"):
            triplets = _fiq(default_root, f"captions/cap.{c}.{split}.json")
            used = {t[k] for t in triplets for k in ("candidate", "target")}
            gallery = _fiq(default_root, f"image_splits/split.{c}.{split}.json")
            assert gallery == sorted(set(gallery))
            assert used <= set(gallery) <= images
            distractors = set(gallery) - used
            assert 0.1 <= len(distractors) / len(used) <= 0.35
            per_split[split] |= set(gallery)
            targets = [t["target"] for t in triplets]
            assert any(targets.count(x) > 1 for x in targets)  # some targets shared by several triplets
            assert {t["candidate"] for t in triplets} & set(targets)  # some references are targets elsewhere
    assert not per_split["train"] & per_split["val"]


def test_fashioniq_captions_describe_the_real_change(default_root):
    specs = {k: v["spec"] for k, v in _fiq(default_root, "synth_manifest.json")["images"].items()}
    for c in CATEGORIES:
        for split in ("train", "val"):
            for t in _fiq(default_root, f"captions/cap.{c}.{split}.json"):
                ref, tgt = (GarmentSpec(**specs[t[k]]) for k in ("candidate", "target"))
                changed = changed_attributes(ref, tgt)
                assert 1 <= len(changed) <= 2
                text = " ".join(t["captions"])
                for attribute in changed:
                    words = (tgt.colour,) if attribute == "colour" else KEYWORDS[attribute]
                    assert any(w in text for w in words), (t, attribute)


def test_fashioniq_test_split_flag(tmp_path):
    generate_fashioniq(
        tmp_path,
        image_size=32,
        train_triplets=6,
        val_triplets=4,
        base_images=6,
        with_test=True,
        test_triplets=4,
    )
    test = json.loads((tmp_path / "captions/cap.dress.test.json").read_text())
    assert len(test) == 4 and all(set(t) == {"candidate", "captions"} for t in test)
    gallery = set(json.loads((tmp_path / "image_splits/split.dress.test.json").read_text()))
    assert {t["candidate"] for t in test} <= gallery
    assert not gallery & set(json.loads((tmp_path / "image_splits/split.dress.val.json").read_text()))


# ----------------------------------------------------------------------------------- ASEN++


def test_asen_file_formats_and_guarantees(default_root):
    root = default_root / "asen"
    n_images = {}
    for split, n in (("train", 240), ("valid", 60), ("test", 60)):
        paths = (root / f"filenames_{split}.txt").read_text().splitlines()
        assert len(paths) == n and paths[0] == f"img/{split}/000000.png"
        assert all((root / p).is_file() for p in paths)
        n_images[split] = n
    counts = np.zeros((3, max(NUM_VALUES)), dtype=int)
    for fields in _lines(root / "label_train.txt"):
        assert len(fields) == 7 and 0 <= fields[0] < n_images["train"]
        for a, v in zip(fields[1::2], fields[2::2], strict=True):
            assert 0 <= a < 3 and 0 <= v < NUM_VALUES[a]
            counts[a, v] += 1
    assert all(counts[a, v] >= 2 for a in range(3) for v in range(NUM_VALUES[a]))
    for split in ("valid", "test"):
        queries, candidates = _lines(root / f"query_{split}.txt"), _lines(root / f"candidate_{split}.txt")
        assert all(len(x) == 3 for x in queries + candidates)
        assert 0.2 <= len(queries) / (len(queries) + len(candidates)) <= 0.3
        for a in range(3):
            q = [(f, v) for f, la, v in queries if la == a]
            c = [(f, v) for f, la, v in candidates if la == a]
            assert sorted(f for f, _ in q + c) == list(
                range(n_images[split])
            )  # each image once per attribute
            assert not {f for f, _ in q} & {f for f, _ in c}
            for v in range(NUM_VALUES[a]):
                assert any(x == v for _, x in q) and any(x == v for _, x in c)


def test_asen_canvases_meta_and_yaml(default_root):
    root = default_root / "asen"
    sizes = set()
    for p in sorted((root / "img/train").glob("*.png"))[:80]:
        with Image.open(p) as im:
            sizes.add(im.size)
    assert {(128, 160), (160, 128), (144, 144)} <= sizes
    meta = json.loads((root / "meta.json").read_text())
    assert meta["ATTRIBUTES"] == list(ATTRIBUTES)
    assert [len(meta["ATTRIBUTES_VALUES"][a]) for a in ATTRIBUTES] == [4, 3, 3]
    data = yaml.safe_load((root / "synthetic.yaml").read_text())["DATA"]
    assert data["DATASET"] == "asen" and data["NUM_ATTRIBUTES"] == 3
    assert data["ATTRIBUTES"] == {"NAME": ["colour", "sleeve_length", "pattern"], "NUM": [4, 3, 3]}
    assert data["PATH_FILE"] == {f"{s.upper()}": f"filenames_{s}.txt" for s in ("train", "valid", "test")}
    assert data["GROUNDTRUTH"]["TRAIN"] == "label_train.txt"
    assert data["GROUNDTRUTH"]["QUERY"] == {"VALID": "query_valid.txt", "TEST": "query_test.txt"}
    assert data["GROUNDTRUTH"]["CANDIDATE"] == {"VALID": "candidate_valid.txt", "TEST": "candidate_test.txt"}
    for rel in [*data["PATH_FILE"].values(), data["GROUNDTRUTH"]["TRAIN"]]:
        assert (root / rel).is_file()


def test_asen_colour_is_drawn(default_root):
    """The labelled colour is the dominant saturated colour of the image."""
    root = default_root / "asen"
    labels = {f[0]: f[2] for f in _lines(root / "label_train.txt")}
    names = ["red", "green", "blue", "yellow"]
    ref = np.array([PALETTE[n] for n in names], dtype=float)
    for fid in range(20):
        px = np.asarray(Image.open(root / f"img/train/{fid:06d}.png")).reshape(-1, 3).astype(float)
        saturated = px[(px.max(axis=1) - px.min(axis=1)) > 120]
        votes = np.bincount(((saturated[:, None] - ref[None]) ** 2).sum(-1).argmin(1), minlength=4)
        assert votes.argmax() == labels[fid]


def test_asen_one_attribute_labels(tmp_path):
    generate_asen(tmp_path, n_train=48, n_valid=12, n_test=12, label_mode="one")
    lines = _lines(tmp_path / "label_train.txt")
    assert all(len(x) == 3 for x in lines) and len(lines) == 48
    for a in range(3):
        for v in range(NUM_VALUES[a]):
            assert sum(1 for _, la, lv in lines if la == a and lv == v) >= 2


def test_asen_too_small_is_refused(tmp_path):
    with pytest.raises(ValueError, match="too few"):
        generate_asen(tmp_path, n_train=24, n_valid=6, n_test=12)


# ----------------------------------------------------------------------------------- CLI


def test_cli_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--out",
        "--seed",
        "--image-size",
        "--train-products",
        "--val-products",
        "--fiq-test",
        "--fiq-train-triplets",
        "--n-train",
        "--n-valid",
        "--n-test",
        "--asen-labels",
        "--clean",
    ):
        assert flag in text
