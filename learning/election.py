"""CMFL committee election."""

from __future__ import annotations

from learning.selection import rank_by_score


def elect_middle(
    scores: dict[str, float], size: int, exclude: frozenset[str] | set[str] = frozenset()
) -> list[str]:
    """The `size` candidates centred on the middle of the score ranking, sorted by id."""
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    ranked = [p for p in rank_by_score(scores) if p not in exclude]
    if len(ranked) <= size:
        return sorted(ranked)
    start = (len(ranked) - size) // 2
    return sorted(ranked[start : start + size])
