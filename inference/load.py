"""`load_model`: a checkpoint to an encoder ready for inference, in one call.

A checkpoint this framework wrote carries its task, resolved config and model card (inference.card: the
tokenizer vocabulary, the image and text preprocessing), so the path is all it needs. A released published
checkpoint has none of these: give its `task`, its `config` (YAML) and, for the Fashion-FINE tasks, the
`tokenizer` folder holding its vocab.txt.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from engine.checkpoint import content_hash, read_checkpoint
from engine.config import ConfigError, build_config, load_config
from engine.errors import DataError
from engine.precision import resolve_precision
from inference.card import card_vocab_text, read_card
from inference.encoders import ENCODERS, Encoder

# task name (as recorded in checkpoints) -> the task class that builds its model
TASKS: dict[str, tuple[str, str]] = {
    "pretrain": ("tasks.fashiongen", "PretrainTask"),
    "cmr": ("tasks.fashiongen", "RetrievalTask"),
    "tgir": ("tasks.tgir", "TGIRTask"),
    "fine_blip": ("tasks.fine_blip", "FineBlipTask"),
    "asen": ("tasks.asen", "AsenTask"),
}


def task_class(name: str) -> Any:
    """The task class of a task name; an unknown name is one line listing the known ones."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    module, cls = TASKS[name]
    return getattr(importlib.import_module(module), cls)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _config(task_cls: Any, obj: dict, path: Path, config: str | Path | None, tokenizer: str | Path | None,
            overrides: Sequence[str]) -> Any:
    """The validated config: the given YAML (with `tokenizer` as data.tokenizer) and `overrides` (key=value),
    else the checkpoint's own."""
    if config is not None:
        if not Path(config).is_file():
            raise FileNotFoundError(f"config not found: {config}")
        extra = [f"data.tokenizer={tokenizer}"] if tokenizer is not None and task_cls.name != "asen" else []
        return load_config(task_cls.schema, [config], [*overrides, *extra])
    saved = obj.get("config")
    if not isinstance(saved, dict) or not saved:
        raise ConfigError(f"{path} records no config: pass config=<the YAML it was trained with> "
                          "(search.py: --config)")
    if overrides:
        raise ConfigError("overrides need the config they apply to: pass config=<YAML> too (search.py: --config)")
    return build_config(task_cls.schema, saved)


def fingerprint(state: dict) -> str:
    """A short identifier of the weights alone (two checkpoints of the same weights share it; ~0.4 s per GB)."""
    return content_hash(state)[:16]


def load_model(path: str | Path, *, device: str | torch.device | None = None, precision: str = "auto",
               task: str | None = None, config: str | Path | None = None, tokenizer: str | Path | None = None,
               overrides: Sequence[str] = (), batch_size: int | None = None, progress_bar: bool = False) -> Encoder:
    """The model of checkpoint `path` as an `Encoder` (eval mode, on `device` (default: a GPU when there is
    one), autocast `precision` "auto" = bf16 on GPUs that support it, else fp32).

    `task`, `config`, `tokenizer`: needed only for a checkpoint without a model card (a released file); `config`
    (with `overrides`, `key=value` strings as `--set` takes them) replaces a card's recorded config. Every
    weight must load (strict)."""
    from models.weights import load_weights, state_dict_of

    path = Path(path)
    obj = read_checkpoint(path)  # one line for a missing, damaged or foreign file
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a checkpoint (a dict of weights)")
    card = read_card(obj, str(path))
    name = card["task"] if card is not None else task
    if name is None:
        raise ConfigError(f"{path} has no model card (a released or older checkpoint): pass its task "
                          f"({', '.join(TASKS)}), config and tokenizer folder (search.py: --task, --config, "
                          "--tokenizer)")
    if task is not None and task != name:
        raise ConfigError(f"{path} holds a {name} model, not {task}")
    task_cls = task_class(name)
    cfg = _config(task_cls, obj, path, config, tokenizer, overrides)
    if card is None:
        card = task_cls.model_card(cfg)
    if card is None:
        raise ConfigError(f"task {name} has no inference model")
    vocab = None
    if "vocab" in card:
        from datasets.text import parse_vocab

        vocab = parse_vocab(card_vocab_text(card, str(path)), f"{path} (vocabulary of its model card)")
    tok = task_cls.inference_tokenizer(cfg, vocab, card.get("vocab", {}).get("source", str(path)))
    model = task_cls.inference_model(cfg, tok)
    load_weights(model, obj, family=task_cls.weight_family, strict=True, source_name=str(path))
    dev = torch.device(device) if device is not None else default_device()
    model = model.to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    state, _ = state_dict_of(obj, str(path))
    size = batch_size or _eval_batch(cfg)
    return ENCODERS[name](model=model, task=name, family=task_cls.weight_family, card=card, cfg=cfg, tokenizer=tok,
                          device=dev, precision=resolve_precision(precision, dev), fingerprint=fingerprint(state),
                          source=str(path), batch_size=size, progress_bar=progress_bar)


def _eval_batch(cfg: Any) -> int:
    """The evaluation batch of the config (the same batches as evaluation)."""
    data = getattr(cfg, "data", None)
    if data is not None and hasattr(data, "eval_batch_size"):
        return int(data.eval_batch_size)
    return int(getattr(getattr(cfg, "DATA", None), "TEST_BATCHSIZE", 64))
