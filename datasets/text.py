"""Text processing shared by every task: caption cleaning, prefixes, sign tokens, tokenizer, id layouts."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import BertTokenizer

from datasets.fashiongen_meta import SIGN_TOKEN_IDS, SIGN_TOKENS
from engine.errors import DataError

VOCAB_FILENAME = "vocab.txt"
BUILD_VOCAB_HINT = (
    "build one with `python scripts/build_vocab.py from-captions --data-root data/synthetic --out <folder>` "
    "(synthetic data) or `python scripts/build_vocab.py from-bert --bert-vocab <bert-base-uncased/vocab.txt> "
    "--out <folder>` (real bert-base-uncased vocabulary)"
)

# Prefixes the published code puts in front of texts.
CMR_PREFIX = "the image description is "
TGIR_PREFIX = "the difference between two images are "

_FINE_DELETE = re.compile(r"[,.'!\"()*#:;~]")
_BLIP_SPACE = re.compile(r"[.!\"()*#:;~]")
_MULTISPACE = re.compile(r"\s{2,}")


def pre_caption(caption: str, max_words: int | None = None) -> str:
    """The Fashion-FINE / FashionSAP caption cleaner: lower, delete punctuation, collapse spaces."""
    text = caption.lower()
    text = _FINE_DELETE.sub("", text)
    text = text.replace("-", " ").replace("/", " ").replace("<person>", "person").replace("<br>", " ")
    text = _MULTISPACE.sub(" ", text)
    text = text.rstrip("\n").strip(" ")
    if max_words is not None:
        text = " ".join(text.split(" ")[:max_words])
    return text


def pre_caption_blip(caption: str, max_words: int = 180) -> str:
    """The BLIP-variant cleaner: punctuation to spaces (commas, apostrophes, hyphens kept), cap words."""
    text = _BLIP_SPACE.sub(" ", caption.lower())
    text = _MULTISPACE.sub(" ", text).rstrip("\n").strip(" ")
    words = text.split(" ")
    if len(words) > max_words:
        text = " ".join(words[:max_words])
    return text


def join_fashioniq_captions(captions: Sequence[str]) -> str:
    """FashionIQ query text: prefix + captions joined with ' and ' in file order, then cleaned."""
    return pre_caption(TGIR_PREFIX + " and ".join(captions))


def read_vocab_text(path: str | Path) -> str:
    """The text of a vocabulary file; bytes that are not UTF-8 are a DataError naming the file and the offset."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}: not UTF-8 text at byte offset {exc.start} (line {line}: {exc.reason}); a "
                        f"vocabulary is UTF-8, one token per line; {BUILD_VOCAB_HINT}") from None


def read_vocab(path: str | Path) -> dict[str, int]:
    """Read a BERT `vocab.txt` (one token per line, id = line number)."""
    return parse_vocab(read_vocab_text(path), str(path))


def check_sign_ids(vocab: dict[str, int], source: str) -> None:
    """The nine sign tokens must sit at ids 1..9, as in the published vocabulary."""
    wrong = [(tok, vocab.get(tok)) for tok in SIGN_TOKENS if vocab.get(tok) != SIGN_TOKEN_IDS[tok]]
    if wrong:
        details = ", ".join(f"{tok} at {idx}" for tok, idx in wrong)
        raise DataError(f"{source}: sign tokens must have ids 1..9 ({details}); {BUILD_VOCAB_HINT}")


def require_vocab(folder: str | Path, key: str = "") -> Path:
    """`folder/vocab.txt`, or FileNotFoundError naming it (and the config `key` that names the folder); a file
    that is not UTF-8 text is a DataError."""
    vocab_path = Path(folder) / VOCAB_FILENAME
    if not vocab_path.is_file():
        where = f" ({key})" if key else ""
        raise FileNotFoundError(f"tokenizer vocabulary not found: {vocab_path}{where}; {BUILD_VOCAB_HINT}")
    read_vocab_text(vocab_path)  # not UTF-8: one line now, before anything is started
    return vocab_path


def load_tokenizer(folder: str | Path) -> BertTokenizer:
    """BERT WordPiece tokenizer from a local folder holding `vocab.txt`; never touches the network."""
    vocab_path = require_vocab(folder)
    return tokenizer_from_vocab(read_vocab(vocab_path), str(vocab_path))


def parse_vocab(text: str, source: str) -> dict[str, int]:
    """A vocabulary's text (one token per line, id = line number) as a token -> id table."""
    vocab: dict[str, int] = {}
    for idx, line in enumerate(text.splitlines()):
        token = line.rstrip("\r")
        if token in vocab:
            raise DataError(f"{source}:{idx + 1}: duplicate token {token!r}")
        vocab[token] = idx
    return vocab


def tokenizer_from_vocab(vocab: dict[str, int], source: str) -> BertTokenizer:
    """The Fashion-FINE tokenizer over a vocabulary table (`source` names it in errors): lower-casing WordPiece,
    the nine sign tokens registered as special at ids 1..9."""
    check_sign_ids(vocab, source)
    missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t not in vocab]
    if missing:
        raise DataError(f"{source}: special tokens missing: {', '.join(missing)}; {BUILD_VOCAB_HINT}")
    if vocab["[PAD]"] != 0:
        raise DataError(f"{source}: [PAD] must have id 0 (found {vocab['[PAD]']})")
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True)
    # Registered as special so they are never split; they already exist, so no id is created.
    tokenizer.add_special_tokens({"additional_special_tokens": list(SIGN_TOKENS)})
    if len(tokenizer) != len(vocab):
        raise DataError(f"{source}: registering sign tokens grew the vocabulary; check the file")
    return tokenizer


def encode_fixed_length(
    tokenizer: BertTokenizer,
    texts: Sequence[str],
    max_length: int,
    add_sep: bool = True,
    prefix_tokens: Sequence[Sequence[str]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, `[CLS] [prefix] pieces [SEP]`, truncated then padded with id 0.

    `add_sep=False` gives the published training layout (`[CLS]` + pieces, no `[SEP]`;
    docs/compat.md, compat.text_layout).
    `prefix_tokens[i]` (e.g. a sign token) is placed right after `[CLS]` for text i.
    """
    ids = torch.zeros(len(texts), max_length, dtype=torch.long)
    mask = torch.zeros(len(texts), max_length, dtype=torch.long)
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    for i, text in enumerate(texts):
        pieces = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))
        head = [cls_id] + (tokenizer.convert_tokens_to_ids(list(prefix_tokens[i])) if prefix_tokens else [])
        if add_sep:
            row = head + pieces[: max(0, max_length - len(head) - 1)] + [sep_id]
        else:
            row = (head + pieces)[:max_length]
        row = row[:max_length]
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask
