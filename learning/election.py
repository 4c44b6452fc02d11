"""CMFL committee election."""

from __future__ import annotations

import hashlib

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


def sample_trainers(candidates: list[str] | tuple[str, ...], count: int, seed: bytes) -> list[str]:
    """`count` of the candidates, drawn from `seed` (the committed block's hash), sorted by id.

    Each candidate's draw is sha256(seed || id), so every peer gets the same sample from the
    same block, nobody can steer it without choosing the block, and no RNG state is shared."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    draw = sorted(set(candidates), key=lambda p: (hashlib.sha256(seed + p.encode()).digest(), p))
    return sorted(draw[:count])
