"""Seeded campaigns of the pBFT core in the simulated network, with faulty members on purpose."""

from __future__ import annotations

import time

import pytest

from bft.quorum import fault_tolerance
from bft.simulator import COLLUDER, campaign, random_scenario, run

SIZES = (4, 5, 7, 10)


def test_fast_campaign_is_safe_and_live() -> None:
    report = campaign(100, SIZES)
    assert report.failures == []
    # Not vacuous: view changes happened and equivocators were caught.
    assert report.decided_after_view_change >= 10
    assert report.evidence > 0


@pytest.mark.slow
def test_slow_campaign_is_safe_and_live() -> None:
    started = time.monotonic()
    report = campaign(10_000, SIZES, first_seed=1_000_000)
    elapsed = time.monotonic() - started
    print(f"\n{report.runs} schedules in {elapsed:.1f} s: {report.safety_violations} safety "
          f"violations, {report.stalls} stalls, {report.other_violations} other; "
          f"{report.decided_after_view_change} decided after a view change; "
          f"{report.evidence} evidence; latest decision {report.max_decided_after_heal:.0f} "
          f"after heal")
    assert report.runs >= 1000
    assert report.failures == []


def test_runs_replay_exactly() -> None:
    scenario = random_scenario(7, 7, faulty=2)
    first, second = run(scenario), run(scenario)
    assert first.decided_at == second.decided_at
    assert first.decisions == second.decisions
    assert first.deliveries == second.deliveries


@pytest.mark.parametrize("size", [4, 7])
def test_checker_catches_f_plus_one_colluders(size: int) -> None:
    # One fault too many: colluding equivocators split the honest members. The checker must see
    # it for some seed, or the campaigns above would prove nothing.
    bad = fault_tolerance(size) + 1
    found = []
    for seed in range(100):
        result = run(random_scenario(seed, size, faulty=bad, kinds=(COLLUDER,)))
        if result.safety_violated or result.stalled:
            found.append(seed)
            break
    assert found
