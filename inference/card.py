"""The model card: what a checkpoint records, besides its weights and resolved config, so that its model can be
rebuilt and fed exactly as its evaluation feeds it (task, weight family, tokenizer vocabulary, image and text
preprocessing). The trainer writes it under `model_card` in every checkpoint; for a checkpoint without one (a
released file) `inference.load_model` builds it from the given config and tokenizer folder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets.text import read_vocab_text
from engine.errors import DataError

CARD_FORMAT = "fashionfine-card-1"


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def vocab_entry(vocab_path: str | Path) -> dict[str, Any]:
    """The vocabulary as the card holds it: its whole text (a few hundred kB at most), hash and origin."""
    text = read_vocab_text(vocab_path)
    return {"text": text, "sha256": text_sha256(text), "source": str(vocab_path)}


def card_vocab_text(card: dict[str, Any], where: str) -> str:
    """The card's vocabulary text, verified against its hash."""
    entry = card.get("vocab")
    if not isinstance(entry, dict) or not isinstance(entry.get("text"), str):
        raise DataError(f"{where}: its model card holds no tokenizer vocabulary")
    if text_sha256(entry["text"]) != entry.get("sha256"):
        raise DataError(f"{where}: the tokenizer vocabulary in its model card does not match its hash "
                        "(the file is damaged)")
    return entry["text"]


def image_entry(size: int, resize: str, mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    """How an image becomes the model's input: square size, resize rule, normalisation."""
    return {"size": int(size), "resize": resize, "mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def make_card(task: str, family: str, **parts: Any) -> dict[str, Any]:
    return {"format": CARD_FORMAT, "task": task, "family": family, **parts}


def read_card(obj: Any, where: str) -> dict[str, Any] | None:
    """The model card of a loaded checkpoint, or None when it has none; a malformed card is a DataError."""
    card = obj.get("model_card") if isinstance(obj, dict) else None
    if card is None:
        return None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT or not isinstance(card.get("task"), str):
        raise DataError(f"{where}: unreadable model card (expected format {CARD_FORMAT})")
    return card


def preprocessing(card: dict[str, Any]) -> dict[str, Any]:
    """The card without the vocabulary text: what an exported encoder's sidecar describes."""
    out = {k: v for k, v in card.items() if k != "vocab"}
    if isinstance(card.get("vocab"), dict):
        out["vocab"] = {k: v for k, v in card["vocab"].items() if k != "text"}
    return out
