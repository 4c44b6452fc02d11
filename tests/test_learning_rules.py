"""Hand-checked CMFL scoring, selection, election and aggregation rules."""

import math

import pytest
import torch

from learning.aggregation import aggregate_weighted
from learning.election import elect_middle
from learning.model import ModelSpec, initial_state
from learning.scoring import combine_scores, model_distance, score_updates
from learning.selection import rank_by_score, select_highest_distance, select_lowest_distance
from learning.tensors import state_bytes


def _s(w, b):
    return {"w": torch.tensor(w, dtype=torch.float32), "b": torch.tensor(b, dtype=torch.float32)}


def test_model_distance_sums_per_layer_l2():
    a = _s([[3.0, 0.0], [0.0, 4.0]], [1.0])
    b = _s([[0.0, 0.0], [0.0, 0.0]], [-1.0])
    # ||w diff|| = 5, ||b diff|| = 2 -> 7 (sum of per-layer norms, not global norm sqrt(29))
    assert model_distance(a, b) == pytest.approx(7.0)
    assert model_distance(a, a) == 0.0
    with pytest.raises(ValueError):
        model_distance(a, {"w": a["w"]})
    nan = _s([[math.nan, 0.0], [0.0, 0.0]], [0.0])
    assert model_distance(nan, b) == math.inf  # poisoned model ranks worst


def test_score_updates_against_reference():
    ref = _s([0.0, 0.0], [0.0])
    ups = {"t2": _s([3.0, 4.0], [0.0]), "t1": _s([0.0, 0.0], [2.0]), "t3": ref}
    assert score_updates(ref, ups) == {"t1": 2.0, "t2": 5.0, "t3": 0.0}


def test_combine_scores_sum_and_median():
    v1 = {"a": 1.0, "b": 2.0, "c": 9.0}
    v2 = {"a": 3.0, "b": 2.0}
    v3 = {"a": 100.0, "b": 1.0, "d": 0.0}  # a lying member inflates "a"
    assert combine_scores([v1, v2, v3]) == {"a": 104.0, "b": 5.0}  # only common trainers
    med = combine_scores([v1, v2, v3], rule="median")
    assert med == {"a": 3.0, "b": 2.0}  # the liar alone cannot move the median
    assert combine_scores([v1, v2], rule="median") == {"a": 2.0, "b": 2.0}
    # order of members does not change the result
    assert combine_scores([v3, v1, v2]) == combine_scores([v1, v2, v3])
    assert combine_scores([]) == {}
    assert combine_scores([{"a": math.nan}, {"a": 1.0}]) == {"a": math.inf}
    with pytest.raises(ValueError):
        combine_scores([v1], rule="mean")


def test_rank_and_selection_with_ties():
    scores = {"p3": 1.0, "p1": 2.0, "p2": 1.0, "p4": 5.0, "p0": 2.0}
    assert rank_by_score(scores) == ["p2", "p3", "p0", "p1", "p4"]
    assert select_lowest_distance(scores, 3) == ["p0", "p2", "p3"]
    assert select_highest_distance(scores, 2) == ["p1", "p4"]
    assert select_highest_distance(scores, 3) == ["p0", "p1", "p4"]
    assert select_lowest_distance(scores, 0) == []
    assert select_lowest_distance(scores, -1) == []
    assert select_highest_distance(scores, 99) == sorted(scores)
    assert rank_by_score({"a": math.nan, "b": 3.0}) == ["b", "a"]


def test_elect_middle():
    scores = {f"p{i}": float(i) for i in range(7)}  # ranking p0..p6
    assert elect_middle(scores, 3) == ["p2", "p3", "p4"]  # start = (7-3)//2 = 2
    assert elect_middle(scores, 2) == ["p2", "p3"]  # start = (7-2)//2 = 2
    # exclude p0 and p1 -> ranking p2..p6, start = (5-3)//2 = 1 -> p3, p4, p5
    assert elect_middle(scores, 3, exclude={"p0", "p1"}) == ["p3", "p4", "p5"]
    assert elect_middle(scores, 10, exclude=frozenset({"p6"})) == [f"p{i}" for i in range(6)]
    assert elect_middle(scores, 0) == []
    tied = {"b": 1.0, "a": 1.0, "c": 1.0, "d": 0.0}  # ranking d, a, b, c
    assert elect_middle(tied, 2) == ["a", "b"]


def test_aggregate_weighted_hand_computed():
    base = _s([0.0, 1.0], [2.0])
    ups = {"y": _s([4.0, 1.0], [2.0]), "x": _s([0.0, 5.0], [6.0])}
    out = aggregate_weighted(base, ups, {"x": 1, "y": 3})
    # w_x = 0.25, w_y = 0.75: w = [0.75*4, 1 + 0.25*4], b = 2 + 0.25*4
    assert torch.equal(out["w"], torch.tensor([3.0, 2.0]))
    assert torch.equal(out["b"], torch.tensor([3.0]))
    assert torch.equal(base["w"], torch.tensor([0.0, 1.0]))  # base untouched
    empty = aggregate_weighted(base, {}, {})
    assert torch.equal(empty["w"], base["w"]) and empty["w"] is not base["w"]
    with pytest.raises(ValueError):
        aggregate_weighted(base, ups, {"x": 1})
    with pytest.raises(ValueError):
        aggregate_weighted(base, ups, {"x": 0, "y": 0})
    with pytest.raises(ValueError):
        aggregate_weighted(base, {"x": {"w": base["w"]}}, {"x": 1})


def test_aggregate_weighted_bit_for_bit():
    spec = ModelSpec()
    base = initial_state(spec, 0)
    ups = {f"t{i}": initial_state(spec, i + 1) for i in range(5)}
    samples = {f"t{i}": 37 + 11 * i for i in range(5)}
    first = state_bytes(aggregate_weighted(base, ups, samples))
    again = state_bytes(aggregate_weighted(base, ups, samples))
    rev_ups = {k: ups[k] for k in reversed(list(ups))}
    rev_samples = {k: samples[k] for k in reversed(list(samples))}
    shuffled = state_bytes(aggregate_weighted(base, rev_ups, rev_samples))
    assert first == again == shuffled
