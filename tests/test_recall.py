"""The shared ranking / recall routine against a brute-force reference (stable descending sort)."""

from __future__ import annotations

import pytest
import torch

from evaluation.recall import IndexSets, best_positive_ranks, recall_at_k


def brute_force_ranks(scores: torch.Tensor, positives: list[list[int]], exclude: list[list[int]] | None = None
                      ) -> list[int]:
    """Sort each row by (-score, index) in Python and return the first position holding a positive."""
    ranks = []
    for q, row in enumerate(scores.tolist()):
        pos = set(positives[q])
        row = list(row)
        for j in exclude[q] if exclude else []:
            if j not in pos:
                row[j] = float("-inf")
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))
        ranks.append(next(i for i, j in enumerate(order) if j in pos))
    return ranks


def random_sets(g: torch.Generator, num_q: int, num_c: int, max_size: int, min_size: int = 1) -> list[list[int]]:
    sizes = torch.randint(min_size, max_size + 1, (num_q,), generator=g).tolist()
    return [torch.randperm(num_c, generator=g)[:s].tolist() for s in sizes]


def test_hand_made_4x4():
    scores = torch.tensor([
        [0.9, 0.1, 0.5, 0.3],  # positive 0 is the best -> 0
        [0.9, 0.1, 0.5, 0.3],  # positive 1 is the worst -> 3
        [0.2, 0.8, 0.8, 0.1],  # positive 2 ties with candidate 1, which comes first -> 1
        [0.4, 0.4, 0.9, 0.4],  # positives 1 and 3 tie at 0.4: best is 1; 2 is higher, 0 ties before -> 2
    ])
    positives = IndexSets.from_lists([[0], [1], [2], [1, 3]])
    assert best_positive_ranks(positives, scores=scores).tolist() == [0, 3, 1, 2]
    exclude = IndexSets.from_lists([[], [0, 2], [1], [2]])
    assert best_positive_ranks(positives, scores=scores, exclude=exclude).tolist() == [0, 1, 0, 1]
    assert recall_at_k([0, 3, 1, 2], (1, 2, 3), "r") == {"r1": 25.0, "r2": 50.0, "r3": 75.0}


@pytest.mark.parametrize("chunk_size", [None, 1, 7])
def test_matches_brute_force_with_ties_and_multiple_positives(chunk_size):
    g = torch.Generator().manual_seed(0)
    for num_q, num_c in [(23, 17), (5, 40), (31, 3)]:
        scores = torch.randint(0, 4, (num_q, num_c), generator=g).float()  # many ties
        pos = random_sets(g, num_q, num_c, max_size=min(4, num_c))
        ex = random_sets(g, num_q, num_c, max_size=2, min_size=0)
        expected = brute_force_ranks(scores, pos)
        got = best_positive_ranks(IndexSets.from_lists(pos), scores=scores, chunk_size=chunk_size)
        assert got.tolist() == expected
        got_ex = best_positive_ranks(IndexSets.from_lists(pos), scores=scores, exclude=IndexSets.from_lists(ex),
                                     chunk_size=chunk_size)
        assert got_ex.tolist() == brute_force_ranks(scores, pos, ex)


def test_embeddings_path_equals_score_path():
    g = torch.Generator().manual_seed(1)
    query = torch.randint(-2, 3, (40, 8), generator=g).float()  # integer values: exact products, real ties
    cands = torch.randint(-2, 3, (29, 8), generator=g).float()
    pos = random_sets(g, 40, 29, max_size=3)
    positives = IndexSets.from_lists(pos)
    from_emb = best_positive_ranks(positives, query, cands, chunk_size=6)
    assert from_emb.tolist() == brute_force_ranks(query @ cands.T, pos)
    assert torch.equal(from_emb, best_positive_ranks(positives, scores=query @ cands.T))


def test_precomputed_scores_are_not_modified_and_transposed_views_work():
    g = torch.Generator().manual_seed(2)
    scores = torch.rand(12, 9, generator=g)
    keep = scores.clone()
    pos = random_sets(g, 9, 12, max_size=2)
    ranks = best_positive_ranks(IndexSets.from_lists(pos), scores=scores.T,
                                exclude=IndexSets.from_lists([[0]] * 9), chunk_size=4)
    assert torch.equal(scores, keep)
    assert ranks.tolist() == brute_force_ranks(scores.T.contiguous(), pos, [[0]] * 9)


def test_keep_top_k_sets_the_rest_to_fill_value():
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(10, 30, generator=g)  # distinct values: the top-k set is unambiguous
    pos = random_sets(g, 10, 30, max_size=1)
    got = best_positive_ranks(IndexSets.from_lists(pos), scores=scores, keep_top_k=5, chunk_size=3)
    capped = scores.clone()
    kth = capped.topk(5, dim=1).values[:, -1:]
    capped[capped < kth] = -100.0
    assert got.tolist() == brute_force_ranks(capped, pos)
    plain = best_positive_ranks(IndexSets.from_lists(pos), scores=scores)
    assert torch.equal(got.clamp(max=5), plain.clamp(max=5))  # ranks below k are unchanged


def test_index_sets_builders():
    assert IndexSets.from_lists([[0, 2], [], [1]]).to_lists() == [[0, 2], [], [1]]
    assert IndexSets.single([2, 0]).to_lists() == [[2], [0]]
    assert IndexSets.from_lists([[1], [0, 2]]).counts().tolist() == [1, 2]


def test_errors():
    scores = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="query 1 has no positive"):
        best_positive_ranks(IndexSets.from_lists([[0], []]), scores=scores)
    with pytest.raises(ValueError, match="out of range"):
        best_positive_ranks(IndexSets.from_lists([[0], [3]]), scores=scores)
    with pytest.raises(ValueError, match="NaN"):
        best_positive_ranks(IndexSets.single([0, 1]), scores=torch.tensor([[0.0, 1, 2], [float("nan"), 0, 0]]))
    with pytest.raises(ValueError, match="no queries"):
        best_positive_ranks(IndexSets.from_lists([]), scores=torch.zeros(0, 3))
    with pytest.raises(ValueError, match="either"):
        best_positive_ranks(IndexSets.single([0]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="empty"):
        recall_at_k([], (1,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(4)
    scores = torch.randint(0, 5, (300, 200), generator=g).float()
    pos = IndexSets.from_lists(random_sets(g, 300, 200, max_size=4))
    assert torch.equal(best_positive_ranks(pos, scores=scores, device="cuda", chunk_size=64),
                       best_positive_ranks(pos, scores=scores))
