"""ASEN++: a shared attribute table, a global branch (truncated ResNet-50 + attribute-aware
spatial and channel attention) and a local branch on an attention-guided crop (truncated ResNet-34).

Module attribute names mirror the published ones (`attrnet`, `choices.global|local.basenet|attnnet`,
`attr_transform1`, ...), so published checkpoints map onto this model with one rename (models/weights.py).
Training forward returns the named losses; `encode` returns the evaluation embedding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from models.asen_config import AsenModelConfig, BackboneConfig
from models.asen_crop import crop_boxes, crop_resize
from models.losses import alignment_loss, triplet_loss

ROLES = ("anchor", "positive", "negative")


def build_trunk(name: str) -> nn.Module:
    """timm ResNet cut after layer3 (stride 16; no layer4, pooling or fc), torchvision initialisation."""
    # zero_init_last=False keeps BN weights at 1 as in torchvision; never pretrained (no network).
    return timm.create_model(name, pretrained=False, features_only=True, out_indices=(3,), zero_init_last=False)


class AttributeEmbedding(nn.Module):
    """The attribute table E (K x A), shared by both branches."""

    def __init__(self, num_attributes: int, dim: int) -> None:
        super().__init__()
        self.attr_embedding = nn.Embedding(num_attributes, dim)

    def forward(self, attrs: torch.Tensor) -> torch.Tensor:
        return self.attr_embedding(attrs)


class AttnEmbedding(nn.Module):
    """Attribute-aware spatial attention (ASA) then channel attention (ACA), then the output layer."""

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


class ASENet(nn.Module):
    """The ASEN++ model; the local branch exists only when `cfg.LOCAL.ENABLE` (stage 2).

    `margin` is the triplet margin, `beta` the test-time weight of the global embedding; the local crop
    thresholds the global attention at `threshold` on the `global_size` input and resizes the crop of the
    original image to `local_size`, normalised with `pixel_mean` / `pixel_std` (RGB, [0, 1] scale).
    """

    def __init__(self, cfg: AsenModelConfig, num_attributes: int, *, margin: float = 0.2, beta: float = 0.6,
                 global_size: int = 224, local_size: int = 112, threshold: float = 0.4,
                 pixel_mean: Sequence[float] = (0.485, 0.456, 0.406),
                 pixel_std: Sequence[float] = (0.229, 0.224, 0.225)) -> None:
        super().__init__()
        cfg.validate()
        m = self.cfg = cfg
        self.margin, self.beta, self.threshold = margin, beta, threshold
        self.global_size, self.local_size = global_size, local_size
        self.pixel_mean, self.pixel_std = list(pixel_mean), list(pixel_std)
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

    def embed(self, images: torch.Tensor, attrs: torch.Tensor, level: str = "global"
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(embedding (B, D), attention map (B, H, W) or None) of one branch for the given attributes."""
        return self.choices[level](images, self.attrnet(attrs))

    def _parts(self, images: torch.Tensor, attrs: torch.Tensor, level: str
               ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """Embeddings of anchors, positives, negatives: three forwards (published BN statistics) or one."""
        if self.cfg.BN_PER_TRIPLET_PART:
            outs = [self.embed(x, a, level) for x, a in zip(images.chunk(3), attrs.chunk(3))]
            return [o[0] for o in outs], [o[1] for o in outs]
        emb, attn = self.embed(images, attrs, level)
        return list(emb.chunk(3)), list(attn.chunk(3)) if attn is not None else [None] * 3

    def local_views(self, attn: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Local-branch inputs cropped from the originals by the (detached) global attention maps, and the
        (B, 3) [x, y, d] crop squares in original pixels."""
        with torch.autocast(attn.device.type, enabled=False):  # 8-bit thresholds and pixel sums need fp32
            boxes, fallback = crop_boxes(attn.detach().float(), batch["size"], self.global_size, self.threshold)
            views = crop_resize(batch["original"], batch["size"], boxes, self.local_size, self.pixel_mean,
                                self.pixel_std)
        self.crop_fallbacks += int(fallback.sum())
        return views, boxes

    def forward(self, batch: dict[str, torch.Tensor], ctx: Any = None) -> dict[str, torch.Tensor]:
        """Training losses of a batch ordered [anchors, positives, negatives]."""
        images, attrs = batch["image"], batch["attr"]
        if images.shape[0] % 3:
            raise ValueError(f"a triplet batch needs 3B images, got {images.shape[0]}")
        margin = self.margin
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
            beta = self.beta
            out["fused"] = torch.cat([math.sqrt(beta) * g, math.sqrt(1 - beta) * loc], dim=1)
            if with_parts:
                out["local"], out["box"] = loc, boxes
        return out
