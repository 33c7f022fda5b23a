"""Tests of prepare_dataset.py and datasets/fashiongen_h5.py on small hand-made FashionGen HDF5 files."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

import prepare_dataset
from datasets.fashiongen_h5 import (
    ALL_KEYS,
    FashionGenFormatError,
    ProductGrouper,
    canonical_split,
    check_product_groups,
    decode_h5_string,
    h5_filename,
    h5_path,
    iter_row_chunks,
    load_product_groups,
    open_h5,
)
from datasets.fashiongen_meta import category_to_sign

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 8

# (product id, category, subcategory, description, poses)
VALIDATION_PRODUCTS = [
    (100001, "JACKETS & COATS", "COATS", "Wool coat in navy.<br>Notched lapel. Café trim.", 3),
    (100002, "SHIRTS", "SHIRTS", "Cotton shirt in white. Spread collar.", 2),
    (100003, " Sneakers\t", "LOW TOP SNEAKERS", "Low-top sneakers in black. Crème lining.", 1),
]
TRAIN_PRODUCTS = [
    (200001, "TOTE BAGS", "TOTE BAGS", "Grained leather tote in tan.", 2),
    (200002, "PANTS", "TROUSERS", "Wool trousers in grey.<br>Zip fly.", 2),
]


def product_rows(products: list[tuple]) -> list[dict]:
    """Expand products into per-row field values."""
    rows = []
    for pid, category, subcategory, description, poses in products:
        for k in range(poses):
            rows.append(
                {
                    "input_productID": pid,
                    "input_category": category,
                    "input_subcategory": subcategory,
                    "input_description": description,
                    "input_concat_description": f"{category} {description}",
                    "input_name": f"Product {pid} é",
                    "input_composition": "100% wool.",
                    "input_gender": "MEN",
                    "input_season": "FW2017",
                    "input_brand": "Maison Émile",
                    "input_department": "CLOTHING",
                    "input_pose": f"id_gridfs_{k + 1}",
                    "input_msrpUSD": 120.5 + pid % 7,
                }
            )
    return rows


def _text_array(values: list[str]) -> np.ndarray:
    """Fixed-length Latin-1 byte strings of shape (N, 1), as in the release."""
    encoded = [v.encode("latin-1") for v in values]
    return np.array(encoded, dtype=f"S{max(len(e) for e in encoded)}").reshape(-1, 1)


def write_fashiongen_h5(
    path: Path, products: list[tuple], seed: int = 0, drop: tuple[str, ...] = ()
) -> np.ndarray:
    """Write a FashionGen-format file with every key of the released files; return its images."""
    rows = product_rows(products)
    n = len(rows)
    images = np.random.default_rng(seed).integers(0, 256, size=(n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    data = {
        "input_image": images,
        "input_productID": np.array([r["input_productID"] for r in rows], dtype=np.int32).reshape(-1, 1),
        "index": np.arange(n, dtype=np.int64).reshape(-1, 1),
        "index_2": np.arange(n, dtype=np.int64),
        "input_msrpUSD": np.array([r["input_msrpUSD"] for r in rows], dtype=np.float64).reshape(-1, 1),
    }
    for key in ALL_KEYS:
        if key not in data:
            data[key] = _text_array([r[key] for r in rows])
    with h5py.File(path, "w") as f:
        for key, value in data.items():
            if key not in drop:
                f.create_dataset(key, data=value)
    return images


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_fashiongen_h5(tmp_path / "fashiongen_256_256_validation.h5", VALIDATION_PRODUCTS, seed=1)
    write_fashiongen_h5(tmp_path / "fashiongen_256_256_train.h5", TRAIN_PRODUCTS, seed=2)
    return tmp_path


def run_main(*args: str) -> int:
    return prepare_dataset.main([*args, "--quiet"])


def load(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def output_files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix != ".h5"
    }


# ----------------------------------------------------------------------------- reading helpers


def test_split_names_and_paths(tmp_path: Path) -> None:
    assert canonical_split("test") == canonical_split("val") == "validation"
    assert h5_filename("test") == "fashiongen_256_256_validation.h5"
    assert h5_filename("train") == "fashiongen_256_256_train.h5"
    with pytest.raises(ValueError, match="unknown FashionGen split"):
        canonical_split("dev")
    with pytest.raises(FileNotFoundError) as info:
        h5_path(tmp_path, "val")
    message = str(info.value)
    assert "fashiongen_256_256_validation.h5" in message
    assert "python -m datasets.synthetic fashiongen --out" in message


def test_decode_h5_string_is_latin1() -> None:
    assert decode_h5_string(b"Caf\xe9<br>") == "Café<br>"
    assert decode_h5_string(np.bytes_(b"\xe9")) == "é"
    assert decode_h5_string("already text") == "already text"


def group_products(product_ids, source=None):
    """Rows grouped as prepare_dataset.py groups them while streaming (`ProductGrouper`)."""
    grouper = ProductGrouper(source)
    for row, product_id in enumerate(product_ids):
        grouper.add(product_id, row)
    return grouper.finish()


def test_group_products_contiguous_runs() -> None:
    assert group_products([5, 5, 7, 9, 9, 9]) == [(5, [0, 1]), (7, [2]), (9, [3, 4, 5])]
    assert group_products(np.array([3, 3, 4])) == [(3, [0, 1]), (4, [2])]
    assert group_products([]) == []


def test_group_products_rejects_split_product() -> None:
    with pytest.raises(FashionGenFormatError) as info:
        group_products([1, 1, 2, 1, 1, 1, 3], source="x.h5")
    message = str(info.value)
    assert "x.h5" in message and "product id 1" in message
    assert "rows 0-1" in message and "rows 3-5" in message


def test_check_product_groups_at_load(tmp_path: Path) -> None:
    assert check_product_groups([[1, [0, 1]], [2, [2]]], "f", num_rows=3) == [(1, [0, 1]), (2, [2])]
    with pytest.raises(FashionGenFormatError, match="product id 1 occurs in entries 0 and 2"):
        check_product_groups([[1, [0]], [2, [1]], [1, [2]]], "f")
    with pytest.raises(FashionGenFormatError, match="do not continue at row 2"):
        check_product_groups([[1, [0, 1]], [2, [3]]], "f")
    with pytest.raises(FileNotFoundError, match="prepare_dataset.py"):
        load_product_groups(tmp_path / "validation" / "productid_list.json")


def test_open_h5_and_stream(root: Path) -> None:
    with open_h5(root / "fashiongen_256_256_validation.h5") as f:
        chunks = list(iter_row_chunks(f, ["index_2", "input_description"], chunk_rows=4))
    assert [start for start, _ in chunks] == [0, 4]
    assert chunks[0][1]["index_2"] == [0, 1, 2, 3]
    assert chunks[0][1]["input_description"][0] == VALIDATION_PRODUCTS[0][3]


# ----------------------------------------------------------------------------- outputs


def test_outputs_on_hand_made_file(root: Path) -> None:
    assert run_main("--data-root", str(root)) == 0

    assert load(root / "validation" / "productid_list.json") == [
        [100001, [0, 1, 2]],
        [100002, [3, 4]],
        [100003, [5]],
    ]
    assert load(root / "train" / "productid_list.json") == [[200001, [0, 1]], [200002, [2, 3]]]

    info_text = (root / "validation" / "info_data.json").read_text(encoding="utf-8")
    info = json.loads(info_text)
    assert info_text == json.dumps(info, indent=2, ensure_ascii=False) + "\n"  # pretty-printed, é not escaped
    assert "Café" in info_text and "\\u00e9" not in info_text
    assert len(info) == 6
    first = info[0]
    assert set(first) == set(ALL_KEYS) - {"input_image"}
    assert first["input_description"] == "Wool coat in navy.<br>Notched lapel. Café trim."
    assert first["input_productID"] == 100001 and isinstance(first["input_productID"], int)
    assert first["input_brand"] == "Maison Émile"
    assert first["input_msrpUSD"] == pytest.approx(120.5 + 100001 % 7)
    assert [row["index_2"] for row in info] == list(range(6))
    assert [row["index"] for row in info] == list(range(6))
    assert info[5]["input_category"] == " Sneakers\t"  # raw value; only lookups normalise
    assert info[4]["input_pose"] == "id_gridfs_2"

    sign_lines = (root / "categorys_to_sign.txt").read_text(encoding="utf-8").splitlines()
    assert len(sign_lines) == 48
    assert dict(line.split("\t") for line in sign_lines) == category_to_sign()
    assert "tote bags\t[bags_sign]" in sign_lines

    annotation = root / "annotation"
    test = load(annotation / "fashiongen_test.json")
    assert test == [
        {"caption": VALIDATION_PRODUCTS[0][3], "image": ["100001_0.png", "100001_1.png", "100001_2.png"]},
        {"caption": VALIDATION_PRODUCTS[1][3], "image": ["100002_0.png", "100002_1.png"]},
        {"caption": VALIDATION_PRODUCTS[2][3], "image": ["100003_0.png"]},
    ]
    symbol = load(annotation / "fashiongen_test_symbol.json")
    assert [s["caption"] for s in symbol] == [
        "coats_sign Wool coat in navy.<br>Notched lapel. Café trim.",
        "tops_sign Cotton shirt in white. Spread collar.",
        "shoes_sign Low-top sneakers in black. Crème lining.",
    ]
    assert [s["image"] for s in symbol] == [t["image"] for t in test]
    assert (annotation / "fashiongen_val.json").read_bytes() == (
        annotation / "fashiongen_test.json"
    ).read_bytes()
    assert (annotation / "fashiongen_val_symbol.json").read_bytes() == (
        annotation / "fashiongen_test_symbol.json"
    ).read_bytes()

    train = load(annotation / "fashiongen_train.json")
    assert train == [
        {"image": "200001_0.png", "caption": "Grained leather tote in tan.", "image_id": 200001},
        {"image": "200001_1.png", "caption": "Grained leather tote in tan.", "image_id": 200001},
        {"image": "200002_0.png", "caption": "Wool trousers in grey.<br>Zip fly.", "image_id": 200002},
        {"image": "200002_1.png", "caption": "Wool trousers in grey.<br>Zip fly.", "image_id": 200002},
    ]
    train_symbol = load(annotation / "fashiongen_train_symbol.json")
    assert [t["caption"] for t in train_symbol] == [
        "bags_sign Grained leather tote in tan.",
        "bags_sign Grained leather tote in tan.",
        "pants_sign Wool trousers in grey.<br>Zip fly.",
        "pants_sign Wool trousers in grey.<br>Zip fly.",
    ]
    assert [t["image_id"] for t in train_symbol] == [200001, 200001, 200002, 200002]
    assert not (root / "images").exists()  # only with --extract-images
    assert not list(root.rglob("*.tmp"))  # no temporary file of engine.atomic left


def test_manifest(root: Path) -> None:
    assert run_main("--data-root", str(root)) == 0
    manifest = load(root / "manifest.json")
    pyproject = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'version = "{manifest["framework_version"]}"' in pyproject
    validation, train = manifest["splits"]["validation"], manifest["splits"]["train"]
    assert (validation["rows"], validation["products"]) == (6, 3)
    assert (train["rows"], train["products"]) == (4, 2)
    for entry in (validation, train):
        data = (root / entry["input"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["bytes"] == len(data)
        assert all((root / output).exists() for output in entry["outputs"])
    assert manifest["options"] == {"split": "all", "extract_images": False, "fashioniq_root": None}


def test_extract_images(root: Path) -> None:
    assert run_main("--data-root", str(root), "--extract-images", "--workers", "2") == 0
    images_dir = root / "images"
    expected = {
        f"{pid}_{k}.png" for pid, *_, poses in VALIDATION_PRODUCTS + TRAIN_PRODUCTS for k in range(poses)
    }
    assert {p.name for p in images_dir.iterdir()} == expected
    with h5py.File(root / "fashiongen_256_256_validation.h5", "r") as f:
        pixels = f["input_image"][:]
    for row, name in enumerate(["100001_0", "100001_1", "100001_2", "100002_0", "100002_1", "100003_0"]):
        with Image.open(images_dir / f"{name}.png") as image:
            assert image.mode == "RGB" and image.format == "PNG"
            np.testing.assert_array_equal(np.asarray(image), pixels[row])
    # existing images are kept, --overwrite rewrites them (with identical content)
    mtime = (images_dir / "100001_0.png").stat().st_mtime_ns
    before = output_files(root)
    assert run_main("--data-root", str(root), "--extract-images") == 0
    assert (images_dir / "100001_0.png").stat().st_mtime_ns == mtime
    assert run_main("--data-root", str(root), "--extract-images", "--overwrite") == 0
    assert output_files(root) == before


def test_chunked_streaming_matches_single_chunk(tmp_path_factory: pytest.TempPathFactory, root: Path) -> None:
    other = tmp_path_factory.mktemp("other")
    for name in ("fashiongen_256_256_validation.h5", "fashiongen_256_256_train.h5"):
        (other / name).write_bytes((root / name).read_bytes())
    assert run_main("--data-root", str(root), "--extract-images", "--chunk-rows", "4096") == 0
    assert run_main("--data-root", str(other), "--extract-images", "--chunk-rows", "2") == 0
    assert output_files(root) == output_files(other)


def test_idempotent(root: Path) -> None:
    assert run_main("--data-root", str(root), "--extract-images") == 0
    first = output_files(root)
    assert run_main("--data-root", str(root), "--extract-images") == 0
    assert output_files(root) == first


def test_single_split_and_manifest_merge(root: Path) -> None:
    assert run_main("--data-root", str(root), "--split", "validation") == 0
    assert (root / "validation" / "info_data.json").is_file()
    assert not (root / "train").exists()
    assert not (root / "annotation" / "fashiongen_train.json").exists()
    assert set(load(root / "manifest.json")["splits"]) == {"validation"}
    assert run_main("--data-root", str(root), "--split", "train") == 0
    manifest = load(root / "manifest.json")
    assert set(manifest["splits"]) == {"train", "validation"}
    assert manifest["options"]["split"] == "train"


# ----------------------------------------------------------------------------- errors


def test_missing_file_names_file_and_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_fashiongen_h5(tmp_path / "fashiongen_256_256_validation.h5", VALIDATION_PRODUCTS)
    assert run_main("--data-root", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "fashiongen_256_256_train.h5" in err
    assert "python -m datasets.synthetic fashiongen --out" in err
    assert not (tmp_path / "validation").exists()  # inputs are checked before any work
    assert run_main("--data-root", str(tmp_path), "--split", "validation") == 0


def test_missing_data_root(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_main("--data-root", str(tmp_path / "absent")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "absent/fashiongen_256_256_train.h5" in err


def test_missing_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_fashiongen_h5(
        tmp_path / "fashiongen_256_256_validation.h5", VALIDATION_PRODUCTS, drop=("input_category",)
    )
    assert run_main("--data-root", str(tmp_path), "--split", "validation") == 2
    err = capsys.readouterr().err
    assert "fashiongen_256_256_validation.h5" in err and "missing key 'input_category'" in err


def test_wrong_shape_and_row_count(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "fashiongen_256_256_validation.h5"
    write_fashiongen_h5(path, VALIDATION_PRODUCTS)
    with h5py.File(path, "a") as f:
        del f["input_season"]
        f["input_season"] = np.array([[b"FW2017", b"x"]] * 6)
    assert run_main("--data-root", str(tmp_path), "--split", "validation") == 2
    assert "key 'input_season' has shape (6, 2)" in capsys.readouterr().err
    write_fashiongen_h5(path, VALIDATION_PRODUCTS)
    with h5py.File(path, "a") as f:
        del f["index"]
        f["index"] = np.arange(5).reshape(-1, 1)
    assert run_main("--data-root", str(tmp_path), "--split", "validation") == 2
    err = capsys.readouterr().err
    assert "key 'index' has 5 rows but 'input_productID' has 6" in err and str(path) in err


def test_non_contiguous_product(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    products = [*VALIDATION_PRODUCTS, VALIDATION_PRODUCTS[0]]  # 100001 again at rows 6-8
    write_fashiongen_h5(tmp_path / "fashiongen_256_256_validation.h5", products)
    assert run_main("--data-root", str(tmp_path), "--split", "validation") == 2
    err = capsys.readouterr().err
    assert "product id 100001" in err and "rows 0-2" in err and "rows 6-8" in err
    assert not (tmp_path / "validation" / "info_data.json").exists()
    assert not list(tmp_path.rglob("*.tmp"))  # the failed write removed its temporary file


def test_unknown_category(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    products = [*VALIDATION_PRODUCTS, (100004, "SPACESUITS", "SUITS", "A suit for space.", 2)]
    write_fashiongen_h5(tmp_path / "fashiongen_256_256_validation.h5", products)
    assert run_main("--data-root", str(tmp_path), "--split", "validation") == 2
    err = capsys.readouterr().err
    assert "row 6" in err and "'SPACESUITS'" in err and "fashiongen_256_256_validation.h5" in err


def test_product_id_collision_with_extract_images(root: Path, capsys: pytest.CaptureFixture) -> None:
    write_fashiongen_h5(root / "fashiongen_256_256_train.h5", [*TRAIN_PRODUCTS, VALIDATION_PRODUCTS[1]])
    assert run_main("--data-root", str(root)) == 0  # harmless without a shared image folder
    assert run_main("--data-root", str(root), "--extract-images") == 2
    assert "100002" in capsys.readouterr().err
    assert not (root / "images").exists()
    # a single-split run checks against the other split's existing product list
    assert run_main("--data-root", str(root), "--split", "train", "--extract-images") == 2


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "prepare_dataset.py", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_truncated_and_garbage_h5(tmp_path: Path) -> None:
    path = tmp_path / "fashiongen_256_256_validation.h5"
    write_fashiongen_h5(path, VALIDATION_PRODUCTS)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    result = _run_cli("--data-root", str(tmp_path), "--split", "validation", "--quiet")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert str(path) in result.stderr and "Traceback" not in result.stderr

    path.write_bytes(b"this is not an HDF5 file" * 10)
    result = _run_cli("--data-root", str(tmp_path), "--split", "validation", "--quiet")
    assert (
        result.returncode == 2 and "cannot open as HDF5" in result.stderr and "Traceback" not in result.stderr
    )


def test_cli_help_and_usage_errors(tmp_path: Path) -> None:
    result = _run_cli("--help")
    assert result.returncode == 0
    for option in (
        "--data-root",
        "--split",
        "--extract-images",
        "--fashioniq-root",
        "--chunk-rows",
        "--quiet",
    ):
        assert option in result.stdout
    with pytest.raises(SystemExit) as info:
        prepare_dataset.main(["--quiet"])  # nothing to do
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        prepare_dataset.main(["--data-root", str(tmp_path), "--chunk-rows", "0"])


# ----------------------------------------------------------------------------- FashionIQ


def _write_fashioniq(root: Path) -> dict[tuple[str, str], list[dict]]:
    files = {}
    for category in ("dress", "shirt", "toptee"):
        for part in ("train", "val"):
            triplets = [
                {
                    "candidate": f"{category}{part}{i}a",
                    "target": f"{category}{part}{i}b",
                    "captions": ["is red", "é"],
                }
                for i in range(2 if part == "train" else 1)
            ]
            path = root / "captions" / f"cap.{category}.{part}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(triplets), encoding="utf-8")
            files[category, part] = triplets
    return files


def test_fashioniq_merge(tmp_path: Path) -> None:
    files = _write_fashioniq(tmp_path)
    assert run_main("--fashioniq-root", str(tmp_path)) == 0
    for part in ("train", "val"):
        merged = load(tmp_path / "captions" / f"cap.{part}.json")
        assert merged == files["dress", part] + files["shirt", part] + files["toptee", part]
    first = (tmp_path / "captions" / "cap.train.json").read_bytes()
    assert run_main("--fashioniq-root", str(tmp_path)) == 0
    assert (tmp_path / "captions" / "cap.train.json").read_bytes() == first


def test_fashioniq_with_fashiongen_in_manifest(root: Path, tmp_path: Path) -> None:
    fiq = tmp_path / "fiq"
    _write_fashioniq(fiq)
    assert run_main("--data-root", str(root), "--split", "validation", "--fashioniq-root", str(fiq)) == 0
    manifest = load(root / "manifest.json")
    assert manifest["fashioniq"]["cap.train.json"] == {
        "triplets": 6,
        "per_category": {"dress": 2, "shirt": 2, "toptee": 2},
    }
    assert manifest["fashioniq"]["cap.val.json"]["triplets"] == 3


def test_fashioniq_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _write_fashioniq(tmp_path)
    (tmp_path / "captions" / "cap.shirt.val.json").unlink()
    assert run_main("--fashioniq-root", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "cap.shirt.val.json" in err and "python -m datasets.synthetic fashioniq" in err
    _write_fashioniq(tmp_path)
    (tmp_path / "captions" / "cap.toptee.train.json").write_text('[{"candidate": "a", "captions": []}]')
    assert run_main("--fashioniq-root", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "cap.toptee.train.json: entry 0" in err
