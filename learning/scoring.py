"""CMFL scoring: distance of each trainer's model to a committee member's own model."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping

import torch

from learning.dp_noise import noise_debiased_distance
from learning.tensors import ModelState

RULES = ("sum", "median")


def _clean(x: float) -> float:
    # A poisoned model (NaN/inf weights) or a lying member's NaN must rank as worst, never
    # crash sorting or silently win: map NaN to +inf.
    return math.inf if math.isnan(x) else x


def model_distance(a: ModelState, b: ModelState) -> float:
    """Sum over layers (sorted keys) of the float64 L2 norm of a[k] - b[k]."""
    if set(a) != set(b):
        raise ValueError(f"state keys differ: {sorted(set(a) ^ set(b))}")
    total = 0.0
    for k in sorted(a):
        if a[k].shape != b[k].shape:
            raise ValueError(f"tensor {k!r}: shape {tuple(a[k].shape)} != {tuple(b[k].shape)}")
        diff = a[k].to(torch.float64) - b[k].to(torch.float64)
        total += float(torch.linalg.vector_norm(diff).item())
    return _clean(total)


def score_updates(
    reference: ModelState, updates: dict[str, ModelState],
    noise_variances: Mapping[str, float] | None = None, reference_variance: float = 0.0,
) -> dict[str, float]:
    """Distance of each trainer's updated model to the committee member's own updated model.

    With `noise_variances` (per trainer, the per-coordinate variance of the DP noise its
    update declares; `reference_variance` the member's own), the distance is noise-debiased
    (learning.dp_noise.noise_debiased_distance): plain distances rank a peer that skips its DP
    noise closest of all (docs/privacy.md), debiased ones do not."""
    if noise_variances is None:
        return {tid: model_distance(updates[tid], reference) for tid in sorted(updates)}
    return {tid: _clean(noise_debiased_distance(updates[tid], reference, noise_variances[tid],
                                                reference_variance))
            for tid in sorted(updates)}


def combine_scores(vectors: list[dict[str, float]], rule: str = "sum") -> dict[str, float]:
    """Combine committee members' score vectors per trainer ("sum" as in CMFL, or "median")."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; expected one of {RULES}")
    if not vectors:
        return {}
    common = set(vectors[0]).intersection(*vectors[1:])
    out: dict[str, float] = {}
    for tid in sorted(common):
        vals = [_clean(float(v[tid])) for v in vectors]
        if rule == "sum":
            # fsum is exactly rounded, so the result does not depend on the members' order.
            out[tid] = math.fsum(vals)
        else:
            out[tid] = statistics.median(sorted(vals))
    return out
