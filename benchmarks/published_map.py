"""The published ASEN++ `mean_average_precision` procedure, re-implemented operation for operation.

Benchmarks time the framework's MAP against this, on the same inputs in the same process. What it does,
per attribute, as the published evaluation does: one NumPy similarity matrix `queries @ candidates.T`;
then per query `argsort()[::-1]` of its row (NumPy's default quicksort, reversed); a Python loop over
every ranked candidate that appends 1 or 0 to a list as `c_values[index[i]] == q_values[q]`; the AP scorer
counts the relevant entries with a list comprehension and sums `hits / (i + 1.0)` over the list in a
Python loop; the attribute's MAP is the mean AP, and the total is weighted by each attribute's queries.
Nothing is added (no checks, no per-query bookkeeping beyond the running sum).
"""

from __future__ import annotations

import numpy as np


def _ap_of_ranked_labels(ranked: list[int]) -> float:
    """The published AP scorer over the full list (its cut-off is the number of candidates)."""
    relevant = len([x for x in ranked if x > 0])
    if relevant == 0:
        return 0.0
    ap, hits = 0.0, 0
    for i in range(len(ranked)):
        if ranked[i] >= 1:
            hits += 1
            ap += float(hits) / (i + 1.0)
    return ap / relevant


def published_mean_average_precision(queries: np.ndarray, candidates: np.ndarray, q_values: np.ndarray,
                                     c_values: np.ndarray) -> float:
    """MAP of one attribute's queries against its candidates, as the published code computes it."""
    similarity = np.matmul(queries, candidates.T)
    ap_sum = 0.0
    for q in range(similarity.shape[0]):
        index = np.argsort(similarity[q])[::-1]
        ranked = []
        for i in range(index.shape[0]):
            if c_values[index[i]] == q_values[q]:
                ranked.append(1)
            else:
                ranked.append(0)
        ap_sum += _ap_of_ranked_labels(ranked)
    return ap_sum / similarity.shape[0]


def published_total_map(per_attribute: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
                        ) -> tuple[list[float], float]:
    """Per-attribute MAPs and the query-weighted total (the published running average over attributes)."""
    maps, weighted, count = [], 0.0, 0
    for queries, candidates, q_values, c_values in per_attribute:
        m = published_mean_average_precision(queries, candidates, q_values, c_values)
        maps.append(m)
        weighted += m * queries.shape[0]
        count += queries.shape[0]
    return maps, weighted / count
