"""Differentially private local training (DP-SGD) and the accounting of the privacy it spends.

`train_local_dp` is `learning.training.train_local` with the two changes DP-SGD (Abadi et al.,
CCS 2016) makes: every sample's gradient is clipped to L2 norm `max_grad_norm` before the batch
sums them, and Gaussian noise of std `noise_multiplier * max_grad_norm` is added to the sum.
Per-sample gradients come from torch.func (vmap over grad), so the model stays a plain
`nn.Sequential` and no hooks are installed.

Batches are drawn by Poisson sampling (each sample joins each step independently with
probability `sample_rate = batch_size / n`), not by shuffling: the RDP and PRV analyses of the
subsampled Gaussian mechanism assume it, and with shuffled fixed-size batches the epsilon they
report would not be a valid bound. The noisy sum is divided by the expected batch size, as
Opacus does, so the step size does not leak the (private) realised batch size.

The accounting itself is Opacus' (`opacus.accountants`), in learning.dp_accounting (torch-free,
so the chain's block format can use it; re-exported here): `round_epsilon` for one round,
`PrivacyAccountant` to compose a peer's rounds. `DpReport.to_dict()` is what a signed update
carries so the block can record each trainer's DP parameters, and anyone can re-derive the
epsilon from them (`DpReport.from_dict(..., check=True)`).
"""

from __future__ import annotations

import math

import torch
from torch.func import functional_call, grad, vmap

from learning.data import Dataset
from learning.dp_accounting import (  # noqa: F401  (re-exported: the DP API lives here too)
    DEFAULT_DELTA,
    DP_GENESIS_KEYS,
    DP_PARAMS_KEYS,
    EPSILON_RTOL,
    MECHANISMS,
    DpPolicy,
    DpReport,
    PrivacyAccountant,
    round_epsilon,
    update_noise_variance,
)
from learning.dp_noise import (  # noqa: F401  (re-exported: scoring DP updates)
    noise_consistent,
    noise_debiased_distance,
    noise_debiased_sq_distance,
)
from learning.model import ModelSpec, build_model, load_state, model_state
from learning.tensors import ModelState

def _model_from(spec: ModelSpec, state: ModelState) -> torch.nn.Module:
    model = build_model(spec, seed=0)  # every parameter is overwritten by state
    load_state(model, state)
    return model


def check_dp_model(model: torch.nn.Module, what: str) -> None:
    """ValueError (one line) if DP-SGD cannot train `model` (`what` names it, e.g. "task
    'cnn'"). Batch norm cannot: in training it normalises each sample by the others in its
    batch (a per-sample gradient is then not one sample's) and its running mean and variance
    are raw statistics of the private data, published in every update with no noise, outside
    what the accountant counts. (torch.func also refuses its in-place running-statistics
    update inside per-sample gradients.)"""
    norms = [name or type(model).__name__ for name, m in model.named_modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if norms:
        raise ValueError(
            f"training.dp: DP-SGD cannot train {what}: its model has batch norm (module "
            f"{', '.join(norms)}), whose running statistics would publish the private data "
            "unnoised; use a norm without them (GroupNorm, LayerNorm) or a genesis without dp")


def per_sample_gradients(
    model: torch.nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Cross-entropy gradient of every sample separately: {name: [n, *param.shape]}."""

    def loss_one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, p, (xi.unsqueeze(0),))
        return torch.nn.functional.cross_entropy(out, yi.unsqueeze(0))

    return vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)


def clip_and_sum(
    grads: dict[str, torch.Tensor], max_grad_norm: float
) -> dict[str, torch.Tensor]:
    """Sum over samples of each sample's gradient scaled to L2 norm <= max_grad_norm (the
    norm is over all parameters together, as DP-SGD's sensitivity bound requires)."""
    names = sorted(grads)
    sq = sum(grads[k].flatten(1).pow(2).sum(dim=1) for k in names)
    # The 1e-6 keeps a zero gradient from dividing by zero; Opacus uses the same guard.
    scale = (max_grad_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    return {k: torch.einsum("n,n...->...", scale, grads[k]) for k in names}


def train_local_dp(
    spec: ModelSpec,
    global_state: ModelState,
    data: Dataset,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    noise_multiplier: float,
    max_grad_norm: float,
    delta: float = DEFAULT_DELTA,
    mechanism: str = "rdp",
) -> tuple[ModelState, DpReport]:
    """DP-SGD from global_state: per-sample clipping, Gaussian noise, Poisson-sampled batches.

    Same hyper-parameters as `train_local`, and as deterministic in seed; an epoch is
    ceil(n / batch_size) steps at sample rate batch_size / n. Returns the trained state and
    the report of this run's DP parameters and epsilon at delta."""
    if epochs < 0 or batch_size < 1 or not lr > 0:
        raise ValueError(f"bad hyper-parameters: epochs={epochs} lr={lr} batch_size={batch_size}")
    if not noise_multiplier >= 0 or not max_grad_norm > 0:
        raise ValueError(f"bad DP parameters: sigma={noise_multiplier} C={max_grad_norm}")
    n = len(data)
    if n == 0:
        raise ValueError("cannot train on an empty dataset")
    model = _model_from(spec, global_state)
    model.train()
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    sample_rate = min(1.0, batch_size / n)
    expected_batch = sample_rate * n
    steps = epochs * math.ceil(n / batch_size)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        # Draw membership and noise from one generator in a fixed order: deterministic in seed.
        batch = torch.nonzero(torch.rand(n, generator=gen) < sample_rate).flatten()
        if len(batch):
            grads = per_sample_gradients(model, params, data.x[batch], data.y[batch])
            summed = clip_and_sum(grads, max_grad_norm)
        else:  # an empty Poisson batch still takes a (pure-noise) step, as the analysis assumes
            summed = {k: torch.zeros_like(v) for k, v in params.items()}
        for k in sorted(params):
            noise = torch.normal(0.0, noise_multiplier * max_grad_norm, size=params[k].shape,
                                 generator=gen) if noise_multiplier > 0 else 0.0
            params[k] = params[k] - lr * (summed[k] + noise) / expected_batch
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(params[k])
    report = DpReport(
        noise_multiplier=float(noise_multiplier), max_grad_norm=float(max_grad_norm),
        sample_rate=sample_rate, steps=steps,
        epsilon=round_epsilon(noise_multiplier, sample_rate, steps, delta, mechanism),
        delta=delta, accountant=mechanism,
    )
    return model_state(model), report
