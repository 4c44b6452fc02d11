"""The committee-capture bound (bft.committee_safety): exact hypergeometric tails, checked
against a brute-force count and a seeded draw."""

import itertools
import random
from fractions import Fraction

import pytest

from bft.committee_safety import (
    attackers_seated, byzantine_count, capture_probability, capture_rate,
    membership_quorum_safe, smallest_safe_committee)


def test_the_tail_matches_a_brute_force_count_of_every_committee():
    peers = range(9)
    bad = {0, 1, 2}
    for size in range(1, 10):
        f = (size - 1) // 3
        committees = list(itertools.combinations(peers, size))
        captured = sum(1 for c in committees if len(bad & set(c)) > f)
        assert capture_probability(9, 3, size) == Fraction(captured, len(committees))


def test_the_issue_figure_five_of_twenty_with_six_byzantine_is_captured_about_half_the_time():
    p = capture_probability(20, byzantine_count(20, 0.3), 5)
    assert byzantine_count(20, 0.3) == 6
    assert float(p) == pytest.approx(0.4835, abs=1e-4)
    # and a seeded draw agrees
    rng = random.Random(14)
    draws = [len({0, 1, 2, 3, 4, 5} & set(rng.sample(range(20), 5))) for _ in range(20000)]
    assert capture_rate(draws, 5) == pytest.approx(float(p), abs=0.02)


def test_sizing_a_committee_at_thirty_percent_needs_nearly_the_whole_membership():
    # 30% is close to pBFT's 1/3: no committee much smaller than the membership is safe
    assert smallest_safe_committee(20) == 19
    assert smallest_safe_committee(100) == 91
    assert capture_probability(20, 6, 16) > Fraction(1, 10)
    # a quorum of the whole membership holds with certainty at 30%, and not at 40%
    assert all(membership_quorum_safe(n) for n in range(4, 300))
    assert not membership_quorum_safe(20, 0.4)
    assert smallest_safe_committee(20, 0.4) is None


def test_capture_rate_counts_rounds_past_f():
    seated = attackers_seated([("a", "b", "c", "d", "e"), ("a", "x", "y", "z", "w"), ()],
                              {"a", "b"})
    assert seated == [2, 1, 0]
    assert capture_rate(seated, 5) == pytest.approx(1 / 3)
    assert capture_rate([], 5) == 0.0
    with pytest.raises(ValueError):
        capture_probability(5, 6, 3)
