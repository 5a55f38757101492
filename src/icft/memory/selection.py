"""Exemplar selection for the long-term memory, after iCaRL (Rebuffi et al. 2017).

Herding picks items whose running mean tracks the group mean, and the order it picks them in is a
priority order, so shrinking a group to make room for a new stage drops its last-picked exemplars first.
K-centre (farthest-first) covers the embedding space instead. `quotas` shares capacity between groups.
"""

from __future__ import annotations

import numpy as np

SELECTIONS = ("herding", "kcenter", "reservoir")


def herding(embeddings: np.ndarray, k: int) -> list[int]:
    """iCaRL herding: indices, in the order picked, whose running mean best approximates the mean."""
    return _herding_order(embeddings, k, [])


def k_center(embeddings: np.ndarray, k: int) -> list[int]:
    """Greedy k-centre (farthest-first) indices, starting from the item nearest the mean."""
    return _k_center_order(embeddings, k, [])


def _herding_order(embeddings: np.ndarray, k: int, start: list[int]) -> list[int]:
    """Continue herding from the already chosen `start` until k indices are chosen (start included)."""
    x = np.asarray(embeddings, dtype=np.float64)
    k = min(k, len(x))
    chosen = list(start)
    if k <= len(chosen):
        return chosen[: max(k, 0)]
    mean = x.mean(axis=0)
    total = x[chosen].sum(axis=0) if chosen else np.zeros(x.shape[1])
    taken = np.zeros(len(x), dtype=bool)
    taken[chosen] = True
    while len(chosen) < k:
        t = len(chosen) + 1
        gaps = np.sum((mean - (total + x) / t) ** 2, axis=1)
        gaps[taken] = np.inf
        best = int(np.argmin(gaps))  # argmin takes the first of ties: deterministic
        chosen.append(best)
        taken[best] = True
        total += x[best]
    return chosen


def _k_center_order(embeddings: np.ndarray, k: int, start: list[int]) -> list[int]:
    """Continue farthest-first from the already chosen `start` until k indices are chosen."""
    x = np.asarray(embeddings, dtype=np.float64)
    k = min(k, len(x))
    chosen = list(start)
    if k <= len(chosen):
        return chosen[: max(k, 0)]
    if not chosen:
        chosen.append(int(np.argmin(np.sum((x - x.mean(axis=0)) ** 2, axis=1))))
    nearest = np.full(len(x), np.inf)
    for i in chosen:
        nearest = np.minimum(nearest, np.sum((x - x[i]) ** 2, axis=1))
    while len(chosen) < k:
        gaps = nearest.copy()
        gaps[chosen] = -np.inf  # duplicates of a centre have distance 0 but must still be pickable
        best = int(np.argmax(gaps))
        chosen.append(best)
        nearest = np.minimum(nearest, np.sum((x - x[best]) ** 2, axis=1))
    return chosen


def quotas(sizes: list[int], capacity: int) -> list[int]:
    """Share capacity equally among groups; slots a small group can't fill go to the others.

    The remainder that can't be split equally goes one each to the largest groups (earlier first on ties).
    """
    quotas = [0] * len(sizes)
    remaining = capacity
    open_groups = [g for g, size in enumerate(sizes) if size > 0]
    while remaining > 0 and open_groups:
        share = remaining // len(open_groups)
        if share == 0:
            for g in sorted(open_groups, key=lambda g: (-sizes[g], g))[:remaining]:
                quotas[g] += 1
            break
        for g in open_groups:
            add = min(share, sizes[g] - quotas[g])
            quotas[g] += add
            remaining -= add
        open_groups = [g for g in open_groups if quotas[g] < sizes[g]]
    return quotas
