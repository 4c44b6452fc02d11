"""The round decision shared by derive_block and the harness, on hand-checked inputs."""

import pytest
import torch

from learning.aggregation import aggregate_weighted
from learning.cmfl import (
    RoundConfig,
    decide_round,
    elect_committee,
    find_dissenters,
    find_clones,
    find_outliers,
    finish_round,
    rank_agreement,
    select_round,
    typical_distance,
)
from learning.election import elect_middle
from learning.model import ModelSpec, initial_state
from learning.scoring import combine_scores
from learning.selection import select_lowest_distance
from learning.tensors import state_bytes


def test_config_from_genesis_selection():
    legacy = RoundConfig.from_selection({"rule": "S1", "fraction": 0.5, "scoring": "sum"})
    assert legacy == RoundConfig()  # old genesis files keep the old behaviour
    cfg = RoundConfig(rule="auto", scoring="median", election="trusted", outlier_ratio=1.4)
    assert RoundConfig.from_selection(cfg.to_selection()) == cfg
    for bad in ({"rule": "S3"}, {"scoring": "mean"}, {"election": "lottery"},
                {"fraction": 0.0}, {"outlier_ratio": 1.0}):
        with pytest.raises(ValueError):
            RoundConfig.from_selection(bad)


def test_rank_agreement_is_spearman():
    cons = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    assert rank_agreement(cons, cons) == 1.0
    assert rank_agreement({"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0}, cons) == -1.0
    # swap of the first two: d^2 = 2, rho = 1 - 6*2 / (4*15) = 0.8
    assert rank_agreement({"a": 2.0, "b": 1.0, "c": 3.0, "d": 4.0}, cons) == pytest.approx(0.8)
    assert rank_agreement({"a": 1.0}, {"a": 2.0}) == 1.0


def test_dissenter_is_the_member_ranking_against_the_rest():
    honest = {"h1": 1.0, "h2": 1.2, "h3": 1.4, "x": 5.0}
    liar = {"h1": 100.0, "h2": 120.0, "h3": 140.0, "x": 0.0}
    vectors = {"m1": honest, "m2": {k: v + 0.3 for k, v in honest.items()}, "m3": liar}
    assert find_dissenters(vectors) == ("m3",)
    assert find_dissenters({"m1": honest, "m3": liar}) == ()  # two members: no majority


def test_outliers_relative_to_typical_honest_distance():
    scores = {"a": 1.0, "b": 1.1, "c": 1.2, "d": 1.25, "e": 5.0}
    # lower half {a, b}: typical 1.05, limit 1.3 * 1.05 = 1.365
    assert find_outliers(scores, 1.3) == ("e",)
    assert find_outliers(scores, 10.0) == ()
    assert find_outliers({"a": float("inf"), "b": 1.0, "c": 1.0}, 1.3) == ("a",)


def test_median_scoring_keeps_a_liar_from_pulling_a_poisoned_update_in():
    honest = {"h1": 1.0, "h2": 1.2, "h3": 1.4, "x": 5.0}
    liar = {"h1": 100.0, "h2": 100.0, "h3": 100.0, "x": 0.0}
    vectors = {"m1": honest, "m2": honest, "m3": liar}
    s1_sum = select_round(vectors, RoundConfig(rule="S1", scoring="sum"))
    assert "x" in s1_sum.selected  # summed: the liar's 100s outweigh x's two honest 5s
    s1_median = select_round(vectors, RoundConfig(rule="S1", scoring="median"))
    assert s1_median.selected == ("h1", "h2")
    assert s1_median.dissenters == ("m3",)


def test_select_s1_s2_auto():
    vec = {"a": 1.0, "b": 1.1, "c": 1.2, "d": 1.25, "e": 5.0}
    vectors = {"m1": vec, "m2": vec, "m3": vec}
    assert select_round(vectors, RoundConfig(rule="S1", scoring="median")).selected == (
        "a", "b", "c")  # ceil(0.5 * 5) = 3 lowest
    assert select_round(vectors, RoundConfig(rule="S2", scoring="median")).selected == (
        "c", "d", "e")
    auto = select_round(vectors, RoundConfig(rule="auto", scoring="median"))
    assert auto.selected == ("a", "b", "c", "d") and auto.outliers == ("e",)
    assert auto.applied == "S1"
    calm = {"a": 1.0, "b": 1.1, "c": 1.2, "d": 1.25}
    clean = select_round({"m1": calm, "m2": calm, "m3": calm},
                         RoundConfig(rule="auto", scoring="median"))
    assert clean.selected == ("a", "b", "c", "d") and clean.applied == "S1+S2"


def test_trusted_election_skips_outliers_and_recorded_misbehaviour():
    scores = {f"p{i}": float(i) for i in range(7)}  # ranking p0..p6
    sel = select_round({"m": scores}, RoundConfig(rule="auto", election="trusted"))
    cfg = RoundConfig(rule="auto", election="trusted")
    # lower half p0..p2 gives typical 1.0, limit 1.3: p2..p6 are outliers
    assert sel.outliers == ("p2", "p3", "p4", "p5", "p6")
    assert elect_committee(sel, 2, ("c1", "c2"), cfg) == ("p0", "p1")
    # too few trusted candidates and no one convicted on the committee: it stays
    assert elect_committee(sel, 3, ("c1", "c2", "c3"), cfg) == ("c1", "c2", "c3")
    flat = {f"p{i}": 1.0 + i / 100 for i in range(7)}
    sel = select_round({"m": flat}, cfg)
    assert elect_committee(sel, 3, (), cfg) == ("p2", "p3", "p4")
    assert elect_committee(sel, 3, (), cfg, excluded={"p3"}) == ("p1", "p2", "p4")
    middle = RoundConfig(election="middle")
    # recorded misbehaviour bars a peer under the plain CMFL election too
    assert elect_committee(sel, 3, (), middle, excluded={"p3"}) == ("p1", "p2", "p4")


def _updates(n):
    spec = ModelSpec((4, 3, 2))
    base = initial_state(spec, 0)
    ups = {f"t{i}": initial_state(spec, i + 1) for i in range(n)}
    return base, ups, {f"t{i}": 5 + 3 * i for i in range(n)}


def test_decide_round_default_is_plain_cmfl():
    base, ups, samples = _updates(6)
    vectors = {m: {t: float((i * 7 + j * 3) % 11) for j, t in enumerate(sorted(ups))}
               for i, m in enumerate(["c1", "c2", "c3"])}
    d = decide_round(base, vectors, ups, samples, 2, ("c1", "c2"), RoundConfig())
    combined = combine_scores([vectors[m] for m in sorted(vectors)], "sum")
    chosen = select_lowest_distance(combined, 3)
    assert d.combined_scores == combined and list(d.selected) == chosen
    want = aggregate_weighted(base, {t: ups[t] for t in chosen}, {t: samples[t] for t in chosen})
    assert state_bytes(d.new_state) == state_bytes(want)
    assert list(d.next_committee) == elect_middle(combined, 2)


@pytest.mark.parametrize("rule", ["S1", "S2", "auto"])
def test_decide_round_bit_for_bit_whatever_the_dict_order(rule):
    base, ups, samples = _updates(7)
    vectors = {m: {t: 1.0 + ((i + 2) * (j + 5)) % 13 / 10 for j, t in enumerate(sorted(ups))}
               for i, m in enumerate(["c1", "c2", "c3", "c4"])}
    cfg = RoundConfig(rule=rule, scoring="median", election="trusted")
    a = decide_round(base, vectors, ups, samples, 3, ("c1", "c2", "c3", "c4"), cfg)
    rev = lambda d: {k: d[k] for k in reversed(list(d))}  # noqa: E731
    b = decide_round(rev(base), {m: rev(v) for m, v in rev(vectors).items()}, rev(ups),
                     rev(samples), 3, ("c4", "c3", "c2", "c1"), cfg)
    assert state_bytes(a.new_state) == state_bytes(b.new_state)
    assert a.selected == b.selected and a.next_committee == b.next_committee


def test_finish_round_needs_every_selected_update():
    base, ups, samples = _updates(3)
    sel = select_round({"m": {"t0": 1.0, "t1": 2.0, "t2": 3.0}}, RoundConfig(fraction=1.0))
    with pytest.raises(KeyError):
        finish_round(base, sel, {"t0": ups["t0"]}, samples, 1, ("m",), RoundConfig())
    assert torch.is_tensor(finish_round(base, sel, ups, samples, 1, ("m",),
                                        RoundConfig()).new_state["0.weight"])


def test_sample_trainers_is_seeded_by_the_block():
    from learning.election import sample_trainers

    peers = [f"p{i}" for i in range(10)]
    a = sample_trainers(peers, 4, b"block-1")
    assert len(a) == 4 and a == sorted(a) and set(a) <= set(peers)
    assert sample_trainers(list(reversed(peers)), 4, b"block-1") == a
    assert sample_trainers(peers, 99, b"block-1") == peers
    draws = {tuple(sample_trainers(peers, 4, bytes([i]))) for i in range(20)}
    assert len(draws) > 10  # another block, another sample
    assert sample_trainers(peers, 0, b"x") == []


def test_no_one_is_a_dissenter_when_every_update_is_honest():
    # IID honest trainers sit at near-equal distances: members rank them by noise, and
    # disagreeing about noise is not misbehaviour.
    import random

    rng = random.Random(5)
    trainers = [f"t{i}" for i in range(6)]
    for _ in range(50):
        vectors = {f"m{j}": {t: 1.0 + rng.random() * 0.05 for t in trainers} for j in range(4)}
        assert find_dissenters(vectors) == ()


def test_issue14_keys_round_trip_and_stay_out_of_old_genesis_dicts():
    assert set(RoundConfig(rule="auto").to_selection()) == {
        "rule", "fraction", "scoring", "election", "outlier_ratio"}
    cfg = RoundConfig(rule="auto", scoring="median", election="trusted", typical="floored",
                      clone_ratio=0.02)
    assert RoundConfig.from_selection(cfg.to_selection()) == cfg
    for bad in ({"typical": "mean"}, {"clone_ratio": 1.0}, {"clone_ratio": -0.1}):
        with pytest.raises(ValueError):
            RoundConfig.from_selection(bad)


def test_a_colluding_quarter_at_the_bottom_defines_the_lower_half_but_not_the_floor():
    # 5 copies just under 12 honest trainers spread 1.0 .. 2.1
    scores = {f"h{i:02d}": 1.0 + 0.1 * i for i in range(12)}
    scores.update({f"x{i}": 0.9 for i in range(5)})
    assert typical_distance(scores, "lower_half") == 0.9  # theirs
    assert typical_distance(scores, "median") == pytest.approx(1.3)  # an honest one
    assert typical_distance(scores, "floored") == pytest.approx(0.85 * 1.3)
    assert len(find_outliers(scores, 1.3)) == 10  # 10 of 12 honest trainers cast out
    assert len(find_outliers(scores, 1.3, "floored")) == 7


def test_clones_are_trainers_with_one_score_vector():
    vectors = {"m1": {"a": 1.0, "b": 1.4, "x": 0.8, "y": 0.8},
               "m2": {"a": 1.2, "b": 1.1, "x": 0.9, "y": 0.9001}}
    assert find_clones(vectors, ratio=0.02) == ("x", "y")
    assert find_clones(vectors, ratio=0.0) == ()
    # a member inflating every distance widens its own tolerance only
    inflated = dict(vectors, m3={t: 50.0 + d for t, d in vectors["m1"].items()})
    assert find_clones(inflated, ratio=0.02) == ("x", "y")
    cfg = RoundConfig(rule="auto", scoring="median", election="trusted", clone_ratio=0.02)
    sel = select_round(vectors, cfg)
    assert set(sel.outliers) >= {"x", "y"} and not {"x", "y"} & set(sel.selected)


def test_robust_election_seats_the_middle_of_every_trainer_but_no_clone():
    # three copies just under the honest trainers, two honest outliers far away
    vectors = {m: {"a": 1.0 + s, "b": 1.1 + s, "c": 1.2 + s, "d": 3.0 + s, "e": 3.1 + s,
                   "x": 0.9 + s, "y": 0.9 + s, "z": 0.9 + s} for m, s in
               (("m1", 0.0), ("m2", 0.05), ("m3", 0.1))}
    for election, seated in (("trusted", ("a", "b", "c")), ("robust", ("b", "c", "d"))):
        cfg = RoundConfig(rule="auto", scoring="median", election=election, clone_ratio=0.02)
        sel = select_round(vectors, cfg)
        assert sel.clones == ("x", "y", "z")
        assert elect_committee(sel, 3, ("m1", "m2", "m3"), cfg) == seated


def test_a_convicted_member_is_never_re_seated_when_trusted_candidates_are_short():
    # issue 13: with fewer trusted candidates than seats the old rule kept the whole current
    # committee, a convicted leader included
    scores = {f"p{i}": float(i) for i in range(7)}
    for election in ("trusted", "robust", "middle"):
        cfg = RoundConfig(rule="auto", election=election)
        sel = select_round({"m": scores}, cfg)
        for size in (3, 5, 8, 12):
            seated = elect_committee(sel, size, ("leader", "c2", "c3"), cfg,
                                     excluded={"leader", "p0"})
            assert "leader" not in seated and "p0" not in seated, (election, size)
            assert len(seated) == min(size, 8), (election, size)  # 6 trainers + c2, c3
    # nobody left but the convicted: the committee stays (no one better to seat)
    sel = select_round({"m": {"x": 1.0}}, RoundConfig(rule="auto", election="trusted"))
    assert elect_committee(sel, 2, ("a", "b"), RoundConfig(election="trusted"),
                           excluded={"x", "a", "b"}) == ("a", "b")
