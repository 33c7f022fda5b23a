"""The int64-key ranking gives exactly the stable descending sort's order (ties to the lower index)."""

from __future__ import annotations

import pytest
import torch

from evaluation.ranking import descending_keys, descending_order


def stable(scores: torch.Tensor) -> torch.Tensor:
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


def special_values(g: torch.Generator, rows: int, cols: int) -> torch.Tensor:
    pool = torch.tensor([0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"), 1e-38, -1e-38, 1e-45, -1e-45,
                         3.4e38, -3.4e38, 0.5, -0.5])
    return pool[torch.randint(0, pool.numel(), (rows, cols), generator=g)]


@pytest.mark.parametrize("seed", range(4))
def test_identical_to_stable_sort_with_many_ties(seed):
    g = torch.Generator().manual_seed(seed)
    blocks = [
        torch.randint(-3, 4, (40, 257), generator=g).float(),  # few distinct values: every order of ties
        torch.randint(0, 2, (7, 1000), generator=g).float() * 0.25,
        torch.full((5, 33), 0.7),  # all equal: the identity order
        special_values(g, 30, 300),  # +-0.0, +-inf, subnormals, the largest magnitudes
        torch.randn(16, 2049, generator=g),  # no ties
        torch.randn(3, 500, generator=g)[:, ::2],  # a non-contiguous view
    ]
    for block in blocks:
        expected = stable(block)
        assert torch.equal(descending_order(block), expected)
        keys = descending_keys(block)  # the device-agnostic torch keys: any sort of them is the same order
        assert torch.equal(torch.sort(keys, dim=1).values & 0xFFFFFFFF, expected)
        ordered = torch.sort(keys, dim=1).values
        assert bool((ordered[:, 1:] > ordered[:, :-1]).all())  # unique within each row


def test_negative_and_positive_zero_tie():
    block = torch.tensor([[-0.0, 0.0, -0.0, 1.0, -1.0, 0.0]])
    assert descending_order(block).tolist() == [[3, 0, 1, 2, 5, 4]]


def test_nan_ranks_first_like_the_stable_sort():
    block = torch.tensor([[1.0, float("nan"), float("inf"), -float("nan"), 0.0, float("nan")]])
    assert torch.equal(descending_order(block), stable(block))
    assert descending_order(block).tolist() == [[1, 3, 5, 2, 0, 4]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    g = torch.Generator().manual_seed(0)
    block = (torch.randn(20, 300, generator=g) * 4).round().to(dtype)  # ties after rounding
    assert torch.equal(descending_order(block), stable(block))


def test_edge_shapes_and_bad_input():
    assert descending_order(torch.zeros(0, 5)).shape == (0, 5)
    assert descending_order(torch.zeros(3, 0)).shape == (3, 0)
    assert descending_order(torch.tensor([[2.0]])).tolist() == [[0]]
    with pytest.raises(ValueError, match="2-D"):
        descending_order(torch.zeros(4))
    with pytest.raises(ValueError, match="dtype"):
        descending_order(torch.zeros(2, 3, dtype=torch.float64))


@pytest.mark.parametrize("seed", range(4))
def test_top_k_candidates_is_the_head_of_the_stable_descending_order(seed):
    from evaluation.recall import IndexSets, top_k_candidates

    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (37, 53), generator=g).float()  # ties everywhere, also at the k-th value
    scores[3] = 1.0  # a row of one value
    scores[5, 10:] = float("-inf")  # fewer finite scores than k
    full = torch.sort(scores, dim=1, descending=True, stable=True)
    for k in (1, 2, 7, 10, 53, 80):
        idx, val = top_k_candidates(scores=scores, k=k, chunk_size=8)
        assert torch.equal(idx, full.indices[:, :k]) and torch.equal(val, full.values[:, :k]), k
    excluded = IndexSets.from_lists([[0, 1]] * 37)
    idx, _ = top_k_candidates(scores=scores, k=5, exclude=excluded)
    assert not torch.isin(idx, torch.tensor([0, 1])).any()
