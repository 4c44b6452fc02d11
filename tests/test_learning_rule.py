"""Issue 14's aggregation safeguards: near-parallel updates left out, declared counts capped."""

import numpy as np
import pytest
import torch

from chain.genesis import Genesis
from learning.aggregation import cap_samples, find_collinear
from learning.attacks import ATTACKS, make_attack
from learning.cmfl import RoundConfig, decide_round


def _state(v):
    return {"w": torch.tensor(v, dtype=torch.float32)}


def test_cap_samples_caps_at_lower_median():
    assert cap_samples({"a": 10, "b": 12, "c": 100_000}) == {"a": 10, "b": 12, "c": 12}
    assert cap_samples({}) == {}


def test_find_collinear_flags_parallel_pairs_only():
    base = _state([0.0, 0.0, 0.0])
    ups = {"h1": _state([1.0, 0.0, 0.0]), "h2": _state([0.0, 1.0, 0.0]),
           "c1": _state([-1.0, -1.0, 1.0]), "c2": _state([-2.0, -2.1, 2.0])}
    assert find_collinear(base, ups, 0.9) == ("c1", "c2")
    assert find_collinear(base, ups, 1.0) == ()


def test_round_leaves_out_collinear_and_caps_heavy_weight():
    base = _state([0.0, 0.0])
    ups = {"a": _state([1.0, 0.0]), "b": _state([0.0, 1.0]),
           "c": _state([-1.0, -1.0]), "d": _state([-2.0, -2.0])}
    vectors = {m: {t: 1.0 for t in ups} for m in ("m1", "m2", "m3")}
    cfg = RoundConfig(rule="auto", scoring="median", max_cosine=0.9, sample_cap="median")
    samples = {"a": 10, "b": 10, "c": 10, "d": 10}
    dec = decide_round(base, vectors, ups, samples, 2, ("m1", "m2"), cfg)
    assert dec.aggregated == ("a", "b")
    assert torch.allclose(dec.new_state["w"], torch.tensor([0.5, 0.5]))
    two = {m: {t: 1.0 for t in "ab"} for m in ("m1", "m2", "m3")}
    heavy = decide_round(base, two, {t: ups[t] for t in "ab"}, {"a": 10, "b": 10_000},
                         2, ("m1", "m2"), cfg)
    assert torch.allclose(heavy.new_state["w"], torch.tensor([0.5, 0.5]))


def test_old_selection_keys_keep_old_behaviour_and_default_is_new():
    old = RoundConfig(rule="auto", scoring="median", election="trusted")
    assert "max_cosine" not in old.to_selection() and "sample_cap" not in old.to_selection()
    assert RoundConfig.from_selection(old.to_selection()) == old
    new = RoundConfig.from_selection(Genesis("t", ("a",), ("a",)).selection)
    assert new.max_cosine == 0.9 and new.sample_cap == "median" and new.judged


def test_new_attacks_registered_and_inflate_counts():
    assert "cmfl_capture_spread" in ATTACKS and "cmfl_capture_heavy" in ATTACKS
    assert make_attack("cmfl_capture_heavy").sample_factor == 50
    assert make_attack("cmfl_capture_spread").sample_factor == 1
    _ = np.zeros(1)


def test_clipped_aggregate_bounds_a_far_update_and_keeps_close_ones():
    from learning.aggregation import aggregate_clipped
    base = _state([0.0, 0.0])
    ups = {"a": _state([1.0, 0.0]), "b": _state([0.0, 1.0]), "c": _state([1.0, 1.0]),
           "x": _state([-1000.0, -1000.0])}
    samples = {t: 10 for t in ups}
    out = aggregate_clipped(base, ups, samples)["w"]
    # the far update moves the aggregate by at most its weight times the radius
    assert float(out.norm()) < 2.0 and bool((out > -1.0).all())
    same = {t: _state([0.5, -0.25]) for t in "abc"}
    assert torch.equal(aggregate_clipped(base, same, {t: 1 for t in same})["w"],
                       torch.tensor([0.5, -0.25]))


def test_clipped_aggregate_is_bit_reproducible_and_order_free():
    from learning.aggregation import aggregate_clipped
    rng = np.random.default_rng(3)
    base = {"w": torch.from_numpy(rng.standard_normal(50)).float()}
    ups = {f"t{i}": {"w": base["w"] + torch.from_numpy(rng.standard_normal(50)).float()}
           for i in range(7)}
    samples = {t: 5 + i for i, t in enumerate(ups)}
    a = aggregate_clipped(base, ups, samples)["w"]
    b = aggregate_clipped(base, dict(reversed(list(ups.items()))), dict(reversed(list(samples.items()))))["w"]
    assert a.dtype == torch.float32 and torch.equal(a, b)


def test_clipped_rule_aggregates_every_scored_trainer():
    base = _state([0.0, 0.0])
    ups = {"a": _state([1.0, 0.0]), "b": _state([0.0, 1.0]), "c": _state([0.5, 0.5]),
           "far": _state([40.0, -40.0])}
    vectors = {m: {"a": 1.0, "b": 1.1, "c": 0.9, "far": 50.0} for m in ("m1", "m2", "m3")}
    cfg = RoundConfig(rule="auto", scoring="median", election="robust", aggregate="clipped")
    dec = decide_round(base, vectors, ups, {t: 10 for t in ups}, 2, ("m1", "m2"), cfg)
    assert "far" in dec.outliers and dec.aggregated == ("a", "b", "c", "far")
    assert float(dec.new_state["w"].norm()) < 2.0
    assert RoundConfig.from_selection(cfg.to_selection()) == cfg
    assert "aggregate" not in RoundConfig().to_selection()


def test_misaligned_updates_are_left_out_of_the_aligned_clipped_aggregate():
    from learning.aggregation import find_misaligned
    base = _state([0.0, 0.0, 0.0])
    ups = {"a": _state([1.0, 0.2, 0.0]), "b": _state([0.8, 0.0, 0.3]),
           "c": _state([1.2, 0.1, 0.1]), "flip": _state([-1.0, -0.2, 0.0])}
    assert find_misaligned(base, ups) == ("flip",)
    assert find_misaligned(base, {t: ups[t] for t in "ab"}) == ()
    vectors = {m: {t: 1.0 + 0.1 * i for i, t in enumerate(sorted(ups))} for m in ("m1", "m2", "m3")}
    cfg = RoundConfig(rule="auto", scoring="median", election="robust",
                      aggregate="clipped-aligned")
    dec = decide_round(base, vectors, ups, {t: 10 for t in ups}, 2, ("m1", "m2"), cfg)
    assert dec.selected == ("a", "b", "c", "flip") and dec.aggregated == ("a", "b", "c")
    assert float(dec.new_state["w"][0]) > 0.5


def test_far_updates_are_left_out_before_clipping():
    from learning.aggregation import find_far
    base = _state([0.0, 0.0])
    ups = {"a": _state([1.0, 0.0]), "b": _state([0.0, 1.0]), "c": _state([0.5, 0.5]),
           "d": _state([0.8, 0.4]), "far": _state([-9.0, -9.0])}
    assert find_far(base, ups, 2.0) == ("far",)
    assert find_far(base, ups, 1.0) == () and find_far(base, {"a": ups["a"]}, 2.0) == ()
    vectors = {m: {t: 1.0 + 0.01 * i for i, t in enumerate(sorted(ups))} for m in ("m1", "m2", "m3")}
    cfg = RoundConfig(rule="auto", scoring="median", election="robust",
                      aggregate="clipped-aligned", drop_ratio=2.0)
    dec = decide_round(base, vectors, ups, {t: 10 for t in ups}, 2, ("m1", "m2"), cfg)
    assert "far" in dec.selected and "far" not in dec.aggregated


def test_clipped_rule_counts_a_near_parallel_group_once():
    from learning.aggregation import collinear_extras
    base = _state([0.0, 0.0, 0.0])
    ups = {"h1": _state([1.0, 0.0, 0.0]), "h2": _state([0.0, 1.0, 0.0]),
           "c1": _state([-1.0, -1.0, 1.0]), "c2": _state([-2.0, -2.1, 2.0]),
           "c3": _state([-3.0, -3.0, 3.1])}
    assert collinear_extras(base, ups, 0.9) == ("c2", "c3")
    two = {"a": _state([1.0, 0.1, 0.0]), "b": _state([1.0, 0.0, 0.1])}
    vectors = {m: {"a": 1.0, "b": 1.1} for m in ("m1", "m2", "m3")}
    cfg = RoundConfig(rule="auto", scoring="median", election="robust", max_cosine=0.9,
                      aggregate="clipped-aligned", drop_ratio=2.0)
    dec = decide_round(base, vectors, two, {"a": 5, "b": 5}, 2, ("m1", "m2"), cfg)
    assert dec.aggregated == ("a",) and float(dec.new_state["w"][0]) == 1.0


def test_with_two_trainers_the_clipped_rule_takes_the_committees_outliers():
    # two updates are each other's median: geometry cannot tell a sign-flipper from an honest
    # peer, so the committee's scores decide (tests/test_network.py has 2 trainers)
    base = _state([0.0, 0.0])
    ups = {"h": _state([1.0, 0.5]), "flip": _state([-1.0, -0.5])}
    vectors = {m: {"h": 0.2, "flip": 2.0} for m in ("m1", "m2", "m3")}
    cfg = RoundConfig(rule="auto", scoring="median", election="robust", typical="floored",
                      aggregate="clipped-aligned", drop_ratio=2.0)
    dec = decide_round(base, vectors, ups, {t: 5 for t in ups}, 2, ("m1", "m2"), cfg)
    assert dec.selected == ("h",) and torch.equal(dec.new_state["w"], torch.tensor([1.0, 0.5]))


def test_a_tight_group_cannot_make_honest_updates_look_far():
    # Four colluders sit together near the honest mean, pulling the coordinate median to
    # them; the lower quartile of the pairwise distances is still the honest spread, so no
    # honest update looks far, and a far pusher does.
    from learning.aggregation import find_far_pairwise
    base = _state([0.0, 0.0, 0.0])
    ups = {"h1": _state([3.0, 0.0, 0.0]), "h2": _state([0.0, 3.0, 0.0]),
           "h3": _state([0.0, 0.0, 3.0]), "h4": _state([2.0, 2.0, -1.0]),
           "h5": _state([-1.0, 2.0, 2.0])}
    for i in range(4):
        ups[f"c{i}"] = _state([0.5 + 0.01 * i, 0.5, 0.5])
    assert find_far_pairwise(base, ups, 2.0) == ()
    ups["far"] = _state([-30.0, -30.0, -30.0])
    assert find_far_pairwise(base, ups, 2.0) == ("far",)
    assert find_far_pairwise(base, ups, 1.0) == ()


def test_updates_deviating_together_are_left_out():
    # Honest updates deviate from the mean each their own way; colluders spread their updates
    # (no two near-parallel) but push one way: their deviations agree.
    from learning.aggregation import find_coherent, find_collinear
    base = _state([0.0, 0.0, 0.0, 0.0])
    ups = {"h1": _state([2.0, 0.0, 0.0, 0.0]), "h2": _state([0.0, 2.0, 0.0, 0.0]),
           "h3": _state([0.0, 0.0, 2.0, 0.0]), "h4": _state([1.0, 1.0, 1.0, 0.0]),
           "c1": _state([-1.0, -1.0, -1.0, 1.0]), "c2": _state([-1.0, -1.0, -1.0, -1.0])}
    assert find_collinear(base, ups, 0.9) == ()
    assert find_coherent(base, ups, 0.5) == ("c1", "c2")
    assert find_coherent(base, ups, 0.0) == () and find_coherent(base, {"a": ups["h1"]}, 0.5) == ()
    vectors = {m: {t: 1.0 + 0.01 * i for i, t in enumerate(sorted(ups))} for m in ("m1", "m2", "m3")}
    cfg = RoundConfig(rule="auto", scoring="median", election="robust", max_cosine=0.9,
                      sample_cap="median", aggregate="clipped-aligned", drop_ratio=2.0,
                      pair_far=2.0, coherence=0.5)
    dec = decide_round(base, vectors, ups, {t: 10 for t in ups}, 2, ("m1", "m2"), cfg)
    assert set(dec.selected) == set(ups) and not {"c1", "c2"} & set(dec.aggregated)
    assert RoundConfig.from_selection(cfg.to_selection()) == cfg
    assert "coherence" not in RoundConfig().to_selection()
    with pytest.raises(ValueError):
        RoundConfig(coherence=1.0)
    with pytest.raises(ValueError):
        RoundConfig(pair_far=0.5)
