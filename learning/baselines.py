"""Baseline aggregation rules (FedAvg, Krum, Multi-Krum, coordinate-wise median, trimmed mean).

Pure numeric functions in the style of Flower's `aggregate.py`: they take the clients' full
model vectors (flattened) with their sample counts and return the aggregated vector. Every sum
runs element-wise in client order, so a run reproduces its bytes exactly.
"""

from __future__ import annotations

import math

import torch

from learning.tensors import ModelState

BASELINES = ("fedavg", "krum", "multikrum", "median", "trimmed_mean")


def flatten_state(state: ModelState) -> torch.Tensor:
    """All tensors of a state, in sorted-key order, as one float64 vector."""
    return torch.cat([state[k].detach().reshape(-1).to(torch.float64) for k in sorted(state)])


def unflatten_state(vector: torch.Tensor, like: ModelState) -> ModelState:
    """Inverse of flatten_state, with the keys, shapes and dtypes of `like`."""
    need = sum(like[k].numel() for k in like)
    if vector.dim() != 1 or vector.numel() != need:
        raise ValueError(f"vector has {vector.numel()} elements, the state needs {need}")
    out: ModelState = {}
    offset = 0
    for k in sorted(like):
        n = like[k].numel()
        out[k] = vector[offset : offset + n].reshape(like[k].shape).to(like[k].dtype).clone()
        offset += n
    return out


def _check(vectors: list[torch.Tensor]) -> None:
    if not vectors:
        raise ValueError("nothing to aggregate")
    if any(v.shape != vectors[0].shape or v.dim() != 1 for v in vectors):
        raise ValueError("vectors must be 1-D and of one length")


def fedavg(vectors: list[torch.Tensor], samples: list[int]) -> torch.Tensor:
    """Sample-weighted mean: sum_i (n_i / n) * v_i, summed in list order."""
    _check(vectors)
    if len(samples) != len(vectors) or any(n < 0 for n in samples) or sum(samples) <= 0:
        raise ValueError("need one non-negative sample count per vector, not all zero")
    total = sum(samples)
    out = torch.zeros_like(vectors[0], dtype=torch.float64)
    for v, n in zip(vectors, samples):
        out = out + (n / total) * v.to(torch.float64)
    return out


def krum_scores(vectors: list[torch.Tensor], num_malicious: int) -> list[float]:
    """Krum score of each vector: the sum of squared distances to its n - f - 2 nearest others."""
    _check(vectors)
    n = len(vectors)
    closest = max(n - num_malicious - 2, 1)
    scores = []
    for i, vi in enumerate(vectors):
        d = sorted(float(torch.sum((vi - vj) ** 2)) for j, vj in enumerate(vectors) if j != i)
        scores.append(math.fsum(d[:closest]))
    return scores


def krum(
    vectors: list[torch.Tensor], samples: list[int], num_malicious: int, to_keep: int = 0
) -> torch.Tensor:
    """Krum (to_keep = 0: the best-scored vector) or Multi-Krum (FedAvg of the to_keep best)."""
    scores = krum_scores(vectors, num_malicious)
    order = sorted(range(len(vectors)), key=lambda i: (scores[i], i))
    if to_keep <= 0:
        return vectors[order[0]].to(torch.float64).clone()
    keep = sorted(order[:to_keep])
    return fedavg([vectors[i] for i in keep], [samples[i] for i in keep])


def coordinate_median(vectors: list[torch.Tensor]) -> torch.Tensor:
    """Coordinate-wise median (the mean of the two middle values for an even count)."""
    _check(vectors)
    ordered = torch.sort(torch.stack([v.to(torch.float64) for v in vectors]), dim=0).values
    n = len(vectors)
    if n % 2:
        return ordered[n // 2].clone()
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def trimmed_mean(vectors: list[torch.Tensor], proportion: float = 0.2) -> torch.Tensor:
    """Coordinate-wise mean after cutting floor(proportion * n) values from each end."""
    _check(vectors)
    n = len(vectors)
    cut = int(proportion * n)
    if not 0 <= proportion < 0.5 or 2 * cut >= n:
        raise ValueError(f"proportion {proportion} cuts every one of {n} values")
    ordered = torch.sort(torch.stack([v.to(torch.float64) for v in vectors]), dim=0).values
    out = torch.zeros_like(ordered[0])
    for row in ordered[cut : n - cut]:
        out = out + row
    return out / (n - 2 * cut)


def aggregate_baseline(
    rule: str, updates: dict[str, ModelState], samples: dict[str, int], num_malicious: int
) -> ModelState:
    """Apply a baseline rule to full model states (ids in sorted order); returns the new model.

    Krum and Multi-Krum are given the true number of attackers (their best case), Multi-Krum
    keeps n - f, and the trimmed mean cuts 20% per end (Flower's defaults)."""
    ids = sorted(updates)
    if not ids:
        raise ValueError("nothing to aggregate")
    vectors = [flatten_state(updates[t]) for t in ids]
    counts = [samples[t] for t in ids]
    if rule == "fedavg":
        out = fedavg(vectors, counts)
    elif rule == "krum":
        out = krum(vectors, counts, num_malicious)
    elif rule == "multikrum":
        out = krum(vectors, counts, num_malicious, to_keep=max(len(ids) - num_malicious, 1))
    elif rule == "median":
        out = coordinate_median(vectors)
    elif rule == "trimmed_mean":
        out = trimmed_mean(vectors, 0.2)
    else:
        raise ValueError(f"unknown baseline {rule!r}; expected one of {BASELINES}")
    return unflatten_state(out, updates[ids[0]])
