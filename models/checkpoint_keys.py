"""Loading published and framework checkpoints into the Fashion-FINE models: key remapping (ALBEF /
FashionSAP / Fashion-FINE names), position-embedding interpolation, momentum copies, and a report."""

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


@dataclass
class LoadReport:
    """What a checkpoint load did."""

    path: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    remapped: int = 0
    interpolated: list[str] = field(default_factory=list)
    dropped_shape: list[str] = field(default_factory=list)
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
    found = [p for p in REQUIRED_PREFIXES if any(k.startswith(p) for k in state)]
    if len(found) < len(REQUIRED_PREFIXES):
        missing = sorted(set(REQUIRED_PREFIXES) - set(found))
        raise RuntimeError(f"{path} does not hold a Fashion-FINE/ALBEF model: no keys under {missing} "
                           f"(first keys in the file: {sorted(state)[:5]})")
    _interpolate(state, own, report)
    for key in list(state):
        if key in own and state[key].shape != own[key].shape:
            if strict or not key.startswith(QUEUE_KEYS):
                raise RuntimeError(f"{path}: {key} has shape {tuple(state[key].shape)}, the model expects "
                                   f"{tuple(own[key].shape)} (a different config or vocabulary?)")
            report.dropped_shape.append(key)
            del state[key]
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


def _is_momentum_key(key: str) -> bool:
    return key.split(".", 1)[0].endswith("_m")
