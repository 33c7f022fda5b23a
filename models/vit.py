"""ViT image encoder (timm, DeiT/ALBEF parameter names) with block checkpointing (pos-embed resampling: models/weights.py)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from engine.config import field


@dataclass
class VisionConfig:
    """ViT sizes; the defaults are ViT-B/16."""

    image_res: int = field(256, "input resolution (256 ALBEF variant, 384 BLIP variant)")
    patch_size: int = field(16, "patch side in pixels")
    width: int = field(768, "token width")
    depth: int = field(12, "transformer blocks")
    heads: int = field(12, "attention heads")
    mlp_ratio: float = field(4.0, "MLP hidden = mlp_ratio * width")
    drop_path: float = field(0.0, "stochastic depth rate")
    grad_ckpt_layers: int = field(
        0, "activation checkpointing on the last N blocks during training (N >= depth: every block); the forward is "
           "recomputed in the backward, same results")
    init_std: float = field(0.02, "std of the trunc-normal init of the blocks' linear weights (timm: 0.02)")
    init_from: str | None = field(None, "local timm / DeiT ViT checkpoint file initialising the image encoder "
                                  "when no checkpoint is given (head dropped, position embeddings resampled)")

    def validate(self) -> None:
        if self.image_res % self.patch_size:
            raise ValueError(f"image_res {self.image_res} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.grad_ckpt_layers < 0:  # more than there are (published BLIP: 4 at any depth) = all of them
            raise ValueError(f"grad_ckpt_layers must be >= 0, got {self.grad_ckpt_layers}")


class VisionEncoder(VisionTransformer):
    """timm's VisionTransformer returning all tokens `(B, 1 + P, width)` after the final LayerNorm."""

    def __init__(self, cfg: VisionConfig, device: torch.device | str | None = None) -> None:
        super().__init__(
            img_size=cfg.image_res, patch_size=cfg.patch_size, embed_dim=cfg.width, depth=cfg.depth,
            num_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=True, num_classes=0, global_pool="",
            drop_path_rate=cfg.drop_path, norm_layer=partial(nn.LayerNorm, eps=1e-6), device=device,
        )
        self.grad_ckpt_layers = cfg.grad_ckpt_layers
        if cfg.init_std != 0.02:  # small widths need a larger scale than ViT-B's 0.02 to start non-degenerate
            for module in self.blocks.modules():
                if isinstance(module, nn.Linear):
                    nn.init.trunc_normal_(module.weight, std=cfg.init_std)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        x = self.norm_pre(x)
        first_ckpt = len(self.blocks) - self.grad_ckpt_layers
        for i, block in enumerate(self.blocks):
            if self.training and i >= first_ckpt and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.forward_features(x)
