"""Gradient inversion: what an honest-but-curious committee member learns from an update.

A committee member receives every trainer's update (trained state minus the global state it
already holds) and knows the model, the base state, the training hyper-parameters (genesis)
and the trainer's sample count (the update's weight). For one SGD step on one batch the update
is -lr * gradient of the batch's mean loss, and the gradient reveals the batch:

1. labels (iDLG, Zhao et al. 2020, extended to batches): the last layer's bias gradient is
   mean_i(softmax_i - onehot_i); a class with a negative entry is certainly present, and the
   entries' sizes estimate how often (`infer_labels`);
2. inputs (DLG, Zhu et al. 2019, with the cosine loss of Geiping et al. 2020): optimise dummy
   inputs so that their gradient at the base state points the way the update does
   (`invert_gradient`). The cosine loss is blind to scale, so the unknown lr, step count and
   DP clipping factor do not matter. An attacker who knows the trainer clipped per sample (the
   update's DP parameters say so) clips its dummy gradients too.

With several local steps the update is a sum of gradients at moving states over different
batches; the attack still treats it as one gradient at the base state of all the trainer's
samples, which is why it degrades with steps and batch size (bench/privacy.py measures how).
`reconstruction_quality` scores a reconstruction against the real samples: PSNR and SSIM of
each real image against its matched reconstruction, and the label recovery rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch.func import functional_call, grad, vmap

from learning.model import ModelSpec, build_model, load_state
from learning.tensors import ModelState, state_sub

#: The digits are 8x8 grey images with pixels in [0, 1] (learning.data scales them).
IMAGE_SIDE = 8


@dataclass(frozen=True)
class InversionConfig:
    """How hard the attacker optimises: Adam on the dummy inputs, best of `restarts`."""

    iterations: int = 300
    step_size: float = 0.1
    #: weight of the total-variation prior (digits are smooth strokes)
    tv_weight: float = 1e-4
    restarts: int = 2


@dataclass(frozen=True, eq=False)
class Reconstruction:
    """The attacker's guess of a trainer's samples: inputs [n, 64] and labels [n]."""

    x: torch.Tensor
    y: torch.Tensor
    #: final gradient-matching loss (1 - cosine), what the attacker sees of its own success
    match_loss: float


@dataclass(frozen=True)
class ReconstructionQuality:
    """Mean PSNR (dB) and SSIM of each real sample against its matched reconstruction, and the
    share of the real labels (as a multiset) that the reconstruction recovered."""

    psnr: float
    ssim: float
    label_rate: float


def _last_bias_key(state: ModelState) -> str:
    # nn.Sequential names layers by index: the output layer has the largest index.
    biases = [k for k in state if k.endswith(".bias")]
    if not biases:
        raise ValueError("model has no bias to read labels from")
    return max(biases, key=lambda k: int(k.split(".")[0]))


def update_direction(base: ModelState, trained: ModelState) -> ModelState:
    """base - trained: the (scaled) sum of the gradients the trainer descended."""
    return state_sub(base, trained)


def infer_labels(
    direction: ModelState, n_samples: int, scale: float | None = None,
    expected_softmax: torch.Tensor | None = None,
) -> torch.Tensor:
    """Labels of the n_samples the update came from, sorted, from the output bias gradient.

    The bias gradient of the mean loss is g_c = p_c - n_c / n, with p_c the batch's mean
    softmax for class c, estimated by `expected_softmax` (the base model's mean softmax on data
    the attacker holds; uniform if None). Labels go greedily to the class with the lowest
    g_c - p_c + (labels given so far) / n: iDLG's argmin for one sample, and LLG's count
    estimate (Wainakh et al. 2022) for a batch. `scale` turns the update direction into g
    (lr * steps for plain SGD); None estimates it from the classes absent from the batch
    (positive entries, where g_c = p_c), which also absorbs DP clipping and normalisation."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    g = direction[_last_bias_key(direction)].to(torch.float64)
    p = (torch.full_like(g, 1.0 / len(g)) if expected_softmax is None
         else expected_softmax.to(torch.float64))
    if scale is None:
        absent = g > 0
        scale = float(g[absent].sum() / p[absent].sum()) if bool(absent.any()) else 1.0
    g = g / scale
    counts = torch.zeros_like(g)
    for _ in range(n_samples):
        c = int(torch.argmin(g - p + counts / n_samples))
        counts[c] += 1
    return torch.repeat_interleave(torch.arange(len(g)), counts.to(torch.int64))


def _dummy_direction(
    model: torch.nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
    max_grad_norm: float | None,
) -> list[torch.Tensor]:
    """The gradient the trainer would have sent for samples (x, y), differentiable in x: the
    mean of the per-sample gradients, each clipped to max_grad_norm first if given."""

    def loss_one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, p, (xi.unsqueeze(0),))
        return torch.nn.functional.cross_entropy(out, yi.unsqueeze(0))

    per = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
    if max_grad_norm is None:
        return [per[k].mean(dim=0) for k in params]
    sq = sum(per[k].flatten(1).pow(2).sum(dim=1) for k in params)
    scale = (max_grad_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    return [torch.einsum("n,n...->...", scale, per[k]) / len(x) for k in params]


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    img = x.view(-1, IMAGE_SIDE, IMAGE_SIDE)
    vertical = (img[:, 1:, :] - img[:, :-1, :]).abs().mean()
    return vertical + (img[:, :, 1:] - img[:, :, :-1]).abs().mean()


def invert_gradient(
    spec: ModelSpec,
    base: ModelState,
    direction: ModelState,
    labels: torch.Tensor,
    seed: int,
    config: InversionConfig = InversionConfig(),
    max_grad_norm: float | None = None,
) -> Reconstruction:
    """Dummy inputs (one per label) whose gradient at base best matches `direction` in cosine."""
    model = build_model(spec, seed=0)
    load_state(model, base)
    params = {k: p.detach() for k, p in model.named_parameters()}
    keys = list(params)
    target = [direction[k].to(torch.float32) for k in keys]
    target_norm = torch.sqrt(sum(t.pow(2).sum() for t in target))
    gen = torch.Generator().manual_seed(seed)
    best: Reconstruction | None = None
    for _ in range(max(1, config.restarts)):
        x = torch.rand(len(labels), spec.layers[0], generator=gen).requires_grad_(True)
        opt = torch.optim.Adam([x], lr=config.step_size)
        match = math.inf
        for _ in range(config.iterations):
            opt.zero_grad(set_to_none=True)
            dummy = _dummy_direction(model, params, x, labels, max_grad_norm)
            dot = sum((d * t).sum() for d, t in zip(dummy, target))
            norm = torch.sqrt(sum(d.pow(2).sum() for d in dummy)) + 1e-12
            cos_loss = 1.0 - dot / (norm * target_norm + 1e-12)
            loss = cos_loss + config.tv_weight * _total_variation(x)
            loss.backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(0.0, 1.0)  # the attacker knows pixels lie in [0, 1]
            match = float(cos_loss.detach())
        if best is None or match < best.match_loss:
            best = Reconstruction(x=x.detach().clone(), y=labels.clone(), match_loss=match)
    assert best is not None
    return best


def expected_softmax(spec: ModelSpec, state: ModelState, x: torch.Tensor) -> torch.Tensor:
    """Mean softmax of the model at state over inputs x (the attacker's own data)."""
    model = build_model(spec, seed=0)
    load_state(model, state)
    with torch.no_grad():
        return torch.softmax(model(x), dim=1).mean(dim=0)


def attack_update(
    spec: ModelSpec,
    base: ModelState,
    trained: ModelState,
    n_samples: int,
    seed: int,
    config: InversionConfig = InversionConfig(),
    max_grad_norm: float | None = None,
    own_x: torch.Tensor | None = None,
) -> Reconstruction:
    """The curious member's whole attack on one received update: labels, then inputs.

    own_x: the member's own training inputs, to estimate the softmax the labels hide behind."""
    direction = update_direction(base, trained)
    prior = None if own_x is None else expected_softmax(spec, base, own_x)
    labels = infer_labels(direction, n_samples, expected_softmax=prior)
    return invert_gradient(spec, base, direction, labels, seed, config, max_grad_norm)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB) of two images with pixels in [0, 1]."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def ssim(a: np.ndarray, b: np.ndarray, window: int = 3) -> float:
    """Structural similarity (Wang et al. 2004) of two 8x8 images in [0, 1], averaged over
    every `window` x `window` patch (uniform weights: 8x8 is too small for the usual 11x11
    Gaussian window)."""
    a = np.asarray(a, np.float64).reshape(IMAGE_SIDE, IMAGE_SIDE)
    b = np.asarray(b, np.float64).reshape(IMAGE_SIDE, IMAGE_SIDE)
    c1, c2 = 0.01**2, 0.03**2
    va = np.lib.stride_tricks.sliding_window_view(a, (window, window)).reshape(-1, window**2)
    vb = np.lib.stride_tricks.sliding_window_view(b, (window, window)).reshape(-1, window**2)
    ma, mb = va.mean(1), vb.mean(1)
    sa, sb = va.var(1, ddof=1), vb.var(1, ddof=1)
    sab = ((va - ma[:, None]) * (vb - mb[:, None])).sum(1) / (window**2 - 1)
    s = ((2 * ma * mb + c1) * (2 * sab + c2)) / ((ma**2 + mb**2 + c1) * (sa + sb + c2))
    return float(s.mean())


def label_rate(guessed: torch.Tensor, real: torch.Tensor) -> float:
    """Share of the real labels (as a multiset) present in the guessed labels."""
    g = np.bincount(np.asarray(guessed), minlength=256)
    r = np.bincount(np.asarray(real), minlength=256)
    return float(np.minimum(g, r).sum()) / max(len(real), 1)


def reconstruction_quality(
    guessed_x: torch.Tensor, guessed_y: torch.Tensor, real_x: torch.Tensor, real_y: torch.Tensor
) -> ReconstructionQuality:
    """Match reconstructions to real samples one to one (least total squared error, since the
    attacker's order is arbitrary), then average PSNR and SSIM over the real samples."""
    gx, rx = guessed_x.detach().numpy(), real_x.detach().numpy()
    cost = ((rx[:, None, :] - gx[None, :, :]) ** 2).mean(axis=2)
    rows, cols = linear_sum_assignment(cost)
    # PSNR is capped at 60 dB (an exact copy) so one perfect sample cannot make the mean inf.
    p = [min(psnr(rx[r], gx[c]), 60.0) for r, c in zip(rows, cols)]
    s = [ssim(rx[r], gx[c]) for r, c in zip(rows, cols)]
    return ReconstructionQuality(psnr=float(np.mean(p)), ssim=float(np.mean(s)),
                                 label_rate=label_rate(guessed_y, real_y))
