"""Fashion-FINE-on-BLIP data: tokenizer with [DEC]/[ENC] and sign tokens, caption layouts (compat/fixed,
compat.blip_sign_token), annotation records and their errors, training items, evaluation sets."""

from __future__ import annotations

import json

import pytest
import torch

from datasets.fashiongen_blip import (
    BlipCaptions,
    BlipEvalSet,
    BlipTrainAnnotation,
    FashionGenBlipTrainDataset,
    image_subcategories,
    load_blip_tokenizer,
    split_sign,
)
from datasets.fashiongen_meta import SIGN_TOKENS
from engine.errors import DataError
from tests.blip_helpers import synthetic_blip_data

SPECIAL = ["[PAD]", *(f"[unused{i}]" for i in range(9)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["wool", "coat", "in", "navy", "coats", "_", "sign", "red", "shirt", "##s"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return synthetic_blip_data(tmp_path_factory.mktemp("blipdata"), image_size=32, train_products=30,
                               val_products=24)


def write_vocab(folder, tokens):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def stock_vocab(tmp_path):
    """A bert-base-uncased-like vocabulary: [unused0..8] at ids 1..9, no sign tokens."""
    return write_vocab(tmp_path / "stock", SPECIAL + WORDS)


def test_tokenizer_adds_dec_enc_and_optionally_the_signs(stock_vocab, tmp_path):
    base = len(SPECIAL + WORDS)
    tok = load_blip_tokenizer(stock_vocab)
    assert len(tok) == base + 2  # 30522 -> 30524 for the real file
    assert tok.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [base, base + 1] and tok.enc_token_id == base + 1
    assert tok.bos_token_id == base
    signs = load_blip_tokenizer(stock_vocab, sign_tokens=True)
    assert len(signs) == base + 11 and signs.convert_tokens_to_ids(list(SIGN_TOKENS)) == list(range(base + 2, base + 11))
    fashion = write_vocab(tmp_path / "fashion", ["[PAD]", *SIGN_TOKENS, *SPECIAL[10:], *WORDS])
    tok = load_blip_tokenizer(fashion, sign_tokens=True)  # signs already at ids 1..9: nothing added for them
    assert len(tok) == base + 2 and tok.convert_tokens_to_ids("[coats_sign]") == 4
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        load_blip_tokenizer(tmp_path / "nowhere")


def test_split_sign():
    assert split_sign("coats_sign Wool coat in navy.") == ("[coats_sign]", "Wool coat in navy.")
    assert split_sign("Wool coat in navy.") == (None, "Wool coat in navy.")
    assert split_sign("hats_sign hat") == (None, "hats_sign hat")  # not one of the nine signs


def test_caption_layouts_compat_and_fixed(stock_vocab):
    caption = "coats_sign Wool coat (in) navy."
    compat = BlipCaptions(load_blip_tokenizer(stock_vocab), max_length=12)
    ids, mask = compat.encode(caption)
    tok = compat.tokenizer
    # published: the sign word is split by the tokenizer, position 1 holds "coats"
    assert tok.convert_ids_to_tokens(ids[: int(mask.sum())].tolist()) == [
        "[CLS]", "coats", "_", "sign", "wool", "coat", "in", "navy", "[SEP]"]
    assert torch.equal(compat.encode(caption, keep_sign=False)[0], ids)  # compat keeps it in queries too
    fixed = BlipCaptions(load_blip_tokenizer(stock_vocab, sign_tokens=True), max_length=12, sign_tokens=True)
    ids, mask = fixed.encode(caption)
    assert fixed.tokenizer.convert_ids_to_tokens(ids[: int(mask.sum())].tolist()) == [
        "[CLS]", "[coats_sign]", "wool", "coat", "in", "navy", "[SEP]"]
    ids, mask = fixed.encode(caption, keep_sign=False)  # evaluation queries: sign stripped
    assert fixed.tokenizer.convert_ids_to_tokens(ids[: int(mask.sum())].tolist()) == [
        "[CLS]", "wool", "coat", "in", "navy", "[SEP]"]
    assert ids.shape == (12,) and mask[6:].sum() == 0 and ids[6:].sum() == 0


def test_train_annotation_dense_ids_and_errors(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([{"image": "7_0.png", "caption": "a", "image_id": 7},
                                {"image": "9_0.png", "caption": "b", "image_id": 9},
                                {"image": "7_1.png", "caption": "c", "image_id": 7}]))
    ann = BlipTrainAnnotation.load(path)
    assert ann.labels.tolist() == [0, 1, 0] and ann.image_ids == [7, 9]
    assert ann.product_records() == [[0, 2], [1]] and ann.records_of([1]).tolist() == [1]
    with pytest.raises(DataError, match="record 0 has no sign prefix"):
        ann.require_signs()
    path.write_text(json.dumps([{"image": "7_0.png", "caption": "a", "image_id": 7}, {"image": "x.png", "caption": "d"}]))
    with pytest.raises(DataError, match=r"train.json: record 1 has no 'image_id'"):
        BlipTrainAnnotation.load(path)
    path.write_text(json.dumps([{"image": "x.png", "caption": 3, "image_id": 1}]))
    with pytest.raises(DataError, match=r"record 0: 'caption' has type int"):
        BlipTrainAnnotation.load(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match="not a JSON file"):
        BlipTrainAnnotation.load(path)
    with pytest.raises(FileNotFoundError, match="--extract-images"):
        BlipTrainAnnotation.load(tmp_path / "missing.json")


def test_train_items_from_the_prepared_files(synthetic):
    data, tokenizer = synthetic
    tok = load_blip_tokenizer(tokenizer, sign_tokens=True)
    captions = BlipCaptions(tok, max_length=48, sign_tokens=True)
    ann = BlipTrainAnnotation.load(data / "annotation/fashiongen_train_symbol.json")
    ann.require_signs()
    ds = FashionGenBlipTrainDataset(ann, data / "images", captions, image_res=40, seed=3)
    item = ds[5]
    assert item["image"].shape == (3, 40, 40) and item["input_ids"].shape == (48,)
    assert int(item["input_ids"][1]) in [tok.convert_tokens_to_ids(s) for s in SIGN_TOKENS]
    assert int(item["product_idx"]) == int(ann.labels[5])
    assert torch.equal(ds[5]["image"], item["image"])  # same epoch: same augmentation
    ds.set_epoch(1)
    assert not torch.equal(ds[5]["image"], item["image"])
    ann.images[0] = "absent.png"
    with pytest.raises(FileNotFoundError, match=r"absent.png \(listed in .*record 0\)"):
        ds[0]


def test_eval_set_from_test_annotation(synthetic):
    data, tokenizer = synthetic
    records = json.loads((data / "annotation/fashiongen_test_symbol.json").read_text())
    info = data / "validation/info_data.json"
    for sign_tokens, has_sign in ((True, False), (False, True)):
        tok = load_blip_tokenizer(tokenizer, sign_tokens=sign_tokens)
        captions = BlipCaptions(tok, max_length=48, sign_tokens=sign_tokens)
        eval_set = BlipEvalSet.from_test_annotation(data / "annotation/fashiongen_test_symbol.json", data / "images",
                                                    captions, image_res=32, info_data=info)
        assert eval_set.text_has_sign is has_sign  # fixed strips the sign from queries
    assert eval_set.num_products == len(records) == 24
    assert eval_set.num_images == sum(len(r["image"]) for r in records)
    assert eval_set.product_rows[1][0] == len(records[0]["image"])
    assert eval_set.product_ids == [int(r["image"][0].split("_")[0]) for r in records]
    table = image_subcategories(info)
    assert eval_set.row_subcategory == [table[n] for r in records for n in r["image"]]
    assert eval_set.images[0]["image"].shape == (3, 32, 32)
    assert eval_set.texts[0]["input_ids"].shape == (48,)


def test_heldout_eval_set_from_train_products(synthetic):
    data, tokenizer = synthetic
    captions = BlipCaptions(load_blip_tokenizer(tokenizer, True), max_length=48, sign_tokens=True)
    ann = BlipTrainAnnotation.load(data / "annotation/fashiongen_train.json")
    eval_set = BlipEvalSet.from_train_products(ann, [3, 1], data / "images", captions, image_res=32,
                                               info_data=data / "train/info_data.json")
    groups = ann.product_records()
    assert eval_set.image_names == [ann.images[r] for p in (1, 3) for r in groups[p]]
    assert len(eval_set.row_subcategory) == eval_set.num_images
