"""CMFL selection of trainer updates by committee score."""

from __future__ import annotations

import math


def rank_by_score(scores: dict[str, float]) -> list[str]:
    """Peer ids by ascending score, ties broken by id; NaN ranks last."""
    return sorted(scores, key=lambda p: (math.inf if math.isnan(scores[p]) else scores[p], p))


def _clamp(k: int, n: int) -> int:
    return max(0, min(k, n))


def select_lowest_distance(scores: dict[str, float], k: int) -> list[str]:
    """CMFL S1 (robust under attack): the k lowest-score ids, returned sorted by id."""
    return sorted(rank_by_score(scores)[: _clamp(k, len(scores))])


def select_highest_distance(scores: dict[str, float], k: int) -> list[str]:
    """CMFL S2 (non-IID, no attack): the k highest-score ids, returned sorted by id."""
    ranked = rank_by_score(scores)
    k = _clamp(k, len(ranked))
    return sorted(ranked[len(ranked) - k :])
