"""Fashion-FINE local representations: shared attention pooling over patches/words, n-gram phrase feature,
global/local mixing.

Functions over parameters the task model owns, so the model's own attribute names (`W_v`,
`att_layer_v`, `unigram_conv`, ...) are the published state-dict keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def init_attention_pool(width: int) -> tuple[nn.Parameter, nn.Linear]:
    """The pooling vector `W_v (width, 1)` and projection `att_layer_v`, trunc-normal(0.02) init."""
    w_v = nn.Parameter(torch.empty(width, 1))
    layer = nn.Linear(width, width)
    nn.init.trunc_normal_(w_v, std=0.02)
    nn.init.trunc_normal_(layer.weight, std=0.02)
    nn.init.zeros_(layer.bias)
    return w_v, layer


def attention_weights(tokens: torch.Tensor, w_v: torch.Tensor, layer: nn.Linear,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """`softmax_j(tanh(layer(x_j)) @ W_v)` over the N tokens -> `(B, N)` in fp32.

    With a mask, masked positions get zero weight (fixed mode, docs/compat.md: compat.local_pool_mask);
    without, every position counts (the published behaviour).
    """
    scores = (torch.tanh(layer(tokens)) @ w_v.to(tokens.dtype)).squeeze(-1).float()
    if mask is not None:
        scores = scores.masked_fill(~mask.bool(), float("-inf"))
    return scores.softmax(dim=-1)


def attention_pool(tokens: torch.Tensor, w_v: torch.Tensor, layer: nn.Linear,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention-weighted sum of token features `(B, N, D) -> (B, D)`."""
    weights = attention_weights(tokens, w_v, layer, mask).to(tokens.dtype)
    return torch.einsum("bn,bnd->bd", weights, tokens)


def make_ngram_convs(width: int) -> tuple[nn.Conv1d, nn.Conv1d, nn.Conv1d]:
    """Uni/bi/tri-gram convolutions keeping the length (receptive fields 1, 3 and 5 tokens)."""
    return (nn.Conv1d(width, width, kernel_size=1, padding=0, dilation=1),
            nn.Conv1d(width, width, kernel_size=2, padding=1, dilation=2),
            nn.Conv1d(width, width, kernel_size=3, padding=2, dilation=2))


def ngram_features(tokens: torch.Tensor, convs: tuple[nn.Conv1d, ...],
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-position phrase features `(B, N, D)`: tanh of each n-gram map, max over the three."""
    x = tokens.transpose(1, 2)
    if mask is not None:  # padded positions contribute nothing to their neighbours' n-grams
        x = x * mask[:, None, :].to(x.dtype)
    maps = torch.stack([torch.tanh(conv(x)) for conv in convs], dim=2)
    return maps.amax(dim=2).transpose(1, 2)


def phrase_feature(tokens: torch.Tensor, convs: tuple[nn.Conv1d, ...],
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over positions of the n-gram features (over valid positions only when a mask is given)."""
    feats = ngram_features(tokens, convs, mask)
    if mask is None:
        return feats.mean(dim=1)
    m = mask.to(feats.dtype).unsqueeze(-1)
    return (feats * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def mix(global_feat: torch.Tensor, local_feat: torch.Tensor, local_ratio: float) -> torch.Tensor:
    """`norm((1 - r) * global + r * local)`."""
    return F.normalize((1.0 - local_ratio) * global_feat + local_ratio * local_feat, dim=-1)
