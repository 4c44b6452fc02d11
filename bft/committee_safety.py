"""How likely a randomly seated committee is to hold more Byzantine members than pBFT tolerates.

pBFT is safe while a committee of C holds at most f = (C-1)//3 faulty members. If the Byzantine
peers are a share of the whole membership and the C seats are filled without regard to who is
Byzantine (at best: a random draw; the election can only do worse against an adaptive
attacker), the number of Byzantine members seated is hypergeometric. This module computes that
tail exactly (integer binomials), the smallest committee that makes it negligible, and the
capture rate the robustness bench reports. Pure: integer arithmetic only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from fractions import Fraction

from bft.quorum import fault_tolerance

#: the Byzantine share of all peers the protocol is stated for (docs/consensus.md)
DEFAULT_BYZANTINE_FRACTION = 0.3
#: "negligible": a round's committee captured less often than once in a billion rounds
NEGLIGIBLE = 1e-9


def byzantine_count(population: int, fraction: float = DEFAULT_BYZANTINE_FRACTION) -> int:
    """The number of Byzantine peers `fraction` of `population` allows (rounded down)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    return math.floor(population * fraction + 1e-12)


def capture_probability(population: int, byzantine: int, size: int) -> Fraction:
    """P(a uniformly drawn committee of `size` out of `population` peers, `byzantine` of them
    Byzantine, seats more than f of them): the hypergeometric tail, exact."""
    if not 0 <= byzantine <= population or not 1 <= size <= population:
        raise ValueError(f"need 0 <= byzantine <= population and 1 <= size <= population, got "
                         f"{byzantine}, {population}, {size}")
    f = fault_tolerance(size)
    honest = population - byzantine
    tail = sum(math.comb(byzantine, k) * math.comb(honest, size - k)
               for k in range(f + 1, min(byzantine, size) + 1))
    return Fraction(tail, math.comb(population, size))


def smallest_safe_committee(population: int, fraction: float = DEFAULT_BYZANTINE_FRACTION,
                            epsilon: float = NEGLIGIBLE) -> int | None:
    """The smallest committee whose capture probability is at most `epsilon`, or None if even
    the whole membership holds more than its f Byzantine members."""
    byzantine = byzantine_count(population, fraction)
    for size in range(1, population + 1):
        if capture_probability(population, byzantine, size) <= epsilon:
            return size
    return None


def membership_quorum_safe(population: int, fraction: float = DEFAULT_BYZANTINE_FRACTION
                           ) -> bool:
    """Whether finality by a quorum of the whole membership (F = (N-1)//3) holds at `fraction`:
    no draw is involved, so it either holds with certainty or not at all."""
    return byzantine_count(population, fraction) <= fault_tolerance(population)


def capture_rate(attackers_seated: Sequence[int], committee_size: int) -> float:
    """Share of rounds whose committee held more than f attackers (0.0 for no rounds)."""
    if not attackers_seated:
        return 0.0
    f = fault_tolerance(committee_size)
    return sum(1 for c in attackers_seated if c > f) / len(attackers_seated)


def attackers_seated(committees: Iterable[Iterable[str]], attackers: Iterable[str]
                     ) -> list[int]:
    """Per round, how many of `attackers` sat on that round's committee."""
    bad = set(attackers)
    return [len(set(c) & bad) for c in committees]
