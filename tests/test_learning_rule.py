"""Issue 14's aggregation safeguards: near-parallel updates left out, declared counts capped."""

import numpy as np
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
    assert new.max_cosine == 0.9 and new.sample_cap == "median"


def test_new_attacks_registered_and_inflate_counts():
    assert "cmfl_capture_spread" in ATTACKS and "cmfl_capture_heavy" in ATTACKS
    assert make_attack("cmfl_capture_heavy").sample_factor == 50
    assert make_attack("cmfl_capture_spread").sample_factor == 1
    _ = np.zeros(1)
