"""Hand-checked baseline aggregators (FedAvg, Krum, Multi-Krum, median, trimmed mean)."""

import pytest
import torch

from learning.baselines import (
    aggregate_baseline,
    coordinate_median,
    fedavg,
    flatten_state,
    krum,
    krum_scores,
    trimmed_mean,
    unflatten_state,
)
from learning.model import ModelSpec, initial_state
from learning.tensors import state_bytes


def _v(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_fedavg_weights_by_samples():
    out = fedavg([_v(0.0, 4.0), _v(4.0, 0.0)], [1, 3])
    assert torch.equal(out, _v(3.0, 1.0))
    with pytest.raises(ValueError):
        fedavg([_v(1.0)], [0])
    with pytest.raises(ValueError):
        fedavg([], [])


def test_krum_scores_and_choice():
    # 1-D points 0, 1, 2 and an outlier at 10; n=4, f=1 -> each scores its n-f-2 = 1 nearest.
    vs = [_v(0.0), _v(1.0), _v(2.0), _v(10.0)]
    assert krum_scores(vs, 1) == [1.0, 1.0, 1.0, 64.0]
    assert torch.equal(krum(vs, [1, 1, 1, 1], 1), _v(0.0))  # tie broken by index
    # Multi-Krum keeps the 3 best (0, 1, 2) and averages them by samples.
    assert torch.equal(krum(vs, [1, 1, 2, 1], 1, to_keep=3), _v(1.25))


def test_coordinate_median_odd_and_even():
    vs = [_v(1.0, 9.0), _v(5.0, 2.0), _v(3.0, 100.0)]
    assert torch.equal(coordinate_median(vs), _v(3.0, 9.0))
    assert torch.equal(coordinate_median(vs + [_v(4.0, 0.0)]), _v(3.5, 5.5))


def test_trimmed_mean_cuts_each_end():
    vs = [_v(x) for x in (0.0, 1.0, 2.0, 3.0, 100.0)]
    assert torch.equal(trimmed_mean(vs, 0.2), _v(2.0))  # cut 1 per end: mean(1, 2, 3)
    assert torch.equal(trimmed_mean(vs, 0.0), _v(21.2))
    with pytest.raises(ValueError):
        trimmed_mean(vs, 0.5)


def test_flatten_roundtrip():
    s = initial_state(ModelSpec(), 3)
    back = unflatten_state(flatten_state(s), s)
    assert all(torch.equal(back[k], s[k]) and back[k].dtype == s[k].dtype for k in s)
    with pytest.raises(ValueError):
        unflatten_state(torch.zeros(3, dtype=torch.float64), s)


@pytest.mark.parametrize("rule", ["fedavg", "krum", "multikrum", "median", "trimmed_mean"])
def test_aggregate_baseline_bit_for_bit(rule):
    spec = ModelSpec()
    ups = {f"t{i}": initial_state(spec, i) for i in range(6)}
    samples = {f"t{i}": 10 + i for i in range(6)}
    first = state_bytes(aggregate_baseline(rule, ups, samples, 1))
    rev = {k: ups[k] for k in reversed(list(ups))}
    assert state_bytes(aggregate_baseline(rule, rev, samples, 1)) == first


def test_aggregate_baseline_fedavg_falls_to_zeros_median_does_not():
    good = {f"h{i}": {"w": torch.tensor([1.0, 1.0])} for i in range(3)}
    bad = {f"z{i}": {"w": torch.tensor([0.0, 0.0])} for i in range(2)}
    n = {k: 1 for k in [*good, *bad]}
    assert torch.allclose(aggregate_baseline("fedavg", {**good, **bad}, n, 2)["w"],
                          torch.tensor([0.6, 0.6]))
    assert torch.equal(aggregate_baseline("median", {**good, **bad}, n, 2)["w"],
                       torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError):
        aggregate_baseline("mean", good, n, 0)
