"""FashionIQ data side: layout, triplet validation, query text, TGIR datasets, held-out split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.fashioniq import (
    FashionIQLayout,
    GalleryImageDataset,
    TGIRQueryDataset,
    TGIRTrainDataset,
    Triplet,
    image_ids,
    load_or_create_heldout_triplets,
    load_triplets,
    read_caption_file,
    read_image_split,
)
from datasets.text import load_tokenizer
from engine.data import build_eval_loader
from engine.errors import DataError
from evaluation.tgir import QuerySet, TGIROptions, build_gallery, evaluate_tgir
from scripts import build_vocab

TRAIN = [
    {"candidate": "B01", "target": "B02", "captions": ["Is red instead of blue.", "has (long) sleeves"]},
    {"candidate": "B03", "target": "B02", "captions": ["is shorter", "Men's fit"]},
    {"candidate": "B01", "target": "B04", "captions": ["has dots"]},
    {"candidate": "B05", "target": "B06", "captions": ["is darker", "has a logo"]},
]
VAL = [
    {"candidate": "V01", "target": "V02", "captions": ["is red", "has stripes"]},
    {"candidate": "V03", "target": "V01", "captions": ["is blue", "has no logo"]},
]


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def write_image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def fiq_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fiq")
    write_json(root / "captions" / "cap.dress.train.json", TRAIN)
    write_json(root / "captions" / "cap.dress.val.json", VAL)
    write_json(root / "image_splits" / "split.dress.val.json", ["V01", "V02", "V03", "V09"])
    names = sorted({n for t in TRAIN + VAL for n in (t["candidate"], t["target"])} | {"V09"})
    for i, name in enumerate(names):
        write_image(root / "images" / f"{name}.png", 10 * i)
    return root


@pytest.fixture(scope="module")
def tokenizer(fiq_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    assert build_vocab.main(["from-captions", "--data-root", str(fiq_root), "--out", str(out)]) == 0
    return load_tokenizer(out)


def test_query_text_prefix_joining_and_cleaning(fiq_root):
    triplets = load_triplets(fiq_root / "captions" / "cap.dress.train.json")
    assert triplets[0].text == "the difference between two images are is red instead of blue and has long sleeves"
    assert triplets[1].text == "the difference between two images are is shorter and mens fit"
    assert triplets[2].text == "the difference between two images are has dots"
    assert (triplets[1].reference, triplets[1].target, triplets[1].entry) == ("B03", "B02", 1)


@pytest.mark.parametrize("entry, problem", [
    ({"target": "B02", "captions": ["x"]}, "'candidate'"),
    ({"candidate": "B01", "target": "", "captions": ["x"]}, "'target'"),
    ({"candidate": "B01", "target": "B02", "captions": []}, "'captions'"),
    ({"candidate": "B01", "target": "B02", "captions": "is red"}, "'captions'"),
    ({"candidate": "B01", "target": "B02", "captions": ["ok", 3]}, "'captions'"),
    (["B01", "B02"], "expected an object"),
])
def test_malformed_triplet_names_file_and_entry(tmp_path, entry, problem):
    path = write_json(tmp_path / "cap.dress.val.json", [VAL[0], entry])
    with pytest.raises(DataError) as err:
        load_triplets(path)
    assert str(path) in str(err.value) and "entry 1" in str(err.value) and problem in str(err.value)


def test_bad_files(tmp_path, fiq_root):
    (tmp_path / "bad.json").write_text("[{", encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON"):
        load_triplets(tmp_path / "bad.json")
    with pytest.raises(DataError, match="no triplets"):
        load_triplets(write_json(tmp_path / "empty.json", []))
    with pytest.raises(DataError, match="JSON list"):
        load_triplets(write_json(tmp_path / "dict.json", {"candidate": "a"}))
    layout = FashionIQLayout.open(fiq_root)
    with pytest.raises(FileNotFoundError, match="prepare_dataset.py --fashioniq-root"):
        read_caption_file(layout, "all", "train")
    with pytest.raises(FileNotFoundError, match="cap.shirt.val.json"):
        read_caption_file(layout, "shirt", "val")
    with pytest.raises(ValueError, match="category"):
        layout.caption_path("skirt", "val")
    write_json(tmp_path / "empty_split" / "image_splits" / "split.dress.val.json", [])
    empty = FashionIQLayout.open(tmp_path / "empty_split", image_dir=str(fiq_root / "images"))
    with pytest.raises(DataError, match="empty image split"):
        read_image_split(empty, "dress", "val")


def test_layout_image_dir_alias_and_extension(tmp_path):
    write_image(tmp_path / "tgir_images" / "A.jpg", 0)
    layout = FashionIQLayout.open(tmp_path, image_dir="images", image_ext="jpg")
    assert layout.image_path("A") == tmp_path / "tgir_images" / "A.jpg" and layout.image_path("A").is_file()
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        FashionIQLayout.open(tmp_path, image_dir="pictures")
    with pytest.raises(ValueError, match="image_ext"):
        FashionIQLayout.open(tmp_path, image_ext=".gif")


def test_missing_image_names_file_and_entry(tmp_path, tokenizer):
    caption_file = write_json(tmp_path / "captions" / "cap.dress.val.json", VAL)
    for name in ("V01", "V02"):
        write_image(tmp_path / "images" / f"{name}.png", 0)
    layout = FashionIQLayout.open(tmp_path)
    triplets = load_triplets(caption_file)
    with pytest.raises(DataError) as err:
        TGIRQueryDataset(triplets, layout, tokenizer, lambda img: img)
    assert str(caption_file) in str(err.value) and "entry 1" in str(err.value) and "V03.png" in str(err.value)
    with pytest.raises(DataError, match="V09.png"):
        GalleryImageDataset(["V01", "V09"], layout, lambda img: img)
    with pytest.raises(DataError, match="empty gallery"):
        GalleryImageDataset([], layout, lambda img: img)


def draw_transform(img: Image.Image, rng: np.random.Generator) -> tuple[float, float]:
    """Records the image (mean pixel) and one draw from the generator it was given."""
    return float(np.asarray(img).mean()), float(rng.random())


def test_train_dataset_items_ids_and_rng(fiq_root, tokenizer):
    layout = FashionIQLayout.open(fiq_root)
    triplets = read_caption_file(layout, "dress", "train")
    ds = TGIRTrainDataset(triplets, layout, tokenizer, draw_transform, seed=3)
    assert len(ds) == 4 and ds.image_ids == {"B01": 0, "B02": 1, "B03": 2, "B04": 3, "B05": 4, "B06": 5}
    item = ds[1]
    assert set(item) == {"ref_image", "target_image", "input_ids", "attention_mask", "ref_id", "target_id", "index"}
    assert (item["ref_id"], item["target_id"], item["index"]) == (2, 1, 1)
    assert item["input_ids"].shape == (79,) and item["attention_mask"].shape == (79,)
    n = int(item["attention_mask"].sum())
    assert item["input_ids"][0] == tokenizer.cls_token_id and item["input_ids"][n - 1] != tokenizer.sep_token_id
    assert tokenizer.decode(item["input_ids"][1:n]) == triplets[1].text
    with_sep = TGIRTrainDataset(triplets, layout, tokenizer, draw_transform, add_sep=True, max_length=8)[1]
    assert with_sep["input_ids"][7] == tokenizer.sep_token_id and with_sep["attention_mask"].sum() == 8
    # reference and target use independent generators; draws depend on (seed, epoch, index) only
    assert item["ref_image"][1] != item["target_image"][1]
    assert ds[1]["ref_image"] == item["ref_image"] and ds[1]["target_image"] == item["target_image"]
    ds.set_epoch(1)
    assert ds[1]["ref_image"][1] != item["ref_image"][1]
    subset = TGIRTrainDataset(triplets, layout, tokenizer, draw_transform, seed=3, indices=[3, 1])
    assert len(subset) == 2 and subset[1]["index"] == 1 and subset[1]["ref_image"] == item["ref_image"]
    assert subset.image_ids == ds.image_ids  # ids stay dense over the whole file


def test_query_and_gallery_datasets_through_eval_loader(fiq_root, tokenizer):
    layout = FashionIQLayout.open(fiq_root)
    triplets = read_caption_file(layout, "dress", "val")
    to_tensor = lambda img: torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float()  # noqa: E731
    queries = TGIRQueryDataset(triplets, layout, tokenizer, to_tensor)
    assert queries.reference_names == ["V01", "V03"] and queries.target_names == ["V02", "V01"]
    batch = next(iter(build_eval_loader(queries, batch_size=8)))
    assert batch["ref_image"].shape == (2, 3, 8, 8) and batch["input_ids"].shape == (2, 79)
    assert batch["target_name"] == ["V02", "V01"] and batch["index"].tolist() == [0, 1]
    split_gallery = build_gallery("split", queries.reference_names, queries.target_names,
                                  read_image_split(layout, "dress", "val"))
    assert split_gallery == ["V01", "V02", "V03", "V09"]
    gallery = GalleryImageDataset(split_gallery, layout, to_tensor)
    batch = next(iter(build_eval_loader(gallery, batch_size=8)))
    assert batch["name"] == split_gallery and batch["image"].shape == (4, 3, 8, 8)


def test_heldout_split_by_reference(tmp_path):
    triplets = [Triplet(f"R{i % 37:02d}", f"T{i:03d}", ("is red",)) for i in range(200)]
    path = tmp_path / "eval_sets" / "fashioniq_heldout.json"
    split = load_or_create_heldout_triplets(path, triplets, 0.1, seed=1)
    held = {triplets[i].reference for i in split.heldout}
    train = {triplets[i].reference for i in split.train}
    assert not held & train and sorted(held) == ["R02", "R09", "R34", "R35"]  # round(0.1 x 37), the earlier draw
    assert sorted(split.train + split.heldout) == list(range(200))
    assert json.loads(path.read_text(encoding="utf-8"))["heldout_labels"] == sorted(held)
    assert load_or_create_heldout_triplets(path, triplets, 0.1, seed=1) == split
    assert load_or_create_heldout_triplets(tmp_path / "seed2.json", triplets, 0.1, seed=2) != split
    with pytest.raises(DataError, match="drawn with other options"):
        load_or_create_heldout_triplets(path, triplets, 0.2, seed=1)
    with pytest.raises(DataError, match="drawn for another data set"):
        load_or_create_heldout_triplets(path, triplets[:-1], 0.1, seed=1)
    with pytest.raises(DataError, match="cannot hold out 1 of 1"):
        load_or_create_heldout_triplets(tmp_path / "one.json", triplets[:1], 0.5)


def test_image_ids_are_dense_and_sorted():
    ts = [Triplet("z", "a", ("x",)), Triplet("m", "z", ("y",))]
    assert image_ids(ts) == {"a": 0, "m": 1, "z": 2}


def test_synthetic_fashioniq_end_to_end(tmp_path):
    synthetic = pytest.importorskip("datasets.synthetic.fashioniq")
    root = tmp_path / "fashioniq"
    synthetic.generate_fashioniq(root, image_size=16, train_triplets=12, val_triplets=8, base_images=8)
    layout = FashionIQLayout.open(root)
    g = torch.Generator().manual_seed(0)
    for mode in ("triplets", "split"):
        sets = {}
        for c in ("dress", "shirt", "toptee", "all"):
            triplets = read_caption_file(layout, c, "val")
            refs, targets = [t.reference for t in triplets], [t.target for t in triplets]
            names = build_gallery(mode, refs, targets, read_image_split(layout, c, "val") if mode == "split" else None)
            GalleryImageDataset(names, layout, lambda img: img)  # every gallery image exists
            emb = {n: torch.nn.functional.normalize(torch.randn(8, generator=g), dim=0) for n in names}
            sets[c] = QuerySet(torch.stack([emb[t] for t in targets]), refs, targets, names, emb)
        result = evaluate_tgir(sets, TGIROptions(gallery=mode, exclude_reference=True))
        assert result.metrics["all_r1"] == 100.0 and result.metrics["sum"] == 600.0
        sizes = {c: s["gallery"] for c, s in result.options["sets"].items()}
        if mode == "triplets":
            triplet_sizes = sizes
    assert all(sizes[c] > triplet_sizes[c] for c in sizes)  # distractors only in the split files
