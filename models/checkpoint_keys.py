"""Loading published and framework checkpoints into the Fashion-FINE models: key remapping (ALBEF /
FashionSAP / Fashion-FINE names), position-embedding interpolation, momentum copies, and a report.
`load_blip_checkpoint` applies the BLIP variant's rules (BLIP `model_base.pth`, fine-model.md §5.2)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from engine.checkpoint import load_file, model_state_from, unwrap
from engine.logger import get_logger
from models.momentum import copy_online_to_momentum
from models.vit import interpolate_pos_embed

# Keys a pretrained starting point may lack; they keep their fresh initialisation.
INIT_ALLOW_MISSING = (
    "W_v", "att_layer_v.", "unigram_conv.", "bigram_conv.", "trigram_conv.", "decoder_layer.",
    "replace_predict_layer.", "combine_vision_proj", "combine_text_proj", "itm_head.", "idx_queue",
    "image_queue", "text_queue", "fusion_queue", "queue_ptr", "img_queue_ptr", "fusion_queue_ptr",
    "image_idx_queue", "fusion_idx_queue",
)
# Keys an evaluation (strict) load may lack: buffers that only training uses.
STRICT_ALLOW_MISSING = ("idx_queue", "image_idx_queue", "fusion_idx_queue")
# Encoder keys that must come from the file: without them the model would silently stay random (D16).
REQUIRED_PREFIXES = ("visual_encoder.", "text_encoder.embeddings.", "text_encoder.encoder.")
QUEUE_KEYS = ("image_queue", "text_queue", "idx_queue", "fusion_queue", "image_idx_queue", "fusion_idx_queue")
# The write pointer of each queue: a pointer is meaningless for a queue of another length (it may even lie
# beyond the model's queue), so it is dropped with its queue and the write position starts at 0.
QUEUE_POINTERS = {"image_queue": ("queue_ptr", "img_queue_ptr"), "text_queue": ("queue_ptr",),
                  "idx_queue": ("queue_ptr",), "fusion_queue": ("fusion_queue_ptr",),
                  "image_idx_queue": ("img_queue_ptr",), "fusion_idx_queue": ("fusion_queue_ptr",)}


@dataclass
class LoadReport:
    """What a checkpoint load did."""

    path: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    remapped: int = 0
    interpolated: list[str] = field(default_factory=list)
    dropped_shape: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    momentum_copied: bool = False

    def summary(self) -> str:
        def short(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")

        lines = [f"loaded {self.path}"]
        if self.remapped:
            lines.append(f"  remapped {self.remapped} published key names")
        if self.interpolated:
            lines.append(f"  interpolated {', '.join(self.interpolated)}")
        if self.dropped_shape:
            lines.append(f"  dropped (shape differs, fresh init kept): {short(self.dropped_shape)}")
        if self.resized:
            lines.append(f"  embedding rows added (new rows keep their fresh init): {short(self.resized)}")
        lines.extend(f"  note: {note}" for note in self.notes)
        if self.momentum_copied:
            lines.append("  momentum encoders absent in the file: copied from the online encoders")
        if self.missing:
            lines.append(f"  missing (fresh init kept): {short(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected (ignored): {short(self.unexpected)}")
        return "\n".join(lines)


def remap_published_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """ALBEF / Hugging Face names -> ours: drop the `bert.` level, `cls.predictions` -> `decoder_layer.predictions`,
    `LayerNorm.gamma/beta` -> `weight/bias`."""
    out: dict[str, torch.Tensor] = {}
    changed = 0
    for key, value in state.items():
        new = key.replace("text_encoder.bert.", "text_encoder.").replace("text_encoder_m.bert.", "text_encoder_m.")
        if new.startswith("text_encoder.cls.predictions."):
            new = new.replace("text_encoder.cls.predictions.", "decoder_layer.predictions.")
        if new.startswith(("text_encoder.cls.", "text_encoder_m.cls.", "text_encoder.pooler.")):
            continue  # pooler / NSP heads have no counterpart
        new = new.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        changed += new != key
        out[new] = value
    return out, changed


def _interpolate(state: dict[str, torch.Tensor], model_state: dict[str, torch.Tensor], report: LoadReport) -> None:
    for key in ("visual_encoder.pos_embed", "visual_encoder_m.pos_embed"):
        if key in state and key in model_state and state[key].shape != model_state[key].shape:
            num_patches = model_state[key].shape[1] - 1
            state[key] = interpolate_pos_embed(state[key], num_patches)
            report.interpolated.append(f"{key} {tuple(state[key].shape)}")


def _matches(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p) for p in prefixes)


def load_checkpoint(model: nn.Module, path: str | Path, *, strict: bool = False) -> LoadReport:
    """Load weights from a published or framework checkpoint.

    Initialisation (`strict=False`): names remapped, pos-embed interpolated, queues of another length
    dropped, missing keys allowed only from `INIT_ALLOW_MISSING`, momentum copies taken from the online
    encoders when the file has none. Evaluation (`strict=True`): every model key must be present (bar
    `STRICT_ALLOW_MISSING`) with the right shape; nothing dropped. Either way a file that lacks the encoder
    weights (a checkpoint of another model) is an error, never a silent partial load.
    """
    module = unwrap(model)
    state = model_state_from(load_file(path), path)
    report = LoadReport(path=str(path))
    state, report.remapped = remap_published_keys(state)
    own = module.state_dict()
    _require_encoder_keys(state, path, "a Fashion-FINE/ALBEF model")
    _interpolate(state, own, report)
    for key in list(state):
        if key in own and state[key].shape != own[key].shape:
            if strict or not key.startswith(QUEUE_KEYS):
                raise RuntimeError(f"{path}: {key} has shape {tuple(state[key].shape)}, the model expects "
                                   f"{tuple(own[key].shape)} (a different config or vocabulary?)")
            report.dropped_shape.append(key)
            del state[key]
    for key in list(report.dropped_shape):
        for ptr in QUEUE_POINTERS.get(key, ()):
            if ptr in state and ptr in own:
                report.dropped_shape.append(ptr)
                del state[ptr]
    has_momentum = any(k.startswith("visual_encoder_m.") for k in state)
    result = module.load_state_dict(state, strict=False)
    report.unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if has_momentum or not _is_momentum_key(k)]
    allowed = STRICT_ALLOW_MISSING if strict else INIT_ALLOW_MISSING
    bad = [k for k in missing if not _matches(k, allowed) and not k.startswith(QUEUE_KEYS)]
    if strict and not has_momentum:
        bad.append("<momentum encoders (*_m)>")
    if bad:
        raise RuntimeError(f"{path}: model weights missing from the checkpoint: {', '.join(bad[:10])}"
                           + (f" ... ({len(bad)} in all)" if len(bad) > 10 else ""))
    if strict and report.unexpected:
        raise RuntimeError(f"{path}: keys the model does not have: {', '.join(report.unexpected[:10])}")
    report.missing = missing
    if not has_momentum and hasattr(module, "momentum_pairs"):
        copy_online_to_momentum(module.momentum_pairs)
        report.momentum_copied = True
    get_logger().info(report.summary())
    return report


def _require_encoder_keys(state: dict[str, torch.Tensor], path: str | Path, kind: str) -> None:
    """A file without the encoder weights is another model's checkpoint: an error, never a partial load."""
    missing = sorted(p for p in REQUIRED_PREFIXES if not any(k.startswith(p) for k in state))
    if missing:
        raise RuntimeError(f"{path} does not hold {kind}: no keys under {missing} "
                           f"(first keys in the file: {sorted(state)[:5]})")


def _is_momentum_key(key: str) -> bool:
    return key.split(".", 1)[0].endswith("_m")


# ----------------------------------------------------------------------------- BLIP variant (§5.2, §6.3)

BLIP_IGNORED_PREFIXES = ("text_decoder.",)  # BLIP's captioning decoder: no counterpart in the retrieval model
BLIP_WORD_EMBEDDINGS = ("text_encoder.embeddings.word_embeddings.weight",
                        "text_encoder_m.embeddings.word_embeddings.weight")


def _grow_word_embeddings(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], report: LoadReport) -> None:
    """A vocabulary grown by registered tokens (the sign tokens of D13): copy the file's rows into the
    model's matrix, the added rows keep their fresh initialisation (what resizing the embeddings does)."""
    for key in BLIP_WORD_EMBEDDINGS:
        if key in state and key in own:
            have, want = state[key], own[key]
            if have.shape[1:] == want.shape[1:] and have.shape[0] < want.shape[0]:
                grown = want.detach().clone()
                grown[: have.shape[0]] = have.to(grown.dtype)
                state[key] = grown
                report.resized.append(f"{key} {have.shape[0]} -> {want.shape[0]}")


def load_blip_checkpoint(model: nn.Module, path: str | Path, *, strict: bool = False) -> LoadReport:
    """Load a BLIP (`model_base.pth`) or Fashion-FINE-on-BLIP checkpoint into the BLIP-variant model.

    Initialisation (`strict=False`, the published rules): `text_decoder.*` ignored with a note; pos-embed
    interpolated for `visual_encoder` and `visual_encoder_m` (224 -> 384: 14x14 -> 24x24); word-embedding
    rows added for registered sign tokens; every other key whose shape differs from the model's dropped
    and reported (e.g. queues of another length); the rest loaded non-strictly, missing and unexpected keys
    reported; momentum encoders copied from the online ones when the file has none.
    Evaluation (`strict=True`): the same interpolation and row growth, then every model key must be present
    with its shape and nothing else may be (bar the ignored decoder). A file without encoder weights is an error.
    """
    module = unwrap(model)
    state = model_state_from(load_file(path), path)
    report = LoadReport(path=str(path))
    ignored = [k for k in state if k.startswith(BLIP_IGNORED_PREFIXES)]
    if ignored:
        report.notes.append(f"ignored {len(ignored)} keys of BLIP's text decoder (text_decoder.*), "
                            "which the retrieval model does not have")
        state = {k: v for k, v in state.items() if not k.startswith(BLIP_IGNORED_PREFIXES)}
    own = module.state_dict()
    _require_encoder_keys(state, path, "a BLIP / Fashion-FINE-on-BLIP model")
    _interpolate(state, own, report)
    # Also when strict: fixed-mode evaluation of a released 30524-row model registers the nine sign tokens
    # (D13), and evaluation queries carry no sign, so the added rows are never read.
    _grow_word_embeddings(state, own, report)
    dropped = set()
    for key in list(state):
        if key in own and state[key].shape != own[key].shape:
            if strict:
                raise RuntimeError(f"{path}: {key} has shape {tuple(state[key].shape)}, the model expects "
                                   f"{tuple(own[key].shape)} (a different config or vocabulary?)")
            report.dropped_shape.append(f"{key} {tuple(state[key].shape)} (model {tuple(own[key].shape)})")
            dropped.add(key)
            del state[key]
    if dropped & set(QUEUE_KEYS) and "ptr_queue" in state:  # a pointer into queues that keep their fresh init
        report.notes.append(f"ptr_queue {int(state.pop('ptr_queue'))} not loaded: the queues it points into "
                            "were dropped, writing restarts at 0")
        dropped.add("ptr_queue")
    has_momentum = any(k.startswith("visual_encoder_m.") for k in state)
    report.unexpected = [k for k in state if k not in own]
    report.missing = [k for k in own if k not in state and k not in dropped
                      and (has_momentum or not _is_momentum_key(k))]
    if strict and (report.missing or report.unexpected or not has_momentum):
        missing = report.missing + ([] if has_momentum else ["<momentum encoders (*_m)>"])
        raise RuntimeError(f"{path}: not the key set of this model: missing {missing[:10]} "
                           f"({len(missing)} in all), unexpected {report.unexpected[:10]} "
                           f"({len(report.unexpected)} in all)")
    module.load_state_dict(state, strict=False)
    if not has_momentum and hasattr(module, "momentum_pairs"):
        copy_online_to_momentum(module.momentum_pairs)
        report.momentum_copied = True
    get_logger().info(report.summary())
    return report
