"""Fashion-FINE building blocks on hand-checkable numbers: attention pooling, n-gram phrases, the losses,
queues and the momentum update."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.fine_local import (
    attention_pool,
    attention_weights,
    make_ngram_convs,
    ngram_features,
    phrase_feature,
)
from models.losses import (
    focal_soft_cross_entropy,
    hard_negative_weights,
    positive_targets,
    sample_hard_negatives,
    symbol_loss,
    token_prediction_loss,
)
from models.momentum import momentum_update, write_queue


def assert_rows(actual: torch.Tensor, expected: list[list[float]], atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual.float(), torch.tensor(expected, dtype=torch.float32), atol=atol, rtol=0)


def identity_pool(width: int = 2) -> tuple[torch.Tensor, nn.Linear]:
    """`att_layer_v` = identity, `W_v` = e_0: the score of token x is tanh(x_0)."""
    layer = nn.Linear(width, width).requires_grad_(False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(width))
        layer.bias.zero_()
    w_v = torch.zeros(width, 1)
    w_v[0, 0] = 1.0
    return w_v, layer


# ----------------------------------------------------------------------------- attention pooling


def test_attention_weights_match_the_formula_and_sum_to_one():
    w_v, layer = identity_pool()
    tokens = torch.tensor([[[0.5, 3.0], [-1.0, 2.0], [2.0, -4.0]]])
    scores = [math.tanh(0.5), math.tanh(-1.0), math.tanh(2.0)]
    total = sum(math.exp(s) for s in scores)
    expected = [math.exp(s) / total for s in scores]
    weights = attention_weights(tokens, w_v, layer)
    assert weights.shape == (1, 3)
    assert weights[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-6)
    pooled = attention_pool(tokens, w_v, layer)
    direct = sum(e * tokens[0, j] for j, e in enumerate(expected))
    assert pooled[0].tolist() == pytest.approx(direct.tolist(), abs=1e-6)


def test_masked_positions_get_exactly_zero_weight():
    w_v, layer = identity_pool()
    tokens = torch.tensor([[[0.5, 3.0], [-1.0, 2.0], [2.0, -4.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 0, 1, 0]])
    weights = attention_weights(tokens, w_v, layer, mask)
    assert weights[0, 1].item() == 0.0 and weights[0, 3].item() == 0.0
    a, c = math.exp(math.tanh(0.5)), math.exp(math.tanh(2.0))
    assert weights[0, [0, 2]].tolist() == pytest.approx([a / (a + c), c / (a + c)], abs=1e-6)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-6)
    pooled = attention_pool(tokens, w_v, layer, mask)
    expected = (a * tokens[0, 0] + c * tokens[0, 2]) / (a + c)
    assert pooled[0].tolist() == pytest.approx(expected.tolist(), abs=1e-6)


def test_unmasked_compat_pooling_includes_padding():
    """Without a mask (the published behaviour, compat.local_pool_mask) padded positions take weight and move the result."""
    w_v, layer = identity_pool()
    tokens = torch.tensor([[[0.5, 3.0], [-1.0, 2.0], [0.0, 0.0]]])  # last position: padding
    weights = attention_weights(tokens, w_v, layer)
    assert weights[0, 2].item() == pytest.approx(math.exp(0.0) / sum(math.exp(math.tanh(v)) for v in (0.5, -1.0, 0.0)))
    other = tokens.clone()
    other[0, 2] = torch.tensor([5.0, 5.0])
    assert not torch.allclose(attention_pool(tokens, w_v, layer), attention_pool(other, w_v, layer))
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(attention_pool(tokens, w_v, layer, mask), attention_pool(other, w_v, layer, mask))


# ----------------------------------------------------------------------------- n-gram phrases


@pytest.mark.parametrize("length", [1, 2, 7])
def test_ngram_features_keep_the_length(length):
    convs = make_ngram_convs(4)
    tokens = torch.randn(3, length, 4)
    assert ngram_features(tokens, convs).shape == (3, length, 4)
    assert phrase_feature(tokens, convs).shape == (3, 4)
    for conv in convs:
        assert conv(tokens.transpose(1, 2)).shape == (3, 4, length)


def test_ngram_receptive_fields_are_1_3_and_5_tokens():
    """A unit impulse at position p reaches outputs {p}, {p-1, p+1} and {p-2, p, p+2}."""
    torch.manual_seed(0)
    convs = make_ngram_convs(3)
    length, p = 9, 4
    zero = torch.zeros(1, 3, length)
    impulse = zero.clone()
    impulse[0, :, p] = 1.0
    reached = []
    for conv in convs:
        changed = (conv(impulse) - conv(zero)).abs().sum(dim=1)[0] > 1e-7
        reached.append(changed.nonzero().flatten().tolist())
    assert reached == [[p], [p - 1, p + 1], [p - 2, p, p + 2]]
    assert [c.kernel_size[0] + (c.kernel_size[0] - 1) * (c.dilation[0] - 1) for c in convs] == [1, 3, 5]


def test_ngram_features_are_tanh_max_of_the_three_maps():
    torch.manual_seed(1)
    convs = make_ngram_convs(3)
    tokens = torch.randn(2, 5, 3)
    x = tokens.transpose(1, 2)
    expected = torch.maximum(torch.maximum(torch.tanh(convs[0](x)), torch.tanh(convs[1](x))),
                             torch.tanh(convs[2](x))).transpose(1, 2)
    assert torch.allclose(ngram_features(tokens, convs), expected, atol=1e-6)
    assert torch.allclose(phrase_feature(tokens, convs), expected.mean(dim=1), atol=1e-6)


def test_fixed_mode_masks_padding_in_the_phrase_branch():
    torch.manual_seed(2)
    convs = make_ngram_convs(3)
    tokens = torch.randn(1, 6, 3)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    other = tokens.clone()
    other[0, 4:] = torch.randn(2, 3) * 10
    feats, feats_other = ngram_features(tokens, convs, mask), ngram_features(other, convs, mask)
    assert torch.allclose(feats[:, :4], feats_other[:, :4], atol=1e-6)  # padding reaches no valid position
    assert torch.allclose(phrase_feature(tokens, convs, mask), feats[:, :4].mean(dim=1), atol=1e-6)
    assert torch.allclose(phrase_feature(tokens, convs, mask), phrase_feature(other, convs, mask), atol=1e-6)
    # compat (no mask): the padded content changes the valid neighbours and the mean
    assert not torch.allclose(ngram_features(tokens, convs)[:, :4], ngram_features(other, convs)[:, :4])


# ----------------------------------------------------------------------------- losses


LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0], [-0.5, 0.3, 1.2]])
TARGETS = torch.tensor([[0.8, 0.2, 0.0], [0.1, 0.6, 0.3], [0.0, 0.0, 1.0]])


def direct_focal(alpha: float, gamma: float) -> float:
    rows = []
    for logit_row, target_row in zip(LOGITS.tolist(), TARGETS.tolist()):
        z = sum(math.exp(v) for v in logit_row)
        p = [math.exp(v) / z for v in logit_row]
        rows.append(-sum(alpha * (1 - pj) ** gamma * math.log(pj) * qj for pj, qj in zip(p, target_row)))
    return sum(rows) / len(rows)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 1.0), (1.0, 0.0)])
def test_focal_soft_cross_entropy_matches_the_formula(alpha, gamma):
    loss = focal_soft_cross_entropy(LOGITS, TARGETS, alpha, gamma)
    assert loss.item() == pytest.approx(direct_focal(alpha, gamma), rel=1e-6)


def test_focal_reduces_to_plain_soft_cross_entropy():
    plain = -(F.log_softmax(LOGITS, dim=1) * TARGETS).sum(dim=1).mean()
    assert focal_soft_cross_entropy(LOGITS, TARGETS, 1.0, 0.0).item() == pytest.approx(plain.item(), rel=1e-6)
    assert focal_soft_cross_entropy(LOGITS, TARGETS).item() == pytest.approx(plain.item(), rel=1e-6)
    # the focal factor down-weights confident rows: strictly smaller than a_f * plain for gamma > 0
    assert focal_soft_cross_entropy(LOGITS, TARGETS, 0.25, 2.0).item() < 0.25 * plain.item()


def test_focal_factor_keeps_its_gradient():
    logits = LOGITS.clone().requires_grad_(True)
    focal_soft_cross_entropy(logits, TARGETS, 0.25, 2.0).backward()
    detached = LOGITS.clone().requires_grad_(True)
    log_p = F.log_softmax(detached, dim=1)
    weight = (0.25 * (1 - log_p.exp()).pow(2.0)).detach()
    (-(weight * log_p * TARGETS).sum(dim=1).mean()).backward()
    assert not torch.allclose(logits.grad, detached.grad)


def test_symbol_loss_on_known_vectors():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert symbol_loss(a, a).item() == pytest.approx(0.0, abs=1e-7)
    assert symbol_loss(a, -a).item() == pytest.approx(1.0)
    assert symbol_loss(a, a.flip(1)).item() == pytest.approx(0.5)
    mixed = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # rows: identical (0) and orthogonal (0.5)
    assert symbol_loss(mixed, a).item() == pytest.approx(0.25)


def test_positive_targets_with_several_positives():
    idx = torch.tensor([1, 2, 1])
    bank = torch.tensor([[1, 2, 1, 1, 3, -100]])
    y = positive_targets(idx, bank)
    third = 1 / 3
    assert_rows(y, [[third, 0, third, third, 0, 0], [0, 1, 0, 0, 0, 0], [third, 0, third, third, 0, 0]])
    assert y.sum(dim=1).tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_token_prediction_loss_equals_full_cross_entropy():
    torch.manual_seed(3)
    head = nn.Linear(8, 11)
    hidden = torch.randn(2, 5, 8)
    labels = torch.tensor([[-100, 3, -100, 7, 0], [10, -100, -100, -100, 2]])
    full = F.cross_entropy(head(hidden).reshape(-1, 11), labels.reshape(-1), ignore_index=-100)
    assert token_prediction_loss(head, hidden, labels).item() == pytest.approx(full.item(), rel=1e-6)
    empty = torch.full((2, 5), -100)
    hidden.requires_grad_(True)
    zero = token_prediction_loss(head, hidden, empty)
    zero.backward()  # still part of the graph, contributes nothing
    assert zero.item() == 0.0 and torch.count_nonzero(hidden.grad) == 0


# ----------------------------------------------------------------------------- hard negatives


def test_hard_negative_weights_formula():
    sim = torch.tensor([[5.0, 1.0, 2.0], [0.0, 9.0, 0.0], [1.0, 3.0, 7.0]])
    w = hard_negative_weights(sim)
    e = math.exp
    assert_rows(w, [[0, e(1) / (e(1) + e(2)), e(2) / (e(1) + e(2))], [0.5, 0, 0.5],
                    [e(1) / (e(1) + e(3)), e(3) / (e(1) + e(3)), 0]])


def test_hard_negatives_never_diagonal_nor_same_product():
    torch.manual_seed(4)
    idx = torch.tensor([0, 0, 1, 2, 2, 3])
    same = idx.view(-1, 1) == idx.view(1, -1)
    sim = torch.randn(6, 6)
    sim[same] = 50.0  # same-product pairs look like the hardest negatives
    draws = torch.stack([sample_hard_negatives(sim, same) for _ in range(300)])  # (300, 6)
    rows = torch.arange(6).expand_as(draws)
    assert not (draws == rows).any()
    assert not (idx[draws] == idx[rows]).any()
    # every admissible column is drawn for row 0 (products 1, 2, 3 -> columns 2..5)
    assert set(draws[:, 0].tolist()) == {2, 3, 4, 5}
    # without the product mask (compat.itm_negative_mask: compat) the same-product column dominates
    compat = torch.stack([sample_hard_negatives(sim) for _ in range(50)])
    assert (compat[:, 0] == 1).all() and (compat[:, 1] == 0).all()


def test_row_without_admissible_negative_falls_back_to_uniform():
    idx = torch.tensor([0, 0, 0, 1])
    same = idx.view(-1, 1) == idx.view(1, -1)
    sim = torch.zeros(4, 4)
    w = hard_negative_weights(sim, same)
    assert w[0].tolist() == pytest.approx([0, 0, 0, 1]) and w[3].tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0])
    all_same = torch.ones(3, 3, dtype=torch.bool)
    fallback = hard_negative_weights(torch.randn(3, 3), all_same)
    assert_rows(fallback, [[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    draws = torch.stack([sample_hard_negatives(torch.randn(3, 3), all_same) for _ in range(100)])
    assert not (draws == torch.arange(3)).any()


# ----------------------------------------------------------------------------- queues and momentum


def test_write_queue_pointer_and_wrap_around():
    queue = torch.zeros(2, 6)
    ptr = 0
    for step in range(4):
        cols = torch.full((2, 2), float(step + 1))
        cols[1] += 0.5  # rows of `cols` are queue columns
        ptr = write_queue(queue, ptr, cols)
        assert ptr == [2, 4, 0, 2][step]
    # step 3 (values 4, 4.5) overwrote columns 0-1 after the wrap; steps 1 and 2 are still there
    assert queue[0].tolist() == [4.0, 4.5, 2.0, 2.5, 3.0, 3.5]
    assert torch.equal(queue[0], queue[1])


def test_write_queue_refuses_a_size_not_multiple_of_the_batch():
    with pytest.raises(ValueError, match="queue size 6 is not a multiple of the global batch 4"):
        write_queue(torch.zeros(2, 6), 0, torch.zeros(4, 2))


def test_write_queue_keeps_integer_labels():
    ids = torch.full((1, 4), -100, dtype=torch.long)
    assert write_queue(ids, 2, torch.tensor([[7], [9]])) == 0
    assert ids.tolist() == [[-100, -100, 7, 9]]


def test_momentum_update_formula():
    torch.manual_seed(5)
    online, moment = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.clone() for p in moment.parameters()]
    momentum_update([(online, moment)], 0.9)
    for b, p_m, p in zip(before, moment.parameters(), online.parameters()):
        assert torch.allclose(p_m, 0.9 * b + 0.1 * p, atol=1e-7)
    momentum_update([(online, moment)], 0.0)
    assert all(torch.equal(p_m, p) for p_m, p in zip(moment.parameters(), online.parameters()))
