"""BERT text encoder with image cross-attention (ALBEF fusion layers, BLIP MED layers), SDPA attention,
and the published parameter names (`embeddings.*`, `encoder.layer.N.attention.self.query`, ...).

Written here rather than taken from transformers: its BertModel only allows cross-attention in decoder
(causal) mode, while the fusion layers need bidirectional self-attention plus cross-attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from engine.config import field


@dataclass
class TextConfig:
    """BERT sizes; the defaults are bert-base-uncased with fusion from layer 6 (ALBEF)."""

    hidden: int = field(768, "hidden width")
    layers: int = field(12, "transformer layers")
    heads: int = field(12, "attention heads")
    intermediate: int = field(3072, "feed-forward width")
    max_positions: int = field(512, "position embeddings")
    type_vocab: int = field(2, "token type embeddings (0 = none, as in BLIP's MED BERT)")
    dropout: float = field(0.1, "hidden and attention dropout")
    initializer_range: float = field(0.02, "std of the normal init of linear and embedding weights")
    fusion_layer: int = field(6, "first layer with cross-attention (ALBEF); layers below are text-only")
    cross_attention: Literal["fusion", "all"] = field(
        "fusion", "fusion: layers >= fusion_layer cross-attend (ALBEF); all: every layer (BLIP MED)")
    grad_ckpt_layers: int = field(
        0, "activation checkpointing on the last N layers during training (ALBEF: the fusion layers first, then "
           "the upper text layers; N >= layers: every one); the forward is recomputed in the backward, same results")
    init_from: str | None = field(None, "local Hugging Face BERT folder (config.json + model.safetensors or "
                                  "pytorch_model.bin) initialising the text encoder when no checkpoint is given; "
                                  "its sizes must match these")

    def validate(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not divisible by heads {self.heads}")
        if not 0 <= self.fusion_layer <= self.layers:
            raise ValueError(f"fusion_layer {self.fusion_layer} outside 0..{self.layers}")
        if self.grad_ckpt_layers < 0:  # more than there are (published BLIP: 4 at any depth) = all of them
            raise ValueError(f"grad_ckpt_layers must be >= 0, got {self.grad_ckpt_layers}")


class BertEmbeddings(nn.Module):
    def __init__(self, vocab_size: int, cfg: TextConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, cfg.hidden, padding_idx=0)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.hidden)
        # BLIP's MED BERT has no token-type embeddings (and no such key in its state dict).
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab, cfg.hidden) if cfg.type_vocab else None
        self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=1e-12)
        self.dropout = nn.Dropout(cfg.dropout)
        self.register_buffer("position_ids", torch.arange(cfg.max_positions).unsqueeze(0), persistent=True)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        x = self.word_embeddings(input_ids) + self.position_embeddings(self.position_ids[:, :length])
        if self.token_type_embeddings is not None:
            x = x + self.token_type_embeddings.weight[0]
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    """Multi-head attention through `scaled_dot_product_attention`; keys/values may come from the image."""

    def __init__(self, cfg: TextConfig, kv_width: int | None = None) -> None:
        super().__init__()
        self.heads, self.dropout = cfg.heads, cfg.dropout
        kv_width = kv_width or cfg.hidden
        self.query = nn.Linear(cfg.hidden, cfg.hidden)
        self.key = nn.Linear(kv_width, cfg.hidden)
        self.value = nn.Linear(kv_width, cfg.hidden)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = self._split(self.query(x)), self._split(self.key(context)), self._split(self.value(context))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        b, h, n, d = out.shape
        return out.transpose(1, 2).reshape(b, n, h * d)


class BertSelfOutput(nn.Module):
    def __init__(self, cfg: TextConfig, in_width: int | None = None) -> None:
        super().__init__()
        self.dense = nn.Linear(in_width or cfg.hidden, cfg.hidden)
        self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=1e-12)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: TextConfig, kv_width: int | None = None) -> None:
        super().__init__()
        self.self = BertSelfAttention(cfg, kv_width)
        self.output = BertSelfOutput(cfg)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.output(self.self(x, context, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden, cfg.intermediate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class BertLayer(nn.Module):
    """Self-attention, optional cross-attention to image tokens, feed-forward (post-norm)."""

    def __init__(self, cfg: TextConfig, cross_width: int | None) -> None:
        super().__init__()
        self.attention = BertAttention(cfg)
        self.has_cross = cross_width is not None
        if self.has_cross:
            self.crossattention = BertAttention(cfg, kv_width=cross_width)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertSelfOutput(cfg, in_width=cfg.intermediate)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, image: torch.Tensor | None = None,
                image_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attention(x, mask=mask)
        if image is not None:
            x = self.crossattention(x, context=image, mask=image_mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, cfg: TextConfig, cross_layers: range, cross_width: int) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            BertLayer(cfg, cross_width if i in cross_layers else None) for i in range(cfg.layers))


def attention_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """`(B, T)` 1/0 padding mask -> boolean `(B, 1, 1, T)` SDPA mask (True = attend)."""
    if mask is None:
        return None
    return mask[:, None, None, :].bool()


class BertModel(nn.Module):
    """BERT whose forward runs text mode (no image), fusion mode (upper layers on given states), or
    multimodal mode (all layers, cross-attending where the layer has cross-attention)."""

    def __init__(self, vocab_size: int, cfg: TextConfig, image_width: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = BertEmbeddings(vocab_size, cfg)
        cross = range(cfg.fusion_layer, cfg.layers) if cfg.cross_attention == "fusion" else range(cfg.layers)
        self.encoder = BertEncoder(cfg, cross, image_width)
        self.apply(partial(init_bert_weights, std=cfg.initializer_range))

    def _run(self, x: torch.Tensor, mask: torch.Tensor | None, layers: range, image: torch.Tensor | None,
             image_mask: torch.Tensor | None) -> torch.Tensor:
        bias = attention_bias(mask, x.dtype)
        image_bias = attention_bias(image_mask, x.dtype)
        first_ckpt = self.cfg.layers - self.cfg.grad_ckpt_layers
        recompute = self.training and torch.is_grad_enabled()
        for i in layers:
            layer = self.encoder.layer[i]
            args = (x, bias, image if layer.has_cross else None, image_bias if layer.has_cross else None)
            x = checkpoint(layer, *args, use_reentrant=False) if recompute and i >= first_ckpt else layer(*args)
        return x

    def text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embeddings + text-only layers (ALBEF: layers below fusion_layer; BLIP: all, cross-attn skipped)."""
        end = self.cfg.fusion_layer if self.cfg.cross_attention == "fusion" else self.cfg.layers
        return self._run(self.embeddings(input_ids), attention_mask, range(end), None, None)

    def fusion(self, hidden: torch.Tensor, attention_mask: torch.Tensor, image: torch.Tensor,
               image_mask: torch.Tensor | None = None) -> torch.Tensor:
        """ALBEF fusion: layers fusion_layer.. on text states, cross-attending to image tokens."""
        return self._run(hidden, attention_mask, range(self.cfg.fusion_layer, self.cfg.layers), image, image_mask)

    def multimodal(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image: torch.Tensor,
                   image_mask: torch.Tensor | None = None) -> torch.Tensor:
        """BLIP multimodal mode: embeddings and every layer, with cross-attention where present."""
        return self._run(self.embeddings(input_ids), attention_mask, range(self.cfg.layers), image, image_mask)


class BertPredictionTransform(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class BertLMPredictions(nn.Module):
    """Masked-LM head; `bias` and `decoder.bias` are one tensor (both keys appear in the state dict)."""

    def __init__(self, hidden: int, vocab_size: int) -> None:
        super().__init__()
        self.transform = BertPredictionTransform(hidden)
        self.decoder = nn.Linear(hidden, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.decoder.bias = self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x))


class MLMHead(nn.Module):
    """`decoder_layer` of the published model: `decoder_layer.predictions.*`."""

    def __init__(self, hidden: int, vocab_size: int) -> None:
        super().__init__()
        self.predictions = BertLMPredictions(hidden, vocab_size)
        self.apply(init_bert_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictions(x)


class ReplacedTokenHead(nn.Module):
    """`replace_predict_layer`: dense, GELU, LayerNorm, then a `kinds`-way classifier per token."""

    def __init__(self, hidden: int, kinds: int = 2) -> None:
        super().__init__()
        self.dense_layer = nn.Linear(hidden, hidden)
        self.norm_layer = nn.LayerNorm(hidden, eps=1e-12)
        self.predict_layer = nn.Linear(hidden, kinds)
        self.apply(init_bert_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict_layer(self.norm_layer(F.gelu(self.dense_layer(x))))


def init_bert_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT initialisation: normal(0, std) weights, zero biases, unit LayerNorm."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=std)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
