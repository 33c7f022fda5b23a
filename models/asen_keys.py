"""Published ASEN++ checkpoint keys (asenpp.md §2.8) and weight loading with a missing/unexpected report.

The published model registers the shared attribute table under both branches
(`choices.global.attrnet.*` and `choices.local.attrnet.*`); this framework stores it once as `attrnet.*`.
Every other key is identical in both layouts.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.checkpoint import load_file, model_state_from
from engine.errors import DataError

_SHARED = re.compile(r"^choices\.(global|local)\.attrnet\.(.+)$")


def is_published_layout(state: dict[str, torch.Tensor]) -> bool:
    return any(_SHARED.match(k) for k in state)


def from_published(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Published key layout -> this model's (the duplicated attribute table becomes one `attrnet.*` entry)."""
    out: dict[str, torch.Tensor] = {}
    shared: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _SHARED.match(key)
        if match:
            shared.setdefault(match.group(2), {})[match.group(1)] = value
        else:
            out[key] = value
    for name, copies in shared.items():
        ref = copies.get("global", next(iter(copies.values())))
        for level, value in copies.items():
            if value.shape != ref.shape or (value.device.type != "meta" and not torch.equal(value, ref)):
                raise ValueError(f"published checkpoint: choices.{level}.attrnet.{name} differs from the global copy; "
                                 "the attribute table is shared and must be identical")
        out[f"attrnet.{name}"] = ref
    return out


def to_published(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This model's keys -> the published layout (attribute table repeated under every branch present)."""
    levels = sorted({k.split(".")[1] for k in state if k.startswith("choices.")}, key=["global", "local"].index)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("attrnet."):
            for level in levels:
                out[f"choices.{level}.{key}"] = value
        else:
            out[key] = value
    return out


def summarize_keys(keys: list[str], depth: int = 3) -> str:
    """'choices.local.basenet.* (174), ...' — key groups by their first `depth` components."""
    groups = Counter(".".join(k.split(".")[:depth]) for k in keys)
    return ", ".join(f"{g}.* ({n})" for g, n in groups.items())


@dataclass
class LoadReport:
    """What a weight file did to a model."""

    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    published: bool = False

    def describe(self) -> str:
        parts = [f"{self.loaded} tensors loaded" + (" (published key layout)" if self.published else "")]
        if self.missing:
            parts.append(f"not in the file: {summarize_keys(self.missing)}")
        if self.unexpected:
            parts.append(f"ignored (not in the model): {summarize_keys(self.unexpected)}")
        return "; ".join(parts)


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], *, strict: bool, source: str = "<weights>"
                 ) -> LoadReport:
    """Copy matching tensors into `model`; shape mismatches are errors, and with `strict` so are missing or
    unexpected keys. Returns the report (the published code ignored such differences silently)."""
    published = is_published_layout(state)
    if published:
        state = from_published(state)
    own = model.state_dict()
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and v.shape != own[k].shape]
    if wrong:
        raise DataError(f"{source}: shape mismatch (different config?): {'; '.join(wrong[:5])}")
    report = LoadReport(loaded=sum(k in own for k in state), missing=[k for k in own if k not in state],
                        unexpected=[k for k in state if k not in own], published=published)
    if strict and (report.missing or report.unexpected):
        raise DataError(f"{source}: weights do not match the model: {report.describe()} "
                         "(pass --allow-partial to evaluate anyway)")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return report


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint file (ours or published) loaded with `weights_only=True`.

    Published files may store `mAP` as a NumPy scalar; those NumPy types are allowed, nothing else.
    """
    try:
        return load_file(path)
    except RuntimeError as exc:
        if "weights_only" not in str(exc.__cause__ or exc):
            raise
    allowed = [np._core.multiarray.scalar, np.dtype, np.dtypes.Float64DType, np.dtypes.Float32DType]
    with torch.serialization.safe_globals(allowed):
        return load_file(path)


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict of a checkpoint file (ours: key `model`; published: `state_dict` or `model`)."""
    return model_state_from(read_checkpoint(path), path)
