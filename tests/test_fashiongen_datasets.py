"""FashionGen datasets on a small synthetic set: split index, pretraining / CMR / evaluation items (also on
a held-out slice), lazy per-process HDF5 handles in a 2-worker DataLoader."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch
from torch.utils.data import DataLoader

import prepare_dataset
from datasets.fashiongen import (
    FashionGenCMRTrainDataset,
    FashionGenEvalSet,
    FashionGenPretrainDataset,
    FashionGenSplit,
)
from datasets.heldout import draw_heldout
from datasets.pretrain_text import PretrainTextOptions
from datasets.synthetic.__main__ import main as synthetic_main
from datasets.text import CMR_PREFIX, encode_fixed_length, load_tokenizer, pre_caption
from datasets.transforms import TrainTransform
from engine.errors import DataError
from engine.seeding import item_rng
from evaluation.cmr import ProductIndex
from scripts import build_vocab

RES = 32


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("fg")
    assert synthetic_main(["fashiongen", "--out", str(out), "--image-size", "32", "--train-products", "30",
                           "--val-products", "24", "--quiet"]) == 0
    data = out / "fashiongen"
    assert prepare_dataset.main(["--data-root", str(data), "--quiet"]) == 0
    assert build_vocab.main(["from-captions", "--data-root", str(data), "--out", str(out / "tok")]) == 0
    return data


@pytest.fixture(scope="module")
def tok(root):
    return load_tokenizer(root.parent / "tok")


@pytest.fixture(scope="module")
def train(root):
    return FashionGenSplit(root, "train")


@pytest.fixture(scope="module")
def test_split(root):
    return FashionGenSplit(root, "test")


def info_data(root, split):
    return json.loads((root / split / "info_data.json").read_text(encoding="utf-8"))


def test_split_index_matches_prepared_files(root, train, test_split):
    assert test_split.split == "validation"
    for split, name in ((train, "train"), (test_split, "validation")):
        info = info_data(root, name)
        groups = json.loads((root / name / "productid_list.json").read_text())
        assert split.num_rows == len(info) and split.num_products == len(groups)
        assert split.product_ids.tolist() == [pid for pid, _ in groups]
        for p, (_, rows) in enumerate(groups):
            assert list(split.product_rows(p)) == rows
            assert all(split.row_product[r] == p for r in rows)
        assert [split.row_subcategory(r) for r in range(split.num_rows)] == [x["input_subcategory"] for x in info]
        assert split.description(5) == info[5]["input_description"]
    assert not FashionGenSplit(root, "val")._h5.is_open  # the constructor closes its file


def test_missing_or_stale_product_list(root, tmp_path):
    copy = tmp_path / "fg"
    shutil.copytree(root, copy)
    (copy / "train" / "productid_list.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"productid_list\.json.*python prepare_dataset\.py --data-root"):
        FashionGenSplit(copy, "train")
    groups = json.loads((root / "train" / "productid_list.json").read_text())
    groups[0][0] += 1  # another product id than the HDF5 file holds
    (copy / "train" / "productid_list.json").write_text(json.dumps(groups))
    with pytest.raises(DataError, match="stale: re-run `python prepare_dataset.py --data-root"):
        FashionGenSplit(copy, "train")


def test_pretrain_dataset_items(train, tok):
    held = draw_heldout(train.num_products, 4, seed=0)
    keep = [p for p in range(train.num_products) if p not in held]
    ds = FashionGenPretrainDataset(train, tok, image_res=RES, products=keep, seed=1)
    rows = [r for p in keep for r in train.product_rows(p)]
    assert len(ds) == len(rows) and ds.rows.tolist() == rows
    item = ds[3]
    assert set(item) == {"image", "input_ids", "attention_mask", "mlm_labels", "rtd_labels", "product_idx"}
    assert item["image"].shape == (3, RES, RES) and item["image"].dtype == torch.float32
    for key in ("input_ids", "attention_mask", "mlm_labels", "rtd_labels"):
        assert item[key].shape == (180,) and item[key].dtype == torch.long
    assert item["product_idx"].dtype == torch.long and item["product_idx"].shape == ()
    assert int(item["product_idx"]) == train.row_product[rows[3]] and int(item["product_idx"]) not in held
    assert int(item["input_ids"][1]) in range(1, 10)  # sign token
    assert (item["mlm_labels"] != -100).any()
    again = ds[3]
    assert all(torch.equal(item[k], again[k]) for k in item)
    ds.set_epoch(1)
    other = ds[3]
    assert not torch.equal(item["image"], other["image"]) or not torch.equal(item["input_ids"], other["input_ids"])
    compat = FashionGenPretrainDataset(train, tok, image_res=RES, seed=1,
                                       text_options=PretrainTextOptions("compat", "compat", "compat"))
    assert (compat[0]["rtd_labels"] != -100).all()  # compat RTD labels: 0 on padding too


def test_cmr_train_dataset_one_item_per_product(train, tok):
    ds = FashionGenCMRTrainDataset(train, tok, image_res=RES, seed=2)
    legacy = FashionGenCMRTrainDataset(train, tok, image_res=RES, seed=2, legacy_tokenization=True)
    assert len(ds) == train.num_products
    p = next(p for p in range(train.num_products) if len(train.product_rows(p)) > 1)
    chosen = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        legacy.set_epoch(epoch)
        item, old = ds[p], legacy[p]
        assert set(item) == {"image", "input_ids", "attention_mask", "product_idx"} and int(item["product_idx"]) == p
        row_rng, image_rng = item_rng(2, epoch, p).spawn(2)
        rows = train.product_rows(p)
        row = rows[int(row_rng.integers(0, len(rows)))]
        chosen.add(row)
        assert torch.equal(item["image"], TrainTransform(RES)(train.read_image(row), image_rng))
        pieces = tok.convert_tokens_to_ids(tok.tokenize(pre_caption(CMR_PREFIX + train.description(row))))
        n = int(item["attention_mask"].sum())
        assert item["input_ids"][:n].tolist() == [tok.cls_token_id, *pieces, tok.sep_token_id]  # fixed text_layout
        assert old["input_ids"][: int(old["attention_mask"].sum())].tolist() == [tok.cls_token_id, *pieces]
        assert torch.equal(item["image"], old["image"])
    assert len(chosen) > 1  # a different pose in some epoch


def test_eval_set_full_test_split(test_split, tok, root):
    ev = FashionGenEvalSet(test_split, tok, image_res=48)
    info = info_data(root, "validation")
    assert ev.num_images == test_split.num_rows and ev.num_products == test_split.num_products
    assert sum(ev.product_rows, []) == list(range(ev.num_images))
    assert ProductIndex.build(ev.product_rows, ev.num_images).num_products == ev.num_products
    assert ev.row_subcategory == [x["input_subcategory"] for x in info]
    image = ev.images[7]
    assert image["image"].shape == (3, 48, 48) and int(image["row"]) == 7 and int(image["index"]) == 7
    p = 3
    first = ev.product_rows[p][0]
    text = CMR_PREFIX + pre_caption(info[first]["input_description"])
    ids, mask = encode_fixed_length(tok, [text], 180, add_sep=True)
    item = ev.texts[p]
    assert torch.equal(item["input_ids"], ids[0]) and torch.equal(item["attention_mask"], mask[0])
    assert int(item["input_ids"][int(mask.sum()) - 1]) == tok.sep_token_id


def test_eval_set_on_heldout_train_products(train, tok):
    held = draw_heldout(train.num_products, 5, seed=0)
    ev = FashionGenEvalSet(train, tok, products=list(reversed(held)), image_res=RES)
    assert ev.products.tolist() == held and ev.product_ids == train.product_ids[held].tolist()
    rows = [r for p in held for r in train.product_rows(p)]
    assert ev.rows.tolist() == rows and ev.num_images == len(rows)
    assert sum(ev.product_rows, []) == list(range(len(rows)))  # evaluation-image index space
    assert [len(g) for g in ev.product_rows] == [len(train.product_rows(p)) for p in held]
    assert ev.row_subcategory == [train.row_subcategory(r) for r in rows]
    assert int(ev.images[0]["row"]) == rows[0] and int(ev.images[0]["index"]) == 0
    with pytest.raises(DataError, match="no products selected"):
        FashionGenEvalSet(train, tok, products=[])
    with pytest.raises(DataError, match="must be in"):
        FashionGenEvalSet(train, tok, products=[train.num_products])
    with pytest.raises(DataError, match="more than once"):
        FashionGenEvalSet(train, tok, products=[1, 1])


def test_pickling_drops_handle_and_two_worker_loader_matches(train, tok):
    ds = FashionGenPretrainDataset(train, tok, image_res=RES, seed=4)
    expected = [ds[i] for i in range(8)]  # opens the file in this process
    assert train._h5.is_open
    clone = pickle.loads(pickle.dumps(ds))
    assert not clone.split._h5.is_open and "_file" not in pickle.dumps(train._h5).decode("latin-1")
    assert torch.equal(clone[2]["input_ids"], expected[2]["input_ids"])
    loader = DataLoader(ds, batch_size=2, num_workers=2, sampler=list(range(8)))
    got = list(loader)
    assert train._h5.is_open is False  # closed before the workers were forked
    for b, batch in enumerate(got):
        for k in expected[0]:
            assert torch.equal(batch[k], torch.stack([expected[2 * b][k], expected[2 * b + 1][k]]))
    ev = FashionGenEvalSet(train, tok, image_res=RES)
    images = torch.cat([b["image"] for b in DataLoader(ev.images, batch_size=16, num_workers=2)])
    assert images.shape == (ev.num_images, 3, RES, RES)
    assert torch.equal(images[5], ev.images[5]["image"])
