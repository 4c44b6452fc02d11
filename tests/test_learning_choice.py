"""learning.choice: the judged choice among candidate aggregates, and the liar aimed at it."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from learning.aggregation import aggregate_weighted, cap_samples
from learning.attacks import lie_votes
from learning.choice import (FULL_SET, Candidate, ChoiceConfig, aggregate_median,
                             build_candidate, candidate_sets, candidate_statistics, choice_seed,
                             choose, judge_votes)
from learning.simulation import JUDGED_RULES, RULE_NAMES, RunSpec, choose_attackers, run

TRAINERS = [f"p{i:02d}" for i in range(20)]


def test_candidates_are_a_function_of_trainers_and_seed():
    a = candidate_sets(TRAINERS, b"seed-1")
    assert a == candidate_sets(list(reversed(TRAINERS)), b"seed-1")
    assert len(a) == ChoiceConfig().count
    assert [c.kind for c in a[:4]] == ["base", *FULL_SET]
    subsets = [c.trainers for c in a if c.kind == "subset"]
    assert all(len(s) == 5 and len(set(s)) == 5 and set(s) <= set(TRAINERS) for s in subsets)
    assert len(set(subsets)) > 25  # 32 draws of 5 of 20: nearly all distinct
    other = [c.trainers for c in candidate_sets(TRAINERS, b"seed-2") if c.kind == "subset"]
    assert other != subsets


def test_subsets_cover_trainers_evenly_over_seeds():
    counts = dict.fromkeys(TRAINERS, 0)
    for k in range(40):
        for c in candidate_sets(TRAINERS, k.to_bytes(2, "big")):
            if c.kind == "subset":
                for t in c.trainers:
                    counts[t] += 1
    expected = 40 * 32 * 5 / 20  # 320 each
    assert all(abs(n - expected) < 0.25 * expected for n in counts.values()), counts


def test_few_trainers_give_no_subsets_and_none_only_the_base():
    assert [c.kind for c in candidate_sets(TRAINERS[:3], b"s")] == ["base", *FULL_SET]
    assert candidate_sets([], b"s") == [Candidate("base", ())]


def _states(rng, n, scale=1.0):
    base = {"w": torch.zeros(3, 2), "b": torch.zeros(2)}
    ups = {f"t{i}": {k: v + torch.from_numpy(rng.normal(0, scale, v.shape)).float()
                     for k, v in base.items()} for i in range(n)}
    return base, ups


def test_candidates_build_the_rules_they_name():
    rng = np.random.default_rng(1)
    base, ups = _states(rng, 7)
    samples = {t: 10 + i for i, t in enumerate(sorted(ups))}
    samples["t6"] = 10_000  # an inflated count is capped
    fed = build_candidate(base, ups, samples, Candidate("fedavg", tuple(sorted(ups))))
    want = aggregate_weighted(base, ups, cap_samples(samples))
    assert all(torch.equal(fed[k], want[k]) for k in base)
    ups["t0"] = {k: v + 1e6 for k, v in ups["t0"].items()}
    med = build_candidate(base, ups, samples, Candidate("median", tuple(sorted(ups))))
    assert all(float(v.abs().max()) < 10 for v in med.values())
    assert all(torch.equal(build_candidate(base, ups, samples, Candidate("base", ()))[k],
                           base[k]) for k in base)
    with pytest.raises(ValueError, match="unknown candidate kind"):
        build_candidate(base, ups, samples, Candidate("mean", ("t1",)))


def test_median_candidate_is_the_coordinate_median():
    base = {"w": torch.tensor([1.0, 1.0])}
    ups = {"a": {"w": torch.tensor([2.0, 0.0])}, "b": {"w": torch.tensor([5.0, 1.0])},
           "c": {"w": torch.tensor([3.0, -9.0])}}
    assert aggregate_median(base, ups)["w"].tolist() == [3.0, 0.0]


@pytest.mark.parametrize("config", [ChoiceConfig(), ChoiceConfig(statistic="low"),
                                    ChoiceConfig(statistic="low", reference="clipped")])
def test_liars_fewer_than_tolerated_keep_each_statistic_between_honest_votes(config):
    """Whatever 6 of 20 judges say, each candidate's statistic lies between two honest
    judges' (relative) votes: the liars move ranks, never values outside the honest range."""
    rng = np.random.default_rng(7)
    count = 8
    for trial in range(50):
        honest = {f"h{i}": tuple(rng.normal(0, 1, count)) for i in range(14)}
        votes = dict(honest)
        for i in range(6):
            votes[f"l{i}"] = tuple(rng.choice([1e9, -1e9, math.nan, 0.0], count))
        stats = candidate_statistics(votes, count, config)
        ref = config.reference_index
        for c in range(count):
            col = [v[c] - (v[ref] if config.reference != "base" else 0.0)
                   for v in honest.values()]
            assert min(col) - 1e-12 <= stats[c] <= max(col) + 1e-12, (trial, c)


def test_choose_prefers_the_reference_on_ties_and_treats_nan_as_worst():
    assert choose({"a": (0.0, 0.0, 0.0)}, 3) == 0
    assert choose({"a": (0.0, 1.0, 1.0), "b": (0.0, 1.0, 1.0)}, 3) == 1
    assert choose({"a": (0.0, math.nan, 0.1)}, 3) == 2
    rel = ChoiceConfig(reference="clipped")  # index 2
    assert choose({"a": (0.5, 0.2, 0.5, 0.2)}, 4, rel) == 2
    assert choose({"a": (0.6, 0.2, 0.5, 0.2)}, 4, rel) == 0
    assert choose({}, 4) == 0
    with pytest.raises(ValueError, match="voted on 2 candidates"):
        choose({"a": (0.0, 1.0)}, 3)
    with pytest.raises(ValueError, match="unknown statistic"):
        ChoiceConfig(statistic="mean")


def test_judge_votes_are_loss_decreases():
    assert judge_votes(2.0, [2.0, 1.5, 2.5]) == (0.0, 0.5, -0.5)


def test_the_seed_changes_with_any_update_and_the_previous_block():
    a = choice_seed(3, b"prev", [b"u1", b"u2"])
    assert a == choice_seed(3, b"prev", [b"u2", b"u1"])
    assert len({a, choice_seed(3, b"prev", [b"u1", b"u3"]), choice_seed(4, b"prev", [b"u1", b"u2"]),
                choice_seed(3, b"other", [b"u1", b"u2"])}) == 4


def test_the_omniscient_lie_wins_a_candidate_half_the_honest_judges_dislike():
    """The known weakness (docs/learning.md, issue 14 fifth pass): with heterogeneous honest
    votes, 6 liars of 20 make the median pick a candidate that 9 of 14 honest judges find
    worse than the base, over one every honest judge finds better."""
    cands = [Candidate("base", ()), Candidate("subset", ("good",)), Candidate("subset", ("bad",))]
    honest = {}
    for i in range(14):
        good = 0.5 + 0.01 * i
        bad = -1.0 if i < 9 else 1.0 + 0.1 * i
        honest[f"h{i:02d}"] = (0.0, good, bad)
    rule = lambda v: choose(v, 3)  # noqa: E731
    assert rule(honest) == 1
    lie = lie_votes(honest, cands, frozenset({"bad"} | {f"l{i}" for i in range(6)}), rule)
    votes = {**honest, **{f"l{i}": lie for i in range(6)}}
    assert rule(votes) == 2
    # the (f+1)-th lowest vote (statistic "low") refuses it: 9 honest judges say worse
    low = ChoiceConfig(statistic="low")
    lie = lie_votes(honest, cands, frozenset({"bad"}), lambda v: choose(v, 3, low))
    assert choose({**honest, **{f"l{i}": lie for i in range(6)}}, 3, low) != 2


def test_clipped_states_keep_every_subset_mean_within_the_median_deviation():
    from learning.aggregation import _flat_delta, clip_factors, clipped_states, coordinate_median
    rng = np.random.default_rng(2)
    base, ups = _states(rng, 7)
    ups["t0"] = {k: torch.zeros_like(v) for k, v in ups["t0"].items()}  # a zeros attacker
    ups["t1"] = {k: v + 1e3 for k, v in ups["t1"].items()}
    deltas = {t: _flat_delta(base, u) for t, u in ups.items()}
    centre = coordinate_median(list(deltas.values()))
    _, radius = clip_factors(deltas, centre)
    clipped = clipped_states(base, ups)
    assert sorted(clipped) == sorted(ups)
    for subset in (("t0", "t1"), ("t0", "t2", "t3"), tuple(sorted(ups))):
        mean = build_candidate(base, clipped, {t: 1 for t in ups}, Candidate("subset", subset))
        assert np.linalg.norm(_flat_delta(base, mean) - centre) <= radius * (1 + 1e-5)
    # an update inside the radius passes unchanged (up to the float32 round trip)
    inside = [t for t in ups if np.linalg.norm(deltas[t] - centre) <= radius]
    assert inside and all(torch.allclose(clipped[t][k], ups[t][k], atol=1e-6)
                          for t in inside for k in base)


def test_liars_aimed_at_harm_back_the_candidate_the_honest_judges_like_least():
    """attacks.LIAR_TARGETS: "colluders" backs the candidate holding a colluder's update,
    "worst" the one the honest judges like least, poison or not (both winnable here)."""
    cands = [Candidate("base", ()), Candidate("subset", ("good",)),
             Candidate("subset", ("bad",)), Candidate("subset", ("meh",))]
    honest = {}
    for i in range(14):
        bad = -1.0 if i < 9 else 1.0 + 0.1 * i
        honest[f"h{i:02d}"] = (0.0, 0.5 + 0.01 * i, bad, 2 * bad if i < 9 else bad)
    rule = lambda v: choose(v, 4)  # noqa: E731
    assert rule(honest) == 1
    liars = frozenset({"bad"} | {f"l{i}" for i in range(6)})
    chosen = {}
    for target in ("colluders", "worst"):
        lie = lie_votes(honest, cands, liars, rule, target)
        chosen[target] = rule({**honest, **{f"l{i}": lie for i in range(6)}})
    assert chosen == {"colluders": 2, "worst": 3}
    with pytest.raises(ValueError, match="liar target"):
        lie_votes(honest, cands, liars, rule, "nobody")


def test_judged_rules_run_in_the_harness_and_learn():
    assert set(JUDGED_RULES) <= set(RULE_NAMES)
    spec = RunSpec(rule="cmfl-choose", attack="none", fraction=0.0, rounds=12, seed=3)
    a, b = run(spec), run(spec)
    assert a.accuracy == b.accuracy  # seeded end to end
    assert a.accuracy[-1] > 0.8
    assert set(a.applied) <= {"base", "subset", *FULL_SET} and len(a.applied) == 12



def test_scaled_relative_votes_stay_between_honest_ones():
    from learning.choice import RECOMMENDED
    rng = np.random.default_rng(11)
    count, ref = 8, RECOMMENDED.reference_index
    for trial in range(30):
        honest = {f"h{i}": tuple(rng.normal(0, 1 + i, count)) for i in range(14)}
        votes = {**honest, **{f"l{i}": tuple(rng.choice([1e9, -1e9, 0.0], count))
                              for i in range(6)}}
        stats = candidate_statistics(votes, count, RECOMMENDED)
        scaled = []
        for v in honest.values():
            row = [x - v[ref] for x in v]
            top = max(abs(x) for x in row)
            scaled.append([x / top for x in row])
        for c in range(count):
            col = [row[c] for row in scaled]
            assert min(col) - 1e-12 <= stats[c] <= max(col) + 1e-12, (trial, c)
        assert stats[ref] == 0.0


def test_the_variants_bench_explains_itself_and_refuses_unknown_rules(capsys):
    from bench import choice_variants
    assert choice_variants.main(["--help"]) == 0
    assert "rel-median-scaled" in capsys.readouterr().out
    assert choice_variants.main(["no-such-rule", "none", "iid", "1", "1"]) == 2


def test_blind_liars_aim_with_their_own_votes_and_choose_differently():
    """Under a commit-reveal of the votes the liars cannot see the honest votes: the harness
    then aims their lie with their own data's votes; the run stays seeded and differs."""
    spec = RunSpec(rule="cmfl-choose", attack="sign_flip", fraction=0.3, rounds=6, seed=1,
                   partition="dirichlet")
    seeing, blind = run(spec), run(dataclasses.replace(spec, blind_liars=True))
    assert blind.accuracy == run(dataclasses.replace(spec, blind_liars=True)).accuracy
    assert blind.applied != seeing.applied or blind.accuracy != seeing.accuracy


def test_racing_liars_count_with_the_first_quorum_and_stay_seeded():
    """The rejected first-quorum alternative (the block takes the first quorum of votes): the
    liars race it, seeing only part of the honest votes in most rounds; the run stays seeded
    and differs."""
    spec = RunSpec(rule="cmfl-choose", attack="sign_flip", fraction=0.3, rounds=6, seed=1,
                   partition="dirichlet")
    seeing, racing = run(spec), run(dataclasses.replace(spec, racing_liars=True))
    assert racing.accuracy == run(dataclasses.replace(spec, racing_liars=True)).accuracy
    assert racing.applied != seeing.applied or racing.accuracy != seeing.accuracy


def test_selective_reveal_picks_the_subset_whose_winner_suits_the_liars():
    from learning.attacks import committed_lies, selective_reveal
    cands = [Candidate("base", ()), Candidate("subset", ("good",)), Candidate("subset", ("bad",))]
    honest = {f"h{i:02d}": (0.0, 0.5 + 0.01 * i, -1.0 if i < 9 else 1.0 + 0.1 * i)
              for i in range(14)}
    liars = frozenset({"bad"} | {f"l{i}" for i in range(6)})
    commits = committed_lies(honest, cands, liars, 1)
    assert all(v.index(1e9) == 2 for v in commits.values())  # the one holding a colluder
    rule = lambda v: choose(v, 3)  # noqa: E731
    shown = selective_reveal(honest, commits, cands, liars, rule)
    votes = {**honest, **{j: commits[j] if j in shown else (-math.inf,) * 3 for j in commits}}
    assert rule(votes) == 2 and shown == frozenset(commits)  # all reveal: none is burned
    # split over two favourites, four lies for it are too few: the liars show what wins best
    split = committed_lies(honest, cands, liars, 2)
    shown = selective_reveal(honest, split, cands, liars, rule)
    votes = {**honest, **{j: split[j] if j in shown else (-math.inf,) * 3 for j in split}}
    assert rule(votes) != 2


def test_withheld_reveals_bar_liars_from_judging():
    spec = RunSpec(rule="cmfl-choose", attack="sign_flip", fraction=0.3, rounds=8, seed=0,
                   partition="dirichlet", selective_reveal=6)
    r = run(spec)
    assert len(r.barred_judges) == 8
    assert r.barred_judges == sorted(r.barred_judges)  # once barred, always barred
    assert r.barred_judges[-1] <= 6


def _bad_liked_by_three():
    """14 honest judges over (base, good, bad): only three like bad, the colluder's."""
    cands = [Candidate("base", ()), Candidate("subset", ("good",)), Candidate("subset", ("bad",))]
    honest = {f"h{i:02d}": (0.0, 0.5 + 0.01 * i, -1.0 if i < 11 else 1.0 + 0.1 * i)
              for i in range(14)}
    liars = frozenset({"bad"} | {f"l{i}" for i in range(5)})
    return cands, honest, liars


def test_a_colluding_leader_picks_the_honest_votes_that_let_the_lie_win():
    from learning.attacks import leader_quorum
    cands, honest, liars = _bad_liked_by_three()
    rule = lambda v: choose(v, 3)  # noqa: E731
    lie = lie_votes(honest, cands, liars, rule)
    assert rule({**honest, **{j: lie for j in liars}}) != 2  # every vote counts: bad loses
    kept, lie = leader_quorum(honest, 8, cands, liars, rule, np.random.default_rng(0))
    assert len(kept) == 8 and kept <= set(honest) and {"h11", "h12", "h13"} <= kept
    assert rule({**{j: honest[j] for j in kept}, **{j: lie for j in liars}}) == 2
    # with lies fixed before the liars saw the votes, it keeps one of those
    fixed = [tuple(1e9 if k == 2 else -1e9 for k in range(3))]
    assert leader_quorum(honest, 8, cands, liars, rule, np.random.default_rng(0), fixed)[1] \
        == fixed[0]


def test_the_leaders_block_counts_a_quorum_with_every_liar():
    from bft.quorum import quorum_size
    from learning.simulation import _leader_counts
    cands, honest, liars = _bad_liked_by_three()
    rule = lambda v: choose(v, 3)  # noqa: E731
    for view in (None, {j: honest["h00"] for j in honest}):  # seeing all, seeing little
        counted = _leader_counts(honest, view, cands, sorted(liars), quorum_size(20), rule,
                                 [0, 1, 43])
        assert len(counted) == quorum_size(20) == 14 and liars <= set(counted)
        assert all(counted[j] == honest[j] for j in set(counted) - liars)
        assert len({counted[j] for j in liars}) == 1


def test_colluding_leader_changes_only_the_rounds_a_colluder_leads():
    """Seed 1's attackers are p05, p09, ...: rounds 0-4 are led by honest peers, and there a
    colluding leader's run is the default one; pledged liars who peeked at 0 votes are the
    blind ones; the pledge with a colluding leader is peek-at-6 in honest-led rounds."""
    spec = RunSpec(rule="cmfl-choose", attack="sign_flip", fraction=0.3, rounds=5, seed=1,
                   partition="dirichlet")
    assert min(int(p[1:]) for p in choose_attackers(spec)) == 5
    seeing, leader = run(spec), run(dataclasses.replace(spec, colluding_leader=True))
    assert leader.accuracy == seeing.accuracy and leader.applied == seeing.applied
    blind = run(dataclasses.replace(spec, blind_liars=True))
    peek0 = run(dataclasses.replace(spec, peeking_liars=0))
    assert peek0.accuracy == blind.accuracy and peek0.applied == blind.applied
    peek6 = run(dataclasses.replace(spec, peeking_liars=6))
    assert peek6.accuracy == run(dataclasses.replace(spec, peeking_liars=6)).accuracy
    pledge = run(dataclasses.replace(spec, pledge_leader=True))
    assert pledge.accuracy == peek6.accuracy and pledge.applied == peek6.applied


def test_the_variants_bench_reads_the_liar_suffixes():
    from bench.choice_variants import parse_variant
    assert parse_variant("cmfl-choose/leader") == ("cmfl-choose", {"colluding_leader": True})
    assert parse_variant("cmfl-choose/peek6") == ("cmfl-choose", {"peeking_liars": 6})
    assert parse_variant("cmfl-choose/pleader") == ("cmfl-choose", {"pledge_leader": True})
    assert parse_variant("cmfl-choose/reveal2/blind") == \
        ("cmfl-choose", {"selective_reveal": 2, "blind_liars": True})
    with pytest.raises(ValueError):
        parse_variant("cmfl-choose/peek")
