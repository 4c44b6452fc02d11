"""DP-SGD training and the privacy accountant: epsilon against Opacus and closed forms."""

import math

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from scipy.optimize import brentq
from scipy.stats import norm

from learning.data import load_digits_split, subset
from learning.model import ModelSpec, build_model, initial_state
from learning.privacy import (
    DEFAULT_DELTA,
    DP_PARAMS_KEYS,
    DpReport,
    PrivacyAccountant,
    clip_and_sum,
    noise_consistent,
    noise_debiased_distance,
    per_sample_gradients,
    round_epsilon,
    train_local_dp,
    update_noise_variance,
)
from learning.tensors import state_sub
from learning.training import evaluate, train_local

SPEC = ModelSpec()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny per-sample batches: threads only fight over the shared cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def split():
    return load_digits_split(seed=0)


def _rdp_closed_form(sigma: float, steps: int, delta: float) -> float:
    """No subsampling (q = 1): RDP of T Gaussian steps is T a / (2 sigma^2); converted to
    (eps, delta) by Balle et al. 2020, Thm 21, minimised over Opacus' default orders."""
    best = math.inf
    for a in RDPAccountant.DEFAULT_ALPHAS:
        rdp = steps * a / (2 * sigma**2)
        eps = rdp - (math.log(delta) + math.log(a)) / (a - 1) + math.log((a - 1) / a)
        best = min(best, eps)
    return best


def _exact_gaussian_epsilon(sigma: float, steps: int, delta: float) -> float:
    """The exact epsilon of T composed Gaussian mechanisms (q = 1): a Gaussian with
    mu = sqrt(T) / sigma, delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)
    (Balle & Wang 2018)."""
    mu = math.sqrt(steps) / sigma

    def gap(eps: float) -> float:
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta

    return brentq(gap, 0.0, 100.0)


@pytest.mark.parametrize("sigma,q,steps", [(1.1, 256 / 60000, 14_000), (1.0, 0.01, 1000),
                                           (2.0, 16 / 144, 360), (0.7, 0.05, 50)])
def test_accountant_matches_opacus_stepped_one_step_at_a_time(sigma, q, steps):
    lib = RDPAccountant()
    for _ in range(steps):
        lib.step(noise_multiplier=sigma, sample_rate=q)
    acc = PrivacyAccountant()
    # The same steps, recorded as several rounds: composition must not depend on the split.
    for part in (steps // 3, steps // 3, steps - 2 * (steps // 3)):
        acc.spend(sigma, q, part)
    assert acc.epsilon(DEFAULT_DELTA) == pytest.approx(lib.get_epsilon(DEFAULT_DELTA), rel=1e-9)


def test_accountant_composes_different_rounds_like_opacus():
    lib = RDPAccountant()
    acc = PrivacyAccountant()
    for sigma, q, steps in [(1.0, 0.1, 20), (2.0, 0.05, 40), (1.0, 0.1, 20)]:
        for _ in range(steps):
            lib.step(noise_multiplier=sigma, sample_rate=q)
        acc.spend(sigma, q, steps)
    assert acc.epsilon() == pytest.approx(lib.get_epsilon(DEFAULT_DELTA), rel=1e-9)
    assert acc.last_round_epsilon() == pytest.approx(round_epsilon(1.0, 0.1, 20), rel=1e-12)
    assert acc.epsilon() > acc.last_round_epsilon() > 0


@pytest.mark.parametrize("sigma,steps", [(1.0, 1), (2.0, 10), (5.0, 100)])
def test_rdp_without_subsampling_matches_closed_form(sigma, steps):
    assert round_epsilon(sigma, 1.0, steps) == pytest.approx(
        _rdp_closed_form(sigma, steps, DEFAULT_DELTA), rel=1e-9)


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # Opacus' PRV at q = 1
@pytest.mark.parametrize("sigma,steps", [(1.0, 1), (2.0, 10), (5.0, 100)])
def test_rdp_bounds_and_prv_tracks_the_exact_gaussian_epsilon(sigma, steps):
    exact = _exact_gaussian_epsilon(sigma, steps, DEFAULT_DELTA)
    rdp = round_epsilon(sigma, 1.0, steps, mechanism="rdp")
    prv = round_epsilon(sigma, 1.0, steps, mechanism="prv")
    assert exact <= rdp <= 1.5 * exact  # RDP is an upper bound, and not a loose one here
    assert exact - 1e-3 <= prv <= exact + 0.05  # PRV is numerically tight (eps_error 0.01)


def test_epsilon_edge_cases():
    assert round_epsilon(1.0, 0.1, 0) == 0.0
    assert PrivacyAccountant().epsilon() == 0.0
    assert math.isinf(round_epsilon(0.0, 0.1, 10))
    assert round_epsilon(2.0, 0.1, 10) < round_epsilon(1.0, 0.1, 10)
    with pytest.raises(ValueError):
        PrivacyAccountant(mechanism="moments")
    with pytest.raises(ValueError):
        round_epsilon(1.0, 0.1, 10, delta=0.0)


def test_report_dict_round_trips_and_is_checked():
    report = DpReport(1.0, 1.0, 0.1, 18, round_epsilon(1.0, 0.1, 18))
    d = report.to_dict()
    assert set(d) == DP_PARAMS_KEYS
    assert DpReport.from_dict(d) == report
    with pytest.raises(ValueError, match="re-derived"):
        DpReport.from_dict({**d, "epsilon": d["epsilon"] / 2})  # understating the cost
    for bad in ({**d, "steps": True}, {**d, "sample_rate": 0.0}, {**d, "delta": math.nan},
                {**d, "accountant": "moments"}, {k: v for k, v in d.items() if k != "delta"},
                {**d, "extra": 1}, [d]):
        with pytest.raises(ValueError):
            DpReport.from_dict(bad)


def test_per_sample_gradients_match_one_backward_per_sample(split):
    train, _ = split
    model = build_model(SPEC, seed=3)
    params = {k: p.detach() for k, p in model.named_parameters()}
    x, y = train.x[:5], train.y[:5]
    per = per_sample_gradients(model, params, x, y)
    for i in range(5):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for k, p in model.named_parameters():
            assert torch.allclose(per[k][i], p.grad, atol=1e-6)
    summed = clip_and_sum(per, max_grad_norm=0.01)
    norms = [math.sqrt(sum(float(per[k][i].pow(2).sum()) for k in per)) for i in range(5)]
    assert all(n > 0.01 for n in norms)  # so every sample is clipped
    total = math.sqrt(sum(float(v.pow(2).sum()) for v in summed.values()))
    assert total <= 5 * 0.01 + 1e-6


def test_train_local_dp_is_deterministic_and_reports_its_parameters(split):
    train, _ = split
    data = subset(train, np.arange(100))
    base = initial_state(SPEC, 0)
    a, ra = train_local_dp(SPEC, base, data, 2, 0.1, 16, 5, 1.0, 1.0)
    b, rb = train_local_dp(SPEC, base, data, 2, 0.1, 16, 5, 1.0, 1.0)
    c, _ = train_local_dp(SPEC, base, data, 2, 0.1, 16, 6, 1.0, 1.0)
    assert all(torch.equal(a[k], b[k]) for k in a) and ra == rb
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert ra.steps == 2 * 7 and ra.sample_rate == pytest.approx(0.16)
    assert ra.epsilon == pytest.approx(round_epsilon(1.0, 0.16, 14))
    assert DpReport.from_dict(ra.to_dict()) == ra
    with pytest.raises(ValueError):
        train_local_dp(SPEC, base, data, 1, 0.1, 16, 0, -1.0, 1.0)


def test_one_clipped_step_moves_the_model_at_most_lr_times_clip(split):
    train, _ = split
    data = subset(train, np.arange(8))
    base = initial_state(SPEC, 0)
    # q = 1 and no noise: the step is lr * (mean of clipped gradients), norm <= lr * C.
    out, report = train_local_dp(SPEC, base, data, 1, 0.5, 8, 0, 0.0, 0.05)
    assert report.sample_rate == 1.0 and report.steps == 1 and math.isinf(report.epsilon)
    delta = state_sub(out, base)
    assert math.sqrt(sum(float(v.pow(2).sum()) for v in delta.values())) <= 0.5 * 0.05 + 1e-6


def test_noise_has_the_declared_variance_and_debiasing_removes_it(split):
    train, _ = split
    data = subset(train, np.arange(64))
    base = initial_state(SPEC, 0)
    lr, sigma = 0.1, 5.0
    outs = []
    for seed in (1, 2):
        out, report = train_local_dp(SPEC, base, data, 1, lr, 16, seed, sigma, 1.0)
        outs.append(out)
    var = update_noise_variance(report, lr, len(data))
    assert var == pytest.approx(4 * (lr * sigma * 1.0 / 16) ** 2)
    update = state_sub(outs[0], base)
    d = sum(v.numel() for v in update.values())
    measured = sum(float(v.pow(2).sum()) for v in update.values()) / d
    assert measured == pytest.approx(var, rel=0.1)  # noise dominates the small signal
    assert noise_consistent(base, outs[0], var)
    clean = train_local(SPEC, base, data, 1, lr, 16, 1)
    assert not noise_consistent(base, clean, var)  # declaring noise one did not add
    raw = noise_debiased_distance(outs[0], outs[1], 0.0, 0.0)
    assert noise_debiased_distance(outs[0], outs[1], var, var) < 0.2 * raw


def test_dp_training_still_learns(split):
    train, test = split
    base = initial_state(SPEC, 0)
    out, report = train_local_dp(SPEC, base, train, 2, 0.5, 64, 0, 1.0, 1.0)
    assert report.epsilon < 5
    assert evaluate(SPEC, out, test) > 0.6  # chance is 0.1
