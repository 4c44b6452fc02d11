"""Gradient inversion by a curious committee member: it must work without DP (so the
measurement can fail) and fail under strong DP noise."""

import numpy as np
import pytest
import torch

from learning.data import load_digits_split, subset
from learning.inversion import (
    InversionConfig,
    attack_update,
    expected_softmax,
    infer_labels,
    label_rate,
    psnr,
    reconstruction_quality,
    ssim,
    update_direction,
)
from learning.model import ModelSpec, initial_state
from learning.privacy import train_local_dp
from learning.training import train_local

SPEC = ModelSpec()
FAST = InversionConfig(iterations=300, restarts=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The inversion's many tiny second-order steps crawl when threads fight over shared cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def train():
    return load_digits_split(seed=0)[0]


@pytest.fixture(scope="module")
def own_x():
    """The curious member's own data (held out from the trainers' samples)."""
    return load_digits_split(seed=0)[1].x


@pytest.fixture(scope="module")
def base():
    return initial_state(SPEC, 0)


def _batch(train, n, seed):
    rng = np.random.default_rng(seed)
    return subset(train, rng.choice(len(train), size=n, replace=False))


def _mean_image_quality(train, d):
    """What an attacker gets without any update: the mean training image for every sample."""
    mean = train.x.mean(0, keepdim=True).repeat(len(d), 1)
    return reconstruction_quality(mean, d.y, d.x, d.y)


def test_quality_metrics_on_known_pairs(train):
    d = _batch(train, 4, 0)
    same = reconstruction_quality(d.x.flip(0), d.y.flip(0), d.x, d.y)  # order must not matter
    assert same.psnr == 60.0 and same.ssim == pytest.approx(1.0) and same.label_rate == 1.0
    assert psnr(np.zeros(64), np.ones(64)) == pytest.approx(0.0)
    assert ssim(d.x[0].numpy(), d.x[0].numpy()) == pytest.approx(1.0)
    assert ssim(d.x[0].numpy(), 1 - d.x[0].numpy()) < 0
    assert label_rate(torch.tensor([1, 1, 2]), torch.tensor([1, 2, 2])) == pytest.approx(2 / 3)


@pytest.mark.parametrize("n", [1, 4])
def test_labels_come_out_of_the_output_bias_gradient(train, base, own_x, n):
    for seed in range(5):
        d = _batch(train, n, seed)
        trained = train_local(SPEC, base, d, 1, 0.1, n, 0)
        prior = expected_softmax(SPEC, base, own_x)
        labels = infer_labels(update_direction(base, trained), n, scale=0.1,
                              expected_softmax=prior)
        assert label_rate(labels, d.y) == 1.0


@pytest.mark.parametrize("n", [1, 4])
def test_attack_recovers_a_single_small_batch_without_dp(train, base, own_x, n):
    d = _batch(train, n, 7)
    trained = train_local(SPEC, base, d, 1, 0.1, n, 0)  # one step: the update is lr * gradient
    rec = attack_update(SPEC, base, trained, n, seed=0, config=FAST, own_x=own_x)
    q = reconstruction_quality(rec.x, rec.y, d.x, d.y)
    assert q.label_rate == 1.0
    # One restart can stall short of an exact copy for a batch; even then every digit is
    # legible (see docs/results/privacy_reconstructions.png), far above guessing.
    assert q.psnr > 20.0 and q.ssim > 0.9
    assert q.psnr > _mean_image_quality(train, d).psnr + 8
    assert rec.match_loss < 0.01


def test_attack_fails_under_strong_dp_noise(train, base, own_x):
    d = _batch(train, 4, 7)
    # The same single step, as DP-SGD with sigma 1 (epsilon ~4.7 for this one step).
    trained, report = train_local_dp(SPEC, base, d, 1, 0.1, 4, 0, noise_multiplier=1.0,
                                     max_grad_norm=1.0)
    assert report.sample_rate == 1.0 and report.steps == 1
    # The attacker knows the DP parameters (the update carries them) and clips as the trainer.
    rec = attack_update(SPEC, base, trained, 4, seed=0, config=FAST,
                        max_grad_norm=report.max_grad_norm, own_x=own_x)
    q = reconstruction_quality(rec.x, rec.y, d.x, d.y)
    prior = _mean_image_quality(train, d)
    assert q.psnr < prior.psnr and q.ssim < 0.5  # no better than not attacking at all
    assert rec.match_loss > 0.5  # and the attacker can tell it failed


def test_clipping_alone_does_not_protect(train, base, own_x):
    d = _batch(train, 4, 7)
    trained, _ = train_local_dp(SPEC, base, d, 1, 0.1, 4, 0, noise_multiplier=0.0,
                                max_grad_norm=0.1)
    rec = attack_update(SPEC, base, trained, 4, seed=0, config=FAST, max_grad_norm=0.1,
                        own_x=own_x)
    assert reconstruction_quality(rec.x, rec.y, d.x, d.y).psnr > 25.0


@pytest.mark.slow
def test_attack_degrades_with_more_local_steps(train, base, own_x):
    d = _batch(train, 8, 3)
    one = train_local(SPEC, base, d, 1, 0.1, 8, 0)
    many = train_local(SPEC, base, d, 8, 0.1, 2, 0)  # 32 steps over batches of 2
    quality = {}
    for name, trained, steps in (("one", one, 1), ("many", many, 32)):
        rec = attack_update(SPEC, base, trained, 8, seed=0, own_x=own_x)
        quality[name] = reconstruction_quality(rec.x, rec.y, d.x, d.y)
    assert quality["many"].psnr < quality["one"].psnr - 5
