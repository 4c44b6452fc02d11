"""Bit-reproducible weighted (FedAvg) aggregation."""

from __future__ import annotations

import torch

from learning.tensors import ModelState


def aggregate_weighted(
    base: ModelState, updated: dict[str, ModelState], samples: dict[str, int]
) -> ModelState:
    """base + sum_i w_i * (updated_i - base), w_i = samples_i / total, in sorted-id order."""
    new = {k: base[k].detach().to(torch.float32).clone() for k in sorted(base)}
    if not updated:
        return new
    ids = sorted(updated)
    for tid in ids:
        n = samples.get(tid)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"samples[{tid!r}] must be a non-negative int, got {n!r}")
        if set(updated[tid]) != set(new):
            raise ValueError(f"update from {tid!r} has keys {sorted(set(updated[tid]) ^ set(new))}")
        for k in new:
            if updated[tid][k].shape != new[k].shape:
                raise ValueError(f"update from {tid!r}: tensor {k!r} has wrong shape")
    total = sum(samples[tid] for tid in ids)
    if total <= 0:
        raise ValueError("total sample count must be > 0")
    for tid in ids:
        # Weight rounded once to float32; then only element-wise float32 mul/add in a fixed
        # order (no reductions, no fused ops), so every peer gets identical bytes.
        w = torch.tensor(samples[tid] / total, dtype=torch.float32)
        for k in new:
            delta = updated[tid][k].to(torch.float32) - base[k].to(torch.float32)
            new[k] = new[k] + w * delta
    return new
