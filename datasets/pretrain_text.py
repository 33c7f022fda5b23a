"""Pretraining text of one FashionGen row: layout, masked-LM and replaced-token corruption, compat switches.

Layout (length `max_length`, 180): `[CLS]`, sign token of the row's category, pieces of "the image
description is" + corrupted description pieces, `[SEP]`, six attribute phrases "the image <name> is
<value>" in shuffled order (the third with its name or value replaced by `[MASK]` pieces), truncated, then
`[PAD]`. Description corruption: of the L description pieces (prefix excluded), the first floor(0.12 L)
positions of a shuffle become `[MASK]`, the next n_rep are replaced (50/50 random token / WordNet antonym)
and flagged for replaced-token detection (RTD); both groups are masked-LM targets.

Compat switches (`compat` = published code, `fixed` = default; docs/compat.md):
  mlm_label_alignment       compat: description labels placed in ascending position order while the
                            targets are in shuffled order (permuted labels); fixed: label = original piece.
  rtd_sampling              compat: n_rep = floor(0.015 L), RTD label 0 on every other position incl.
                            padding; fixed: n_rep = ceil(0.015 L) (>= 1 when L >= 1), RTD label -100 on
                            `[CLS]`, sign, `[SEP]` and padding.
  rtd_vocab                 compat: random replacements from the whole vocabulary, antonym lemma strings
                            inserted as one token (often `[UNK]`), kept unchanged when no antonym exists;
                            fixed: regular whole-word entries only (never the original piece), antonyms
                            tokenised and used when they are one regular piece, else a random regular token.
Without WordNet (`wordnet_path` None, the `no-wordnet` mode) antonym replacement falls back to a random
token (of the mode's vocabulary) and synonym swapping is skipped.

Random draws, in order, all from the given generator: description shuffle; per replaced position a coin
(< 0.5: random token) then the token or antonym index; attribute shuffle; the name/value coin of the
third phrase (< 0.5: name); per word of the first attribute value (WordNet only) a uniform (< 0.15: swap)
and the synonym index.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from datasets.fashiongen_meta import sign_for_category
from datasets.text import pre_caption
from datasets.wordnet import Lexicon, load_wordnet
from engine.errors import DataError

COMPAT, FIXED = "compat", "fixed"
SWITCH_VALUES: tuple[str, ...] = (COMPAT, FIXED)
MAX_LENGTH = 180
MASK_FRACTION = 0.12  # 15 % x 80 %
REPLACE_FRACTION = 0.015  # 15 % x 10 %
SYNONYM_PROB = 0.15
IGNORE = -100
DESCRIPTION_PREFIX = "the image description is"
DESCRIPTION_KEY = "input_description"
CATEGORY_KEY = "input_category"
SEASON_KEY = "input_season"
# (HDF5 key, name in the phrase) of the six attributes, in the order they are shuffled from.
ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("input_category", "category"),
    ("input_composition", "composition"),
    ("input_gender", "gender"),
    ("input_name", "name"),
    ("input_season", "season"),
    ("input_subcategory", "sub category"),
)
INFO_KEYS: tuple[str, ...] = (DESCRIPTION_KEY, *(key for key, _ in ATTRIBUTES))
MASKED_ATTRIBUTE = 2  # the third phrase in shuffled order
SEASONS = {"SS": "spring summer", "FW": "fall winter"}

PretrainText = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class PretrainTextOptions:
    """Compat switches (each `compat` or `fixed`, docs/compat.md) and the optional local WordNet folder."""

    mlm_label_alignment: str = FIXED
    rtd_sampling: str = FIXED
    rtd_vocab: str = FIXED
    wordnet_path: str | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "wordnet_path" and value not in SWITCH_VALUES:
                raise ValueError(f"{f.name} must be one of {SWITCH_VALUES}, got {value!r}")

def expand_season(value: str) -> str:
    """`SS2017` -> `spring summer 2017`, `FW2017` -> `fall winter 2017`; other values lower-cased as they are."""
    value = value.strip()
    prefix = SEASONS.get(value[:2].upper())
    if prefix is not None and value[2:].strip().isdigit():
        return f"{prefix} {value[2:].strip()}"
    return value.lower()


def attribute_value(key: str, raw: str) -> str:
    """Attribute value as written in its phrase: lower case, `&` -> `and`, seasons expanded."""
    if key == SEASON_KEY:
        return expand_season(raw)
    return " ".join(raw.lower().replace("&", " and ").split())


def replacement_count(num_pieces: int, rtd_sampling: str) -> int:
    """Number of replaced description pieces: floor(0.015 L) (compat) or ceil, at least 1 if L >= 1 (fixed)."""
    if rtd_sampling == COMPAT:
        return math.floor(REPLACE_FRACTION * num_pieces)
    return max(1, math.ceil(REPLACE_FRACTION * num_pieces)) if num_pieces >= 1 else 0


def is_regular_token(token: str) -> bool:
    """A whole-word vocabulary entry: not `[...]` (special, unused, sign), not a `##` piece, has a letter/digit."""
    return not (token.startswith("[") and token.endswith("]")) and not token.startswith("##") and any(
        c.isalnum() for c in token
    )


def _cat(*parts: Any) -> np.ndarray:
    return np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])


class PretrainTextBuilder:
    """Builds (input_ids, attention_mask, mlm_labels, rtd_labels), each a (max_length,) long tensor.

    `lexicon` overrides WordNet (an object with `synonyms(word)` / `antonyms(word)`, e.g. for tests);
    otherwise WordNet is loaded from `options.wordnet_path` when given (validated here, reloaded per process).
    """

    def __init__(self, tokenizer: Any, max_length: int = MAX_LENGTH,
                 options: PretrainTextOptions | None = None, lexicon: Lexicon | None = None) -> None:
        self.options = options or PretrainTextOptions()
        if max_length < 4:
            raise ValueError(f"max_length must be >= 4, got {max_length}")
        self.tokenizer, self.max_length, self._lexicon = tokenizer, max_length, lexicon
        if lexicon is None and self.options.wordnet_path is not None:
            load_wordnet(str(self.options.wordnet_path))
        self.cls_id, self.sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.mask_id, self.pad_id = tokenizer.mask_token_id, tokenizer.pad_token_id
        vocab = tokenizer.get_vocab()
        self.vocab_size = len(tokenizer)
        self.regular = np.zeros(self.vocab_size, dtype=bool)
        self.regular[[i for t, i in vocab.items() if i < self.vocab_size and is_regular_token(t)]] = True
        self.regular_ids = np.flatnonzero(self.regular)
        if self.regular_ids.size < 2:
            raise DataError("the tokenizer vocabulary has fewer than two regular (whole-word) entries")
        self.prefix_ids = self._ids(DESCRIPTION_PREFIX)
        self.the_image_ids, self.is_ids = self._ids("the image"), self._ids("is")
        self.name_ids = {key: self._ids(name) for key, name in ATTRIBUTES}

    @property
    def lexicon(self) -> Lexicon | None:
        if self._lexicon is not None:
            return self._lexicon
        if self.options.wordnet_path is not None:
            return load_wordnet(str(self.options.wordnet_path))
        return None

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.convert_tokens_to_ids(self.tokenizer.tokenize(text))

    # ------------------------------------------------------------------------- replacements

    def _random_token(self, original: int, rng: np.random.Generator) -> int:
        if self.options.rtd_vocab == COMPAT:
            return int(rng.integers(0, self.vocab_size))
        # A regular entry other than the original piece, so every RTD positive is a real change.
        k = int(rng.integers(0, self.regular_ids.size - 1))
        pick = int(self.regular_ids[k])
        return int(self.regular_ids[-1]) if pick == original else pick

    def _replacement(self, piece: str, original: int, rng: np.random.Generator) -> int:
        if rng.random() < 0.5:
            return self._random_token(original, rng)
        lexicon = self.lexicon
        if lexicon is None:
            return self._random_token(original, rng)
        antonyms = lexicon.antonyms(piece)
        if not antonyms:
            return original if self.options.rtd_vocab == COMPAT else self._random_token(original, rng)
        antonym = antonyms[int(rng.integers(0, len(antonyms)))]
        if self.options.rtd_vocab == COMPAT:
            return int(self.tokenizer.convert_tokens_to_ids(antonym))
        ids = self._ids(antonym.replace("_", " "))
        if len(ids) == 1 and self.regular[ids[0]] and ids[0] != original:
            return int(ids[0])
        return self._random_token(original, rng)

    def _swap_synonyms(self, value: str, rng: np.random.Generator) -> str:
        lexicon = self.lexicon
        if lexicon is None:
            return value
        words = value.split(" ")
        for i, word in enumerate(words):
            if word and rng.random() < SYNONYM_PROB:
                synonyms = lexicon.synonyms(word)
                if synonyms:
                    words[i] = synonyms[int(rng.integers(0, len(synonyms)))].replace("_", " ").lower()
        return " ".join(words)

    # ------------------------------------------------------------------------- parts

    def _description(self, description: str, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """Corrupted description ids, their MLM labels and RTD labels (length L each)."""
        pieces = self.tokenizer.tokenize(pre_caption(description))
        original = np.asarray(self.tokenizer.convert_tokens_to_ids(pieces), dtype=np.int64)
        length = original.size
        order = rng.permutation(length)
        n_mask = math.floor(MASK_FRACTION * length)
        n_rep = replacement_count(length, self.options.rtd_sampling)
        masked, replaced = order[:n_mask], order[n_mask : n_mask + n_rep]
        ids = original.copy()
        ids[masked] = self.mask_id
        for pos in replaced:
            ids[pos] = self._replacement(pieces[pos], int(original[pos]), rng)
        targets = order[: n_mask + n_rep]
        labels = np.full(length, IGNORE, dtype=np.int64)
        if self.options.mlm_label_alignment == COMPAT:
            # Published: targets listed in shuffled order, written onto the positions in ascending order
            # (docs/compat.md, compat.mlm_label_alignment).
            labels[np.sort(targets)] = original[targets]
        else:
            labels[targets] = original[targets]
        rtd = np.zeros(length, dtype=np.int64)
        rtd[replaced] = 1
        return ids, labels, rtd

    def _attributes(self, info: Mapping[str, Any], rng: np.random.Generator) -> tuple[list[int], list[int]]:
        """Attribute phrase ids and their MLM labels (the masked span of the third phrase)."""
        order = rng.permutation(len(ATTRIBUTES))
        mask_name = rng.random() < 0.5
        ids: list[int] = []
        labels: list[int] = []
        for rank, a in enumerate(order):
            key = ATTRIBUTES[int(a)][0]
            value = attribute_value(key, str(info[key]))
            if rank == 0:
                value = self._swap_synonyms(value, rng)
            name_ids, value_ids = self.name_ids[key], self._ids(value)
            name_labels, value_labels = [IGNORE] * len(name_ids), [IGNORE] * len(value_ids)
            if rank == MASKED_ATTRIBUTE:
                if mask_name:
                    name_ids, name_labels = [self.mask_id] * len(name_ids), list(name_ids)
                else:
                    value_ids, value_labels = [self.mask_id] * len(value_ids), list(value_ids)
            ids += self.the_image_ids + name_ids + self.is_ids + value_ids
            labels += [IGNORE] * len(self.the_image_ids) + name_labels + [IGNORE] * len(self.is_ids) + value_labels
        return ids, labels

    # ------------------------------------------------------------------------- public

    def __call__(self, info: Mapping[str, Any], rng: np.random.Generator) -> PretrainText:
        missing = [key for key in INFO_KEYS if key not in info]
        if missing:
            raise DataError(f"pretraining text: row fields missing: {', '.join(missing)}")
        sign_id = int(self.tokenizer.convert_tokens_to_ids(sign_for_category(str(info[CATEGORY_KEY]))))
        desc_ids, desc_labels, desc_rtd = self._description(str(info[DESCRIPTION_KEY]), rng)
        attr_ids, attr_labels = self._attributes(info, rng)
        n_prefix = len(self.prefix_ids)
        ids = _cat([self.cls_id, sign_id], self.prefix_ids, desc_ids, [self.sep_id], attr_ids)
        mlm = _cat([IGNORE] * (2 + n_prefix), desc_labels, [IGNORE], attr_labels)
        rtd = _cat([0] * (2 + n_prefix), desc_rtd, [0], [0] * len(attr_ids))
        fixed_rtd = self.options.rtd_sampling == FIXED
        if fixed_rtd:
            rtd[[0, 1, 2 + n_prefix + desc_ids.size]] = IGNORE  # [CLS], sign, [SEP]
        n = min(ids.size, self.max_length)
        out = np.zeros((4, self.max_length), dtype=np.int64)
        out[0, :] = self.pad_id
        out[0, :n], out[1, :n], out[2, :], out[2, :n] = ids[:n], 1, IGNORE, mlm[:n]
        out[3, :] = IGNORE if fixed_rtd else 0
        out[3, :n] = rtd[:n]
        tensor = torch.from_numpy(out)
        return tensor[0], tensor[1], tensor[2], tensor[3]
