"""prepare_dataset.py on the synthetic FashionGen files: outputs agree with what the generator drew."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py

from datasets.fashiongen_meta import sign_for_category

ROOT = Path(__file__).resolve().parents[1]


def test_outputs_match_the_generator(synthetic_root):
    fg = synthetic_root / "fashiongen"
    drawn = json.loads((fg / "synth_manifest.json").read_text())
    manifest = json.loads((fg / "manifest.json").read_text())
    for split in ("train", "validation"):
        products = json.loads((fg / split / "productid_list.json").read_text())
        expected = drawn["products"][split]
        assert [pid for pid, _ in products] == [p["product_id"] for p in expected]
        assert [len(rows) for _, rows in products] == [p["poses"] for p in expected]
        info = json.loads((fg / split / "info_data.json").read_text(encoding="utf-8"))
        with h5py.File(fg / f"fashiongen_256_256_{split}.h5") as f:
            assert len(info) == f["input_image"].shape[0] == manifest["splits"][split]["rows"]
        assert manifest["splits"][split]["products"] == len(expected)
        first_rows = [rows[0] for _, rows in products]
        assert [info[r]["input_category"].lower() for r in first_rows] == [p["category"] for p in expected]
    test = json.loads((fg / "annotation" / "fashiongen_test_symbol.json").read_text(encoding="utf-8"))
    plain = json.loads((fg / "annotation" / "fashiongen_test.json").read_text(encoding="utf-8"))
    val_products = drawn["products"]["validation"]
    assert len(test) == len(plain) == len(val_products)
    for sym, raw, product in zip(test, plain, val_products):
        sign = sign_for_category(product["category"]).strip("[]")
        assert sym["caption"] == f"{sign} {raw['caption']}"
        assert raw["image"] == [f"{product['product_id']}_{k}.png" for k in range(product["poses"])]
    assert (fg / "categorys_to_sign.txt").read_text().count("\n") == 48


def test_corrupted_synthetic_file_is_one_clear_error(synthetic_root, tmp_path):
    bad = tmp_path / "fg"
    bad.mkdir()
    src = synthetic_root / "fashiongen" / "fashiongen_256_256_train.h5"
    data = src.read_bytes()
    (bad / src.name).write_bytes(data[: len(data) // 3])
    shutil.copy(synthetic_root / "fashiongen" / "fashiongen_256_256_validation.h5", bad)
    proc = subprocess.run([sys.executable, "prepare_dataset.py", "--data-root", str(bad), "--quiet"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and src.name in lines[0]
    assert "Traceback" not in proc.stderr
