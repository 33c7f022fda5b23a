"""Caption cleaning, prefixes, sign tokens, tokenizer loading and the vocabulary builder."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from datasets.fashiongen_meta import (
    SIGN_TOKENS,
    categories,
    category_to_sign,
    sign_for_category,
    subcategories,
)
from datasets.text import (
    CMR_PREFIX,
    encode_fixed_length,
    join_fashioniq_captions,
    load_tokenizer,
    pre_caption,
    pre_caption_blip,
)
from engine.errors import DataError
from scripts import build_vocab


def test_pre_caption_spec_example_and_rules():
    assert pre_caption("Long-sleeve shirt in white.<br>Men's fit") == "long sleeve shirt in white mens fit"
    assert pre_caption("  Is it (really) red?!  ") == "is it really red?"
    assert pre_caption("A/B <person> 100% cotton & silk: é\n") == "a b person 100% cotton & silk é"
    assert pre_caption('x,.\'!"()*#:;~y') == "xy"
    assert pre_caption("one two three four", max_words=2) == "one two"


def test_pre_caption_blip_keeps_commas_apostrophes_hyphens():
    assert pre_caption_blip("Men's long-sleeve shirt, white. Slim (fit)!") == "men's long-sleeve shirt, white slim fit"
    assert len(pre_caption_blip("w " * 300).split(" ")) == 180


def test_fashioniq_join():
    assert join_fashioniq_captions(["Is red instead of blue.", "has stripes"]) == (
        "the difference between two images are is red instead of blue and has stripes")


def test_category_tables():
    assert len(categories()) == 48 and len(subcategories()) == 121
    table = category_to_sign()
    assert len(table) == 48 and set(table) == set(categories())
    counts = {s: sum(v == s for v in table.values()) for s in SIGN_TOKENS}
    assert [counts[s] for s in SIGN_TOKENS] == [3, 3, 1, 1, 3, 10, 11, 13, 3]
    assert sign_for_category("  JACKETS & COATS ") == "[coats_sign]"
    assert sign_for_category("Suits\t& Blazers") == "[dresses_sign]"
    with pytest.raises(DataError, match="'capes' has no sign"):
        sign_for_category("capes")


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    descriptions = ["Long sleeve striped shirt in navy.<br>Button closure.", "Wool coat in café brown. Two pockets."]
    with h5py.File(root / "fashiongen_256_256_train.h5", "w") as f:
        f["input_description"] = np.array([[d.encode("latin-1")] for d in descriptions])
        f["input_category"] = np.array([[b"SHIRTS"], [b"JACKETS & COATS"]])
    (root / "fiq" / "captions").mkdir(parents=True)
    (root / "fiq" / "captions" / "cap.dress.train.json").write_text(
        json.dumps([{"candidate": "a", "target": "b", "captions": ["is red instead of blue", "has dots"]}]))
    out = root / "tok"
    assert build_vocab.main(["from-captions", "--data-root", str(root), "--out", str(out)]) == 0
    return out


def test_built_vocab_has_signs_at_1_to_9_and_covers_captions(vocab_dir):
    tok = load_tokenizer(vocab_dir)
    assert tok.convert_tokens_to_ids(list(SIGN_TOKENS)) == list(range(1, 10))
    assert tok.pad_token_id == 0
    pieces = tok.tokenize("[coats_sign] " + pre_caption(CMR_PREFIX + "Wool coat in café brown. has dots"))
    assert pieces[0] == "[coats_sign]" and "[UNK]" not in pieces


def test_encode_layouts(vocab_dir):
    tok = load_tokenizer(vocab_dir)
    ids, mask = encode_fixed_length(tok, ["wool coat", "navy " * 50], max_length=8)
    cls, sep = tok.cls_token_id, tok.sep_token_id
    assert ids[0, 0] == cls and ids[0, 3] == sep and ids[0, 4:].tolist() == [0] * 4
    assert mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert ids[1, -1] == sep and mask[1].all()
    legacy, _ = encode_fixed_length(tok, ["wool coat", "navy " * 50], max_length=8, add_sep=False)
    assert legacy[0, :3].tolist() == ids[0, :3].tolist() and legacy[0, 3] == 0
    assert sep not in legacy[1].tolist() and legacy[1, 0] == cls
    signed, _ = encode_fixed_length(tok, ["wool coat"], max_length=8, prefix_tokens=[["[coats_sign]"]])
    assert signed[0, :2].tolist() == [cls, 4] and signed[0, 4] == sep


def test_missing_vocab_names_file_and_command(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_tokenizer(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "vocab.txt") in str(err.value)
    assert "scripts/build_vocab.py" in str(err.value)


def test_vocab_with_signs_elsewhere_is_rejected(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *SIGN_TOKENS]))
    with pytest.raises(DataError, match=r"sign tokens must have ids 1..9 \(\[tops_sign\] at 5"):
        load_tokenizer(tmp_path)


def test_from_bert_renames_unused_tokens(tmp_path):
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += [f"word{i}" for i in range(build_vocab.BERT_BASE_VOCAB_SIZE - len(tokens))]
    bert = tmp_path / "bert_vocab.txt"
    bert.write_text("\n".join(tokens) + "\n")
    out = tmp_path / "fine"
    assert build_vocab.main(["from-bert", "--bert-vocab", str(bert), "--out", str(out)]) == 0
    tok = load_tokenizer(out)
    assert len(tok) == 30522 and tok.convert_tokens_to_ids("[others_sign]") == 9
    assert tok.convert_tokens_to_ids("[unused9]") == 10 and tok.cls_token_id == 101
    short = tmp_path / "short.txt"
    short.write_text("[PAD]\n")
    assert build_vocab.main(["from-bert", "--bert-vocab", str(short), "--out", str(out)]) == 2


def test_from_captions_without_data_fails_clearly(tmp_path, capsys):
    assert build_vocab.main(["from-captions", "--data-root", str(tmp_path), "--out", str(tmp_path / "t")]) == 2
    assert "python -m datasets.synthetic all" in capsys.readouterr().err


def test_vocab_from_captions_is_deterministic(vocab_dir, tmp_path):
    data_root = vocab_dir.parent
    assert build_vocab.main(["from-captions", "--data-root", str(data_root), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "vocab.txt").read_bytes() == (vocab_dir / "vocab.txt").read_bytes()
