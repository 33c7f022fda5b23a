"""Pretraining text builder: layout, masked-LM and replaced-token corruption, the three compat switches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets.fashiongen_meta import SIGN_TOKENS
from datasets.pretrain_text import (
    IGNORE,
    PretrainTextBuilder,
    PretrainTextOptions,
    attribute_value,
    expand_season,
    is_regular_token,
    replacement_count,
)
from datasets.text import load_tokenizer
from datasets.wordnet import load_wordnet
from engine.errors import DataError

NATO = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
        "quebec romeo sierra tango uniform victor whiskey xray yankee").split()
WORDS = ["the", "image", "description", "is", "category", "sub", "composition", "gender", "name", "season",
         "jackets", "and", "coats", "100", "%", "wool", ".", "men", "navy", "coat", "fall", "winter", "spring",
         "summer", "2017", "short", "long", "white", "black", "ice", "cream", "synonym", *NATO]
VOCAB = ["[PAD]", *SIGN_TOKENS, "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused9]", "[unused10]", *WORDS,
         "##s", "##ing", "##ed"]
INFO = {
    "input_description": " ".join(NATO[:20]) + ".",  # 20 distinct pieces after cleaning
    "input_category": "JACKETS & COATS",
    "input_composition": "100% wool.",
    "input_gender": "MEN",
    "input_name": "Navy Wool Coat",
    "input_season": "FW2017",
    "input_subcategory": "COATS",
}
PHRASES = {
    "the image category is jackets and coats",
    "the image composition is 100 % wool .",
    "the image gender is men",
    "the image name is navy wool coat",
    "the image season is fall winter 2017",
    "the image sub category is coats",
}
PREFIX = 4  # "the image description is"
DESC = slice(2 + PREFIX, 2 + PREFIX + 20)
SEP_POS = 2 + PREFIX + 20


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return load_tokenizer(folder)


def build(tok, seed=0, info=INFO, lexicon=None, **switches):
    builder = PretrainTextBuilder(tok, 180, PretrainTextOptions(**switches), lexicon=lexicon)
    return builder(info, np.random.default_rng(seed))


def original_ids(tok, text):
    return tok.convert_tokens_to_ids(tok.tokenize(text))


def attribute_phrases(tok, ids, mlm, start):
    """Attribute tokens with [MASK]s restored from their labels, split at every 'the image'."""
    restored = torch.where(mlm != IGNORE, mlm, ids)[start:]
    tokens = tok.convert_ids_to_tokens([i for i in restored.tolist() if i != 0])
    phrases, current = [], []
    for i, t in enumerate(tokens):
        if t == "the" and i + 1 < len(tokens) and tokens[i + 1] == "image" and current:
            phrases.append(current)
            current = []
        current.append(t)
    return [" ".join(p) for p in phrases + [current]]


def test_layout(tok):
    desc = original_ids(tok, " ".join(NATO[:20]))
    for seed in range(20):
        ids, mask, mlm, rtd = build(tok, seed)
        assert ids.shape == mask.shape == mlm.shape == rtd.shape == (180,) and ids.dtype == torch.long
        assert ids[0] == tok.cls_token_id and ids[1] == 4  # [coats_sign]; sign ids are 1..9
        assert ids[2:6].tolist() == original_ids(tok, "the image description is")
        assert (mlm[:DESC.start] == IGNORE).all()  # CLS, sign and prefix are never targets
        assert ids[SEP_POS] == tok.sep_token_id and mlm[SEP_POS] == IGNORE
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any() and (ids[n:] == 0).all()
        restored = torch.where(mlm[DESC] != IGNORE, mlm[DESC], ids[DESC])
        assert restored.tolist() == desc
        phrases = attribute_phrases(tok, ids[:n], mlm[:n], SEP_POS + 1)
        assert sorted(phrases) == sorted(PHRASES)
        # The masked span is the whole name or the whole value of the third phrase.
        attr_mlm = mlm[SEP_POS + 1 : n]
        starts = [i for i, t in enumerate(tok.convert_ids_to_tokens(torch.where(attr_mlm != IGNORE, attr_mlm,
                  ids[SEP_POS + 1 : n]).tolist())) if t == "the"]
        third = range(starts[2], starts[3])
        span = [i for i in range(len(attr_mlm)) if attr_mlm[i] != IGNORE]
        assert span and all(i in third for i in span)
        assert all(ids[SEP_POS + 1 + i] == tok.mask_token_id for i in span)
        words = phrases[2].split(" ")
        name = words[2 : words.index("is")]
        value = words[words.index("is") + 1 :]
        assert tok.convert_ids_to_tokens(attr_mlm[span].tolist()) in (name, value)


def test_labels_fixed_aligned_compat_permuted(tok):
    original = torch.tensor(original_ids(tok, " ".join(NATO[:20])))
    differs = 0
    for seed in range(30):
        f_ids, _, f_mlm, f_rtd = build(tok, seed)
        c_ids, _, c_mlm, c_rtd = build(tok, seed, mlm_label_alignment="compat")
        assert torch.equal(f_ids, c_ids) and torch.equal(f_rtd, c_rtd)
        targets = np.random.default_rng(seed).permutation(20)[:3]  # n_mask 2 + n_rep 1 of 20 pieces
        f, c = f_mlm[DESC], c_mlm[DESC]
        assert set(torch.nonzero(f != IGNORE).flatten().tolist()) == set(targets.tolist())
        assert torch.equal(f[targets], original[targets])  # fixed: label = piece at that position
        assert (f_ids[DESC][targets[:2]] == tok.mask_token_id).all()
        assert sorted(c[c != IGNORE].tolist()) == sorted(original[targets].tolist())  # a permutation
        assert torch.equal(c[np.sort(targets)], original[targets])  # shuffled order onto ascending positions
        assert torch.equal(f_mlm[SEP_POS:], c_mlm[SEP_POS:])  # attribute targets aligned in both
        differs += not torch.equal(f, c)
    assert differs > 0


def test_rtd_counts_floor_vs_ceil_and_padding_labels(tok):
    assert [replacement_count(n, "compat") for n in (0, 20, 66, 67, 134)] == [0, 0, 0, 1, 2]
    assert [replacement_count(n, "fixed") for n in (0, 1, 20, 67, 134)] == [0, 1, 1, 2, 3]
    ids, mask, _, rtd = build(tok, 3, rtd_sampling="compat")
    assert (rtd == 0).all()  # floor(0.015 * 20) = 0 positives, 0 on padding and specials
    ids, mask, _, rtd = build(tok, 3, rtd_sampling="fixed")
    n = int(mask.sum())
    assert int((rtd == 1).sum()) == 1 and DESC.start <= int(torch.nonzero(rtd == 1)) < DESC.stop
    assert rtd[[0, 1, SEP_POS]].tolist() == [IGNORE] * 3 and (rtd[n:] == IGNORE).all()
    real = torch.ones(180, dtype=torch.bool)
    real[[0, 1, SEP_POS]] = False
    real[n:] = False
    assert set(rtd[real].tolist()) == {0, 1}
    long_info = dict(INFO, input_description=" ".join(NATO * 3)[: -len(" yankee") * 5])  # 70 pieces
    assert int((build(tok, 0, long_info, rtd_sampling="compat")[3] == 1).sum()) == 1
    assert int((build(tok, 0, long_info, rtd_sampling="fixed")[3] == 1).sum()) == 2


def replaced_tokens(tok, seeds, **switches):
    info = dict(INFO, input_description=" ".join(NATO * 4))  # 100 pieces: compat 1, fixed 2 replaced
    out = []
    for seed in seeds:
        ids, _, mlm, rtd = build(tok, seed, info, **switches)
        for pos in torch.nonzero(rtd == 1).flatten().tolist():
            out.append((int(ids[pos]), int(mlm[pos])))
    return out


def test_rtd_vocab_fixed_regular_only_compat_whole_vocabulary(tok):
    fixed = replaced_tokens(tok, range(150), rtd_vocab="fixed")
    assert len(fixed) == 300
    assert all(is_regular_token(tok.convert_ids_to_tokens(i)) and i != orig for i, orig in fixed)
    compat = replaced_tokens(tok, range(150), rtd_vocab="compat", rtd_sampling="compat")
    assert len(compat) == 150
    assert any(not is_regular_token(tok.convert_ids_to_tokens(i)) for i, _ in compat)  # specials, ## pieces


class FakeLexicon:
    def __init__(self, antonyms=None, synonyms=None):
        self._antonyms, self._synonyms = antonyms or {}, synonyms or {}

    def antonyms(self, word):
        return self._antonyms.get(word, [])

    def synonyms(self, word):
        return self._synonyms.get(word, [])


class AntonymBranch:
    """Generator stand-in: the coin always picks the antonym branch, indices come from `picks`."""

    def __init__(self, *picks):
        self.picks = list(picks)

    def random(self):
        return 0.9

    def integers(self, low, high=None):
        return self.picks.pop(0) if self.picks else low


def test_antonym_replacement_compat_and_fixed(tok):
    lex = FakeLexicon({"long": ["short"], "black": ["white", "ice_cream"], "navy": ["yankee_doodle"]})
    vid = tok.convert_tokens_to_ids
    fixed = PretrainTextBuilder(tok, 180, PretrainTextOptions(), lexicon=lex)
    compat = PretrainTextBuilder(tok, 180, PretrainTextOptions("compat", "compat", "compat"), lexicon=lex)
    assert fixed._replacement("long", vid("long"), AntonymBranch()) == vid("short")
    assert compat._replacement("long", vid("long"), AntonymBranch()) == vid("short")
    # A multiword antonym: compat inserts the lemma string as one token ([UNK]); fixed tokenises it, finds
    # two pieces and falls back to a random regular token.
    assert compat._replacement("black", vid("black"), AntonymBranch(1)) == tok.unk_token_id
    fallback = fixed._replacement("black", vid("black"), AntonymBranch(1, 0))
    assert fallback == int(fixed.regular_ids[0]) and is_regular_token(tok.convert_ids_to_tokens(fallback))
    # No antonym: compat keeps the piece, fixed draws a random regular token.
    assert compat._replacement("tango", vid("tango"), AntonymBranch()) == vid("tango")
    assert fixed._replacement("tango", vid("tango"), AntonymBranch(0)) != vid("tango")
    # no-wordnet mode: the antonym branch falls back to a random token.
    plain = PretrainTextBuilder(tok, 180, PretrainTextOptions())
    assert plain.lexicon is None and plain._replacement("long", vid("long"), AntonymBranch(0)) != vid("long")


def test_synonym_swap_first_attribute_only_and_unlabelled(tok):
    words = {w for phrase in PHRASES for w in phrase.split()[3:]}
    lex = FakeLexicon(synonyms={w: ["synonym"] for w in words})
    swapped = 0
    for seed in range(40):
        ids, mask, mlm, _ = build(tok, seed, lexicon=lex)
        n = int(mask.sum())
        phrases = attribute_phrases(tok, ids[:n], mlm[:n], SEP_POS + 1)
        assert all("synonym" not in p for p in phrases[1:])
        assert "synonym" not in tok.convert_ids_to_tokens([int(i) for i in mlm[mlm != IGNORE]])
        swapped += "synonym" in phrases[0]
        ids0, mask0, mlm0, _ = build(tok, seed)  # no WordNet: nothing swapped
        n0 = int(mask0.sum())
        assert sorted(attribute_phrases(tok, ids0[:n0], mlm0[:n0], SEP_POS + 1)) == sorted(PHRASES)
    assert 0 < swapped < 40


def test_deterministic_per_seed(tok):
    a, b = build(tok, 7), build(tok, 7)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(not torch.equal(a[0], build(tok, s)[0]) or not torch.equal(a[2], build(tok, s)[2])
               for s in range(8, 14))


def test_truncation_keeps_first_shuffled_targets_in_compat(tok):
    info = dict(INFO, input_description=" ".join(NATO * 12))  # 300 pieces, cut at 180
    original = torch.tensor(original_ids(tok, info["input_description"]))
    fixed = build(tok, 1, info)
    compat = build(tok, 1, info, mlm_label_alignment="compat")
    for ids, mask, _, _ in (fixed, compat):
        assert mask.all() and tok.sep_token_id not in ids.tolist()
    order = np.random.default_rng(1).permutation(300)
    targets = order[: 36 + 5]  # floor(0.12 * 300) masked + ceil(0.015 * 300) replaced
    kept = np.sort(targets[targets < 180 - DESC.start])
    f, c = fixed[2][DESC.start :], compat[2][DESC.start :]
    assert torch.equal(f[kept], original[kept])
    assert torch.equal(c[kept], original[targets[: kept.size]])


def test_attribute_values_and_seasons():
    assert expand_season("SS2017") == "spring summer 2017"
    assert expand_season(" fw2015 ") == "fall winter 2015"
    assert expand_season("Resort 2016") == "resort 2016"
    assert attribute_value("input_category", "DUFFLE & TOP HANDLE BAGS") == "duffle and top handle bags"
    assert attribute_value("input_season", "FW2017") == "fall winter 2017"


def test_options_and_errors(tok, tmp_path):
    with pytest.raises(ValueError, match="rtd_sampling"):
        PretrainTextOptions(rtd_sampling="legacy")
    with pytest.raises(DataError, match="has no sign"):
        build(tok, 0, dict(INFO, input_category="CAPES"))
    with pytest.raises(DataError, match="input_season"):
        build(tok, 0, {k: v for k, v in INFO.items() if k != "input_season"})
    missing = tmp_path / "nltk_data"
    with pytest.raises(DataError, match="WordNet folder does not exist.*nltk_data"):
        PretrainTextBuilder(tok, 180, PretrainTextOptions(wordnet_path=str(missing)))
    missing.mkdir()
    try:
        import nltk  # noqa: F401

        expected = "WordNet not found in .*nltk_data.*corpora/wordnet"
    except ImportError:
        expected = "pip install nltk"
    with pytest.raises(DataError, match=expected):
        load_wordnet(str(missing))


def write_tiny_wordnet(folder):
    """A two-synset WordNet database (long/lengthy <-> short antonyms) in the NLTK file format."""

    def line(offset, words, target):
        w = " ".join(f"{x} 0" for x in words)
        return f"{offset:08d} 00 a {len(words):02x} {w} 001 ! {target:08d} a 0101 | gloss  \n"

    second = len(line(0, ["long", "lengthy"], 0))
    (folder / "data.adj").write_text(line(0, ["long", "lengthy"], second) + line(second, ["short"], 0))
    (folder / "index.adj").write_text(
        f"lengthy a 1 0 1 0 00000000\nlong a 1 1 ! 1 0 00000000\nshort a 1 1 ! 1 0 {second:08d}\n")
    for pos in ("noun", "verb", "adv"):
        (folder / f"data.{pos}").write_text("")
        (folder / f"index.{pos}").write_text("")
    for pos in ("adj", "noun", "verb", "adv"):
        (folder / f"{pos}.exc").write_text("")
    (folder / "index.sense").write_text("")
    (folder / "lexnames").write_text("00\tadj.all\t3\n")


def test_wordnet_from_local_nltk_folder(tok, tmp_path):
    pytest.importorskip("nltk")
    corpus = tmp_path / "nltk_data" / "corpora" / "wordnet"
    corpus.mkdir(parents=True)
    write_tiny_wordnet(corpus)
    lexicon = load_wordnet(str(tmp_path / "nltk_data"))
    assert lexicon.antonyms("long") == ["short"] and lexicon.synonyms("long") == ["lengthy"]
    assert lexicon.antonyms("alpha") == []
    builder = PretrainTextBuilder(tok, 180, PretrainTextOptions(wordnet_path=str(tmp_path / "nltk_data")))
    vid = tok.convert_tokens_to_ids
    assert builder._replacement("long", vid("long"), AntonymBranch()) == vid("short")
