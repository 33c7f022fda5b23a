"""Vectorised attribute MAP against a brute-force per-query average precision."""

from __future__ import annotations

import pytest
import torch

from evaluation.map import attribute_map, average_precision


def brute_ap(scores: list[float], relevant: list[bool]) -> float:
    """Sort by decreasing score, ties by ascending candidate index; AP over the relevant ranks."""
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], j))
    hits, total = 0, 0.0
    for rank, j in enumerate(order, 1):
        if relevant[j]:
            hits += 1
            total += hits / rank
    n_rel = sum(relevant)
    return total / n_rel if n_rel else 0.0


def brute_map(q, qa, qv, c, ca, cv, k):
    scores = (q @ c.T).tolist()
    per_attr, all_ap = [], []
    for a in range(k):
        aps = []
        for i in range(len(qa)):
            if qa[i] != a:
                continue
            cols = [j for j in range(len(ca)) if ca[j] == a]
            aps.append(brute_ap([scores[i][j] for j in cols], [bool(cv[j] == qv[i]) for j in cols]))
        per_attr.append(sum(aps) / len(aps) if aps else None)
        all_ap += aps
    return per_attr, sum(all_ap) / len(all_ap)


def test_hand_made_example():
    # relevance in rank order 1 0 1 0 0 -> AP = (1/1 + 2/3) / 2
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5]])
    ap = average_precision(scores=scores, query_labels=torch.tensor([2]), candidate_labels=torch.tensor([2, 0, 2, 1, 1]))
    assert ap.tolist() == pytest.approx([(1 + 2 / 3) / 2], abs=1e-12)
    # the example of the published query/candidate format: one relevant, one irrelevant candidate
    labels = torch.tensor([7, 3])
    assert average_precision(scores=torch.tensor([[0.2, 0.1]]), query_labels=torch.tensor([7]),
                             candidate_labels=labels).item() == 1.0
    assert average_precision(scores=torch.tensor([[0.1, 0.2]]), query_labels=torch.tensor([7]),
                             candidate_labels=labels).item() == 0.5
    # no relevant candidate -> AP 0; all scores tied -> candidate order decides
    assert average_precision(scores=torch.zeros(1, 3), query_labels=torch.tensor([5]),
                             candidate_labels=torch.tensor([1, 2, 3])).item() == 0.0
    tied = average_precision(scores=torch.zeros(1, 3), query_labels=torch.tensor([1]),
                             candidate_labels=torch.tensor([0, 0, 1]))
    assert tied.item() == pytest.approx(1 / 3)


def test_query_weighted_total_attribute_mean_and_missing_attribute():
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    # attribute 0: one query, relevant candidate ranked first (AP 1);
    # attribute 1: three queries whose only relevant candidate is ranked second (AP 1/2)
    res = attribute_map(q, torch.tensor([0, 1, 1, 1]), torch.tensor([0, 4, 4, 4]), c,
                        torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 3, 4]), num_attributes=3)
    assert res.per_attribute == [1.0, 0.5, None]
    assert res.num_queries == [1, 3, 0] and res.num_candidates == [2, 2, 0]
    assert res.total == pytest.approx((1.0 + 3 * 0.5) / 4)
    assert res.attribute_mean == pytest.approx(0.75)
    assert res.ap.tolist() == [1.0, 0.5, 0.5, 0.5]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ties_match_brute_force_exactly(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (37, 53), generator=g).float()  # many exact ties
    q_lab = torch.randint(0, 3, (37,), generator=g)
    c_lab = torch.randint(0, 3, (53,), generator=g)
    expected = [brute_ap(scores[i].tolist(), (c_lab == q_lab[i]).tolist()) for i in range(37)]
    for chunk in (0, 1, 5):
        got = average_precision(scores=scores, query_labels=q_lab, candidate_labels=c_lab, chunk_queries=chunk)
        assert got.tolist() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_random_embeddings_match_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    k, values = 3, [4, 3, 5]
    nq, nc, dim = 60, 150, 16
    qa, ca = torch.randint(0, k, (nq,), generator=g), torch.randint(0, k, (nc,), generator=g)
    qv = torch.stack([torch.randint(0, values[a], (1,), generator=g)[0] for a in qa.tolist()])
    cv = torch.stack([torch.randint(0, values[a], (1,), generator=g)[0] for a in ca.tolist()])
    q = torch.nn.functional.normalize(torch.randn(nq, dim, generator=g), dim=1)
    c = torch.nn.functional.normalize(torch.randn(nc, dim, generator=g), dim=1)
    per_attr, total = brute_map(q, qa.tolist(), qv.tolist(), c, ca.tolist(), cv.tolist(), k)
    for chunk in (0, 7):
        res = attribute_map(q, qa, qv, c, ca, cv, k, chunk_queries=chunk)
        assert res.per_attribute == pytest.approx(per_attr, abs=1e-6)
        assert res.total == pytest.approx(total, abs=1e-6)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="either"):
        average_precision(query_labels=torch.zeros(1), candidate_labels=torch.zeros(1))
    with pytest.raises(ValueError, match="one label"):
        average_precision(scores=torch.zeros(2, 3), query_labels=torch.zeros(1), candidate_labels=torch.zeros(3))
