"""ASEN++ (asenpp.md §2-3): a shared attribute table, a global branch (truncated ResNet-50 + attribute-aware
spatial and channel attention) and a local branch on an attention-guided crop (truncated ResNet-34).

Module attribute names mirror the published ones (`attrnet`, `choices.global|local.basenet|attnnet`,
`attr_transform1`, ...), so published checkpoints map onto this model with one rename (models/asen_keys.py).
Training forward returns the named losses; `encode` returns the evaluation embedding.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from engine.checkpoint import load_file, model_state_from
from engine.errors import DataError
from engine.logger import get_logger
from models.asen_config import AsenConfig, BackboneConfig
from models.asen_crop import crop_boxes, crop_resize

ROLES = ("anchor", "positive", "negative")


def build_trunk(name: str) -> nn.Module:
    """timm ResNet cut after layer3 (stride 16; no layer4, pooling or fc), torchvision initialisation."""
    # zero_init_last=False keeps BN weights at 1 as in torchvision; never pretrained (no network).
    return timm.create_model(name, pretrained=False, features_only=True, out_indices=(3,), zero_init_last=False)


def load_backbone_weights(trunk: nn.Module, path: str | Path, name: str) -> None:
    """Load a torchvision ImageNet state dict into a trunk; `layer4.*` / `fc.*` are ignored.

    Old torchvision files lack BatchNorm `num_batches_tracked`; any other difference is an error.
    """
    state = model_state_from(load_file(path), path)
    state = {k: v for k, v in state.items() if not k.startswith(("layer4.", "fc."))}
    own = trunk.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in state
             if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)) if keys]
        raise DataError(f"{path}: not a torchvision {name} state dict; " + "; ".join(parts))
    trunk.load_state_dict(state, strict=False)


class AttributeEmbedding(nn.Module):
    """The attribute table E (K x A), shared by both branches."""

    def __init__(self, num_attributes: int, dim: int) -> None:
        super().__init__()
        self.attr_embedding = nn.Embedding(num_attributes, dim)

    def forward(self, attrs: torch.Tensor) -> torch.Tensor:
        return self.attr_embedding(attrs)


class AttnEmbedding(nn.Module):
    """Attribute-aware spatial attention (ASA) then channel attention (ACA), then the output layer (§2.3)."""

    def __init__(self, channels: int, attr_dim: int, common: int, reduction: int, out_dim: int,
                 spatial: bool = True, channel: bool = True) -> None:
        super().__init__()
        self.common = common
        if spatial:
            self.attr_transform1 = nn.Linear(attr_dim, common)
            self.conv = nn.Conv2d(channels, common, kernel_size=1)
        if channel:
            self.attr_transform2 = nn.Linear(attr_dim, attr_dim)
            self.fc1 = nn.Linear(channels + attr_dim, channels // reduction)
            self.fc2 = nn.Linear(channels // reduction, channels)
        self.spatial, self.channel = spatial, channel
        self.feature_fc = nn.Linear(channels, out_dim)

    def spatial_weights(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """alpha (B, H*W): softmax over locations of <tanh(W_a1 e), tanh(W_x X)> / sqrt(d), in fp32."""
        p = torch.tanh(self.conv(x)).flatten(2).float()  # (B, d, HW)
        q = torch.tanh(self.attr_transform1(e)).float()  # (B, d)
        with torch.autocast(x.device.type, enabled=False):
            scores = torch.einsum("bd,bdn->bn", q, p) / math.sqrt(p.shape[1])
            return scores.softmax(dim=1)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(embedding (B, D), attention map (B, H, W) or None without ASA)."""
        b, _, h, w = x.shape
        if self.spatial:
            alpha = self.spatial_weights(x, e)
            with torch.autocast(x.device.type, enabled=False):
                f = torch.einsum("bn,bcn->bc", alpha, x.flatten(2).float())
            attn = alpha.view(b, h, w)
        else:
            f, attn = x.float().mean(dim=(2, 3)), None
        if self.channel:
            f = f * self.channel_weights(f, e)
        return self.feature_fc(f), attn

    def channel_weights(self, f: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """m (B, C) in (0, 1): sigmoid(W_c2 relu(W_c1 [f ; relu(W_a2 e)]))."""
        r = F.relu(self.attr_transform2(e))
        return torch.sigmoid(self.fc2(F.relu(self.fc1(torch.cat([f.to(r.dtype), r], dim=1)))))


class Branch(nn.Module):
    """Trunk (`basenet`) + attention head (`attnnet`)."""

    def __init__(self, backbone: BackboneConfig, attention: Any, attr_dim: int, out_dim: int) -> None:
        super().__init__()
        self.basenet = build_trunk(backbone.NAME)
        channels = self.basenet.feature_info.channels()[-1]
        if channels != backbone.EMBED_SIZE:
            raise ValueError(f"{backbone.NAME} gives {channels} channels after layer3 but "
                             f"BACKBONE.EMBED_SIZE is {backbone.EMBED_SIZE}")
        self.attnnet = AttnEmbedding(channels, attr_dim, attention.SPATIAL.COMMON_EMBED_SIZE,
                                     attention.CHANNEL.REDUCTION_RATE, out_dim,
                                     attention.SPATIAL.ENABLE, attention.CHANNEL.ENABLE)

    def forward(self, images: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.attnnet(self.basenet(images)[-1], e)


def triplet_loss(a: torch.Tensor, p: torch.Tensor, n: torch.Tensor, margin: float) -> torch.Tensor:
    """mean(max(0, m - cos(a, p) + cos(a, n))), in fp32 (§3.1)."""
    a, p, n = a.float(), p.float(), n.float()
    return F.relu(margin - F.cosine_similarity(a, p, eps=1e-8) + F.cosine_similarity(a, n, eps=1e-8)).mean()


def alignment_loss(g: list[torch.Tensor], l: list[torch.Tensor]) -> torch.Tensor:  # noqa: E741
    """Sum over anchor/positive/negative of mean(1 - cos(global, local)) (§3.3: summed, not averaged)."""
    return sum(F.relu(1 - F.cosine_similarity(gu.float(), lu.float(), eps=1e-8)).mean() for gu, lu in zip(g, l))


class ASENet(nn.Module):
    """The ASEN++ model; the local branch exists only when MODEL.LOCAL.ENABLE (stage 2)."""

    def __init__(self, cfg: AsenConfig, num_attributes: int) -> None:
        super().__init__()
        m = cfg.MODEL
        self.cfg = cfg
        self.attrnet = AttributeEmbedding(num_attributes, m.ATTRIBUTE.EMBED_SIZE)
        self.choices = nn.ModuleDict({"global": Branch(m.GLOBAL.BACKBONE, m.GLOBAL.ATTENTION,
                                                       m.ATTRIBUTE.EMBED_SIZE, m.EMBED_SIZE)})
        if m.LOCAL.ENABLE:
            self.choices["local"] = Branch(m.LOCAL.BACKBONE, m.LOCAL.ATTENTION, m.ATTRIBUTE.EMBED_SIZE,
                                           m.EMBED_SIZE)
        self.crop_fallbacks = 0  # constant attention maps that fell back to the whole image

    @property
    def has_local(self) -> bool:
        return "local" in self.choices

    def load_imagenet(self) -> None:
        """Load the configured local ImageNet weights into the trunks (warn when a path is empty)."""
        for level, bcfg in (("global", self.cfg.MODEL.GLOBAL.BACKBONE), ("local", self.cfg.MODEL.LOCAL.BACKBONE)):
            if level not in self.choices:
                continue
            if bcfg.WEIGHTS:
                load_backbone_weights(self.choices[level].basenet, bcfg.WEIGHTS, bcfg.NAME)
                get_logger().info("%s backbone %s: ImageNet weights from %s", level, bcfg.NAME, bcfg.WEIGHTS)
            else:
                get_logger().warning("%s backbone %s: random initialisation (MODEL.%s.BACKBONE.WEIGHTS is empty)",
                                     level, bcfg.NAME, level.upper())

    def embed(self, images: torch.Tensor, attrs: torch.Tensor, level: str = "global"
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(embedding (B, D), attention map (B, H, W) or None) of one branch for the given attributes."""
        return self.choices[level](images, self.attrnet(attrs))

    def _parts(self, images: torch.Tensor, attrs: torch.Tensor, level: str
               ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """Embeddings of anchors, positives, negatives: three forwards (published BN statistics) or one."""
        if self.cfg.MODEL.BN_PER_TRIPLET_PART:
            outs = [self.embed(x, a, level) for x, a in zip(images.chunk(3), attrs.chunk(3))]
            return [o[0] for o in outs], [o[1] for o in outs]
        emb, attn = self.embed(images, attrs, level)
        return list(emb.chunk(3)), list(attn.chunk(3)) if attn is not None else [None] * 3

    def local_views(self, attn: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Local-branch inputs cropped from the originals by the (detached) global attention maps, and the
        (B, 3) [x, y, d] crop squares in original pixels."""
        inp = self.cfg.INPUT
        with torch.autocast(attn.device.type, enabled=False):  # 8-bit thresholds and pixel sums need fp32
            boxes, fallback = crop_boxes(attn.detach().float(), batch["size"], inp.GLOBAL_SIZE, inp.THRESHOLD)
            views = crop_resize(batch["original"], batch["size"], boxes, inp.LOCAL_SIZE, inp.PIXEL_MEAN,
                                inp.PIXEL_STD)
        self.crop_fallbacks += int(fallback.sum())
        return views, boxes

    def forward(self, batch: dict[str, torch.Tensor], ctx: Any = None) -> dict[str, torch.Tensor]:
        """Training losses of a batch ordered [anchors, positives, negatives] (§3.2-3.4)."""
        images, attrs = batch["image"], batch["attr"]
        if images.shape[0] % 3:
            raise ValueError(f"a triplet batch needs 3B images, got {images.shape[0]}")
        margin = self.cfg.SOLVER.MARGIN
        g, attn = self._parts(images, attrs, "global")
        losses = {"global": triplet_loss(*g, margin)}
        if self.has_local:
            views, _ = self.local_views(torch.cat(attn), batch)
            loc, _ = self._parts(views, attrs, "local")
            losses["local"] = triplet_loss(*loc, margin)
            losses["align"] = alignment_loss(g, loc)
        return losses

    def encode(self, batch: dict[str, torch.Tensor], with_parts: bool = False) -> dict[str, torch.Tensor]:
        """Evaluation embedding `fused`: L2-normalised global (stage 1) or [sqrt(b) g, sqrt(1-b) l] (stage 2).

        With `with_parts` also the normalised `global`/`local` embeddings, attention maps and crop boxes.
        """
        images, attrs = batch["image"], batch["attr"]
        g, attn = self.embed(images, attrs, "global")
        g = F.normalize(g.float(), dim=1)
        out = {"fused": g}
        if with_parts:
            out["global"] = g
            if attn is not None:
                out["attention"] = attn.float()
        if self.has_local:
            views, boxes = self.local_views(attn, batch)
            loc = F.normalize(self.embed(views, attrs, "local")[0].float(), dim=1)
            beta = self.cfg.SOLVER.BETA
            out["fused"] = torch.cat([math.sqrt(beta) * g, math.sqrt(1 - beta) * loc], dim=1)
            if with_parts:
                out["local"], out["box"] = loc, boxes
        return out


def param_groups(model: ASENet, cfg: AsenConfig) -> list[dict]:
    """Stage 1: one group at BASE_LR. Stage 2 (§4.3): local backbone and local head at BASE_LR; the global
    branch with the shared attribute table at BASE_LR_SLOW."""
    lr, slow = cfg.SOLVER.BASE_LR, cfg.SOLVER.BASE_LR_SLOW
    if not model.has_local:
        return [{"name": "all", "params": list(model.parameters()), "lr": lr}]
    local = model.choices["local"]
    glob = list(model.attrnet.parameters()) + list(model.choices["global"].parameters())
    return [
        {"name": "local_backbone", "params": list(local.basenet.parameters()), "lr": lr},
        {"name": "local_head", "params": list(local.attnnet.parameters()), "lr": lr},
        {"name": "global_and_attributes", "params": glob, "lr": slow},
    ]


def find_backbone_weights(folder: str | Path, name: str) -> Path:
    """`<name>.pth` or the torchvision release file `<name>-<hash>.pth` inside `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--backbone-weights {folder}: not a folder (give a folder, or global=FILE / local=FILE)")
    found = sorted(folder.glob(f"{name}.pth")) + sorted(folder.glob(f"{name}-*.pth"))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} candidate"
        raise DataError(f"{folder}: {what} weight file(s) for {name} (expected {name}.pth or {name}-<hash>.pth, "
                        "torchvision's ImageNet release)")
    return found[0]


def apply_backbone_weights(cfg: AsenConfig, items: list[str] | None) -> None:
    """`--backbone-weights DIR | global=FILE | local=FILE ...` -> MODEL.<BRANCH>.BACKBONE.WEIGHTS."""
    branches = {"global": cfg.MODEL.GLOBAL.BACKBONE, "local": cfg.MODEL.LOCAL.BACKBONE}
    for item in items or []:
        level, sep, path = item.partition("=")
        if sep:
            if level not in branches:
                raise DataError(f"--backbone-weights {item}: use global=FILE or local=FILE")
            branches[level].WEIGHTS = path
            continue
        branches["global"].WEIGHTS = str(find_backbone_weights(item, branches["global"].NAME))
        if cfg.MODEL.LOCAL.ENABLE:
            branches["local"].WEIGHTS = str(find_backbone_weights(item, branches["local"].NAME))
