"""Scoring DP updates: the noise a trainer's declared DP parameters imply, on plain tensors.

DP noise is isotropic and its squared norm concentrates (relative spread sqrt(2 / d) for d
parameters), so a committee that knows a trainer's declared DP parameters knows how much of
a squared distance is noise and can take it out; and it can refuse an update too small to
hold the noise it declares, so that declaring noise one did not add buys nothing. Rules the
chain depends on (learning.scoring, chain.round_rules): no training, no data loading here
(DP-SGD itself is learning.privacy's).
"""

from __future__ import annotations

import math

import torch

from learning.tensors import ModelState


def _sq_norm(state: ModelState) -> float:
    return math.fsum(float(state[k].to(torch.float64).pow(2).sum()) for k in sorted(state))


def _numel(state: ModelState) -> int:
    return sum(int(state[k].numel()) for k in state)


def noise_debiased_sq_distance(a: ModelState, b: ModelState, var_a: float,
                               var_b: float) -> float:
    """|a - b|^2 - d (var_a + var_b): an unbiased estimate of the squared distance between the
    noise-free states (a's and b's noise independent), negative when the noise drew small."""
    diff = {k: a[k].to(torch.float64) - b[k].to(torch.float64) for k in sorted(a)}
    return _sq_norm(diff) - _numel(a) * (var_a + var_b)


def noise_debiased_distance(a: ModelState, b: ModelState, var_a: float, var_b: float) -> float:
    """L2 distance of two trained states with their DP noise's expected share taken out:
    sqrt(max(0, |a - b|^2 - d (var_a + var_b)))."""
    return math.sqrt(max(0.0, noise_debiased_sq_distance(a, b, var_a, var_b)))


def noise_consistent(base: ModelState, trained: ModelState, var: float,
                     slack: float = 0.1) -> bool:
    """Whether the update is large enough to hold the noise declared (|u|^2 >= (1 - slack)
    d var); slack 0.1 is five standard deviations of the noise norm for d ~ 5000."""
    update = {k: trained[k].to(torch.float64) - base[k].to(torch.float64) for k in sorted(base)}
    return _sq_norm(update) >= (1.0 - slack) * _numel(base) * var
