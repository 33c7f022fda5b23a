"""Build the local tokenizer folder (`vocab.txt`) the framework loads; nothing is downloaded.

Two ways:
  from-captions  train a small WordPiece vocabulary on the (synthetic) captions, sign tokens at ids 1..9
                 (for tests and the demo);
  from-bert      derive the Fashion-FINE vocabulary from a stock bert-base-uncased `vocab.txt` that you
                 point to: `[unused0]`..`[unused8]` (ids 1..9) are renamed to the nine sign tokens.
"""

from __future__ import annotations

import argparse
import json
import string
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.fashiongen_meta import SIGN_TOKENS  # noqa: E402
from datasets.pretrain_text import ATTRIBUTES, DESCRIPTION_KEY, attribute_value  # noqa: E402
from datasets.text import CMR_PREFIX, TGIR_PREFIX, VOCAB_FILENAME, check_sign_ids, pre_caption, read_vocab  # noqa: E402
from engine.atomic import write_text  # noqa: E402

SPECIAL_TOKENS = ["[PAD]", *SIGN_TOKENS, "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BERT_BASE_VOCAB_SIZE = 30522

# Phrases the pretraining text builder inserts (attribute templates, season expansion).
TEMPLATE_PHRASES = [
    CMR_PREFIX,
    TGIR_PREFIX,
    "the image category is",
    "the image sub category is",
    "the image composition is",
    "the image gender is",
    "the image name is",
    "the image season is spring summer fall winter and",
]


def iter_fashiongen_texts(folder: Path) -> Iterator[str]:
    """Cleaned descriptions and the attribute values as the pretraining phrases write them."""
    import h5py

    for path in sorted(folder.glob("fashiongen_256_256_*.h5")):
        with h5py.File(path, "r") as f:
            if DESCRIPTION_KEY in f:
                for value in f[DESCRIPTION_KEY][:, 0]:
                    yield pre_caption(value.decode("latin-1"))
            for key, _ in ATTRIBUTES:
                if key in f:
                    for value in f[key][:, 0]:
                        yield attribute_value(key, value.decode("latin-1"))


def iter_fashioniq_texts(folder: Path) -> Iterator[str]:
    """Cleaned relative captions of every FashionIQ caption file under `folder/captions`."""
    for path in sorted((folder / "captions").glob("cap.*.json")):
        for triplet in json.loads(path.read_text(encoding="utf-8")):
            yield from (pre_caption(c) for c in triplet.get("captions", []))


def collect_texts(data_root: Path) -> list[str]:
    """Cleaned texts found anywhere under `data_root` (FashionGen .h5 files and FashionIQ caption folders)."""
    texts = [pre_caption(t) for t in TEMPLATE_PHRASES]
    folders = {p.parent for p in data_root.rglob("fashiongen_256_256_*.h5")}
    for folder in sorted(folders):
        texts.extend(iter_fashiongen_texts(folder))
    for captions in sorted(data_root.rglob("captions")):
        texts.extend(iter_fashioniq_texts(captions.parent))
    if len(texts) == len(TEMPLATE_PHRASES):
        raise FileNotFoundError(
            f"no FashionGen .h5 or FashionIQ caption files under {data_root}; "
            f"create them with `python -m datasets.synthetic all --out {data_root}`"
        )
    return texts


def train_wordpiece(texts: list[str], vocab_size: int) -> list[str]:
    """A deterministic WordPiece vocabulary (list index = id): special and sign tokens first, then every
    character and its `##` continuation (so no word maps to `[UNK]`), then whole words by decreasing
    frequency (ties alphabetical) up to `vocab_size`.

    Written here because the `tokenizers` WordPiece trainer is not deterministic across runs, and tests
    and the demo need the same ids every time. Text is normalised and split exactly as `BertTokenizer`
    (lower case, accents stripped, punctuation split) does before WordPiece.
    """
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    normalizer, splitter = BertNormalizer(lowercase=True), BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for word in counts for c in word} | set(string.ascii_lowercase + string.digits + string.punctuation))
    tokens = SPECIAL_TOKENS + chars + [f"##{c}" for c in chars]
    known = set(tokens)
    for word, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(tokens) >= vocab_size:
            break
        if word not in known:
            tokens.append(word)
            known.add(word)
    return tokens


def signs_from_bert_vocab(bert_vocab: Path) -> list[str]:
    """bert-base-uncased vocabulary with `[unused0..8]` renamed to the sign tokens."""
    if not bert_vocab.is_file():
        raise FileNotFoundError(f"bert-base-uncased vocabulary not found: {bert_vocab}")
    tokens = bert_vocab.read_text(encoding="utf-8").splitlines()
    if len(tokens) != BERT_BASE_VOCAB_SIZE:
        raise ValueError(f"{bert_vocab}: expected {BERT_BASE_VOCAB_SIZE} lines (bert-base-uncased), got {len(tokens)}")
    for i, sign in enumerate(SIGN_TOKENS, start=1):
        if tokens[i] not in (f"[unused{i - 1}]", sign):
            raise ValueError(f"{bert_vocab}:{i + 1}: expected [unused{i - 1}] or {sign}, found {tokens[i]!r}")
        tokens[i] = sign
    return tokens


def write_vocab(tokens: list[str], out: Path) -> Path:
    """Write `vocab.txt` and check it loads with signs at ids 1..9."""
    path = write_text(out / VOCAB_FILENAME, "\n".join(tokens) + "\n")
    check_sign_ids(read_vocab(path), str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    cap = sub.add_parser("from-captions", help="train a WordPiece vocabulary on local captions")
    cap.add_argument("--data-root", type=Path, required=True,
                     help="folder searched recursively for FashionGen .h5 files and FashionIQ captions/")
    cap.add_argument("--out", type=Path, required=True, help="tokenizer folder to write (vocab.txt)")
    cap.add_argument("--vocab-size", type=int, default=2000, help="upper bound on the vocabulary size")
    bert = sub.add_parser("from-bert", help="rename [unused0..8] of a bert-base-uncased vocab.txt to signs")
    bert.add_argument("--bert-vocab", type=Path, required=True, help="path of bert-base-uncased vocab.txt")
    bert.add_argument("--out", type=Path, required=True, help="tokenizer folder to write (vocab.txt)")
    args = parser.parse_args(argv)
    try:
        if args.command == "from-captions":
            tokens = train_wordpiece(collect_texts(args.data_root), args.vocab_size)
        else:
            tokens = signs_from_bert_vocab(args.bert_vocab)
        path = write_vocab(tokens, args.out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({len(tokens)} tokens, sign tokens at ids 1..9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
