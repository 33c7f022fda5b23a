"""Losses of the Fashion-FINE models (focal contrastive with momentum distillation, hard-negative matching,
masked-token and replaced-token prediction, the symbol loss) and of ASEN++ (triplet, global-local alignment)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import NonFiniteError


def positive_targets(idx: torch.Tensor, idx_bank: torch.Tensor) -> torch.Tensor:
    """`y_ij = 1[idx_i == bank_j] / #positives_i` (B, K): uniform over every same-label column."""
    pos = (idx.view(-1, 1) == idx_bank.view(1, -1)).float()
    return pos / pos.sum(dim=1, keepdim=True)


def diagonal_targets(batch: int, columns: int, device: torch.device) -> torch.Tensor:
    """One-hot on column i for row i (the published fine-tuning target)."""
    y = torch.zeros(batch, columns, device=device)
    y[torch.arange(batch, device=device), torch.arange(batch, device=device)] = 1.0
    return y


def distilled_targets(momentum_logits: torch.Tensor, hard: torch.Tensor, alpha: float) -> torch.Tensor:
    """`alpha * softmax(momentum logits) + (1 - alpha) * hard targets`."""
    return alpha * momentum_logits.float().softmax(dim=1) + (1.0 - alpha) * hard


def focal_soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 1.0,
                             gamma: float = 0.0) -> torch.Tensor:
    """`mean_i [-sum_j alpha * (1 - p_ij)^gamma * log p_ij * q_ij]`, p = softmax(logits).

    The focal factor keeps its gradient (as published); alpha=1, gamma=0 is plain soft cross entropy.
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    weight = alpha * (1.0 - log_p.exp()).pow(gamma) if gamma else alpha
    return -(weight * log_p * targets).sum(dim=1).mean()


def symbol_loss(symbol_feat: torch.Tensor, image_feat: torch.Tensor) -> torch.Tensor:
    """`mean_i (1 - cos(symbol_i, image_i)) / 2` for unit vectors."""
    return ((1.0 - (symbol_feat.float() * image_feat.float()).sum(dim=-1)) / 2.0).mean()


def hard_negative_weights(sim: torch.Tensor, same: torch.Tensor | None = None, self_offset: int = 0) -> torch.Tensor:
    """Sampling weights over candidates: softmax of the similarities with each row's own column excluded
    (and, when `same` is given, every same-product pair excluded); a row with no admissible candidate
    falls back to uniform over the other columns. Non-finite similarities (diverged weights) raise
    `engine.errors.NonFiniteError`.

    `sim` is `(B, C)`: the in-batch block (C = B, own column i) or, for negatives gathered from every rank
    (BLIP), all ranks' batches (C = B * world size, own column `self_offset + i`).
    """
    if not bool(torch.isfinite(sim).all()):
        raise NonFiniteError("non-finite similarities (NaN or inf) before hard-negative sampling: the model's "
                             "weights diverged (learning rate too high?)")
    b, c = sim.shape
    rows = torch.arange(b, device=sim.device)
    own = torch.zeros(b, c, dtype=torch.bool, device=sim.device)
    own[rows, rows + self_offset] = True
    banned = own if same is None else (own | same)
    weights = sim.float().masked_fill(banned, float("-inf")).softmax(dim=1)
    empty = banned.all(dim=1)
    if empty.any():
        fallback = (~own).float() / max(1, c - 1)
        weights = torch.where(empty[:, None], fallback, weights)
    return torch.nan_to_num(weights, nan=0.0)


def sample_hard_negatives(sim: torch.Tensor, same: torch.Tensor | None = None, self_offset: int = 0) -> torch.Tensor:
    """One negative column per row, drawn from `hard_negative_weights` in a single batched multinomial."""
    return torch.multinomial(hard_negative_weights(sim, same, self_offset), 1).squeeze(1)


def matching_loss(logits: torch.Tensor, num_pos: int) -> torch.Tensor:
    """Cross entropy of `(num_pos + num_neg, 2)` match logits: first `num_pos` rows positive."""
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    labels[:num_pos] = 1
    return F.cross_entropy(logits.float(), labels)


def token_prediction_loss(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross entropy of `head(hidden)` over positions whose label is not -100, averaged over them.

    Only the labelled positions go through the head: identical to the full-sequence loss with
    `ignore_index=-100`, without materialising `(B, T, vocab)` logits.
    """
    keep = labels != -100
    if not keep.any():
        return hidden.sum() * 0.0
    logits = head(hidden[keep])
    return F.cross_entropy(logits.float(), labels[keep])


def triplet_loss(a: torch.Tensor, p: torch.Tensor, n: torch.Tensor, margin: float) -> torch.Tensor:
    """ASEN++ triplet loss: mean(max(0, m - cos(a, p) + cos(a, n))), in fp32."""
    a, p, n = a.float(), p.float(), n.float()
    return F.relu(margin - F.cosine_similarity(a, p, eps=1e-8) + F.cosine_similarity(a, n, eps=1e-8)).mean()


def alignment_loss(g: list[torch.Tensor], l: list[torch.Tensor]) -> torch.Tensor:  # noqa: E741
    """ASEN++ global-local alignment: sum over anchor/positive/negative of mean(1 - cos(global, local))
    (summed, not averaged, as published)."""
    return sum(F.relu(1 - F.cosine_similarity(gu.float(), lu.float(), eps=1e-8)).mean() for gu, lu in zip(g, l))
