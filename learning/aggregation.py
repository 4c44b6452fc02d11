"""Bit-reproducible weighted (FedAvg) aggregation."""

from __future__ import annotations

import math
import statistics

import numpy as np
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


def cap_samples(samples: dict[str, int]) -> dict[str, int]:
    """Declared sample counts capped at their lower median: a peer that declares a huge count
    weighs no more than a typical one (the counts are only declared, never checked), while
    honest peers with fewer samples keep their smaller weight."""
    if not samples:
        return {}
    cap = statistics.median_low(sorted(samples.values()))
    return {t: min(n, cap) for t, n in sorted(samples.items())}


#: Tensor names of batch-norm statistics: peers with similar data move them alike, so they say
#: nothing about whether two updates were trained apart (and num_batches_tracked is a counter).
STATISTIC_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def _flat_delta(base: ModelState, state: ModelState, learned_only: bool = False) -> np.ndarray:
    """The float64 flat delta state - base in sorted-key order; `learned_only` leaves out the
    batch-norm statistics (the geometric tests judge the learned parameters)."""
    keys = sorted(base)
    if learned_only:
        keys = [k for k in keys if not k.endswith(STATISTIC_SUFFIXES)] or keys
    return np.concatenate([(state[k].to(torch.float64) - base[k].to(torch.float64))
                           .reshape(-1).numpy() for k in keys])


def _exact_dot(a: np.ndarray, b: np.ndarray) -> float:
    # math.fsum is exactly rounded: the same bytes on every peer whatever the BLAS.
    return math.fsum((a * b).tolist())


def find_collinear(base: ModelState, updates: dict[str, ModelState],
                   max_cosine: float) -> tuple[str, ...]:
    """Trainers whose update (delta over base) has cosine similarity above `max_cosine` with
    another trainer's: peers training on their own data never send (near-)parallel updates,
    colluders sending one crafted direction at different lengths (staggered copies), copies
    of one honest peer (mimicry) and sybils do. Both members of such a pair are listed."""
    return tuple(sorted({t for pair in _collinear_pairs(base, updates, max_cosine)
                         for t in pair}))


def _collinear_pairs(base: ModelState, updates: dict[str, ModelState],
                     max_cosine: float) -> list[tuple[str, str]]:
    """The pairs (a < b by id) whose deltas' cosine similarity exceeds `max_cosine`."""
    if not max_cosine < 1.0 or len(updates) < 2:
        return []
    ids = sorted(updates)
    deltas = {t: _flat_delta(base, updates[t], learned_only=True) for t in ids}
    norms = {t: math.sqrt(_exact_dot(d, d)) for t, d in deltas.items()}
    return [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]
            if norms[a] != 0.0 and norms[b] != 0.0
            and _exact_dot(deltas[a], deltas[b]) > max_cosine * norms[a] * norms[b]]


def coordinate_median(deltas: list[np.ndarray]) -> np.ndarray:
    """Coordinate-wise median of flat float64 deltas (an order statistic: exact, order-free;
    with an even count the mean of the two middle values, one float64 add and halving)."""
    return np.median(np.stack(deltas), axis=0)


def _quantile(values: list[float], q: float) -> float:
    """The ceil(q n)-th smallest value (an order statistic: exact), q = 0.5 the lower median."""
    ordered = sorted(values)
    return ordered[min(max(math.ceil(q * len(ordered)) - 1, 0), len(ordered) - 1)]


def clip_factors(deltas: dict[str, np.ndarray], centre: np.ndarray,
                 quantile: float = 0.5) -> tuple[dict[str, float], float]:
    """Per trainer, min(1, radius / |delta - centre|) (exact norms via fsum), the radius the
    `quantile` of those distances, so at most 1 - quantile of the updates are shortened."""
    dist = {t: math.sqrt(_exact_dot(d - centre, d - centre)) for t, d in sorted(deltas.items())}
    radius = _quantile(list(dist.values()), quantile) if dist else 0.0
    return ({t: 1.0 if x <= radius or x == 0.0 else radius / x for t, x in dist.items()},
            radius)


def aggregate_clipped(base: ModelState, updated: dict[str, ModelState],
                      samples: dict[str, int], iterations: int = 1,
                      quantile: float = 0.5) -> ModelState:
    """Centered clipping (Karimireddy, He & Jaggi, ICML 2021) around the coordinate-wise median:
    every update's deviation from the centre is shortened to at most the median deviation, then
    the sample-weighted mean of the clipped updates is taken. An update's pull on the aggregate
    is bounded by its weight times the radius, whatever it sends; honest updates inside the
    radius pass unchanged. Float64 element-wise arithmetic in sorted-id order, one float32
    rounding at the end: every peer derives identical bytes."""
    new = {k: base[k].detach().to(torch.float32).clone() for k in sorted(base)}
    if not updated:
        return new
    ids = sorted(updated)
    deltas = {t: _flat_delta(base, updated[t]) for t in ids}
    centre = coordinate_median([deltas[t] for t in ids])
    total = sum(samples[t] for t in ids)
    if total <= 0:
        raise ValueError("total sample count must be > 0")
    for _ in range(max(iterations, 1)):
        factors, _radius = clip_factors(deltas, centre, quantile)
        step = np.zeros_like(centre)
        for t in ids:
            step = step + (samples[t] / total) * (factors[t] * (deltas[t] - centre))
        centre = centre + step
    return _state_from_flat(base, centre)


def _state_from_flat(base: ModelState, flat: np.ndarray) -> ModelState:
    """base + a float64 flat delta in sorted-key order (_flat_delta's layout), one float32
    rounding per entry."""
    out: ModelState = {}
    offset = 0
    for k in sorted(base):
        n = base[k].numel()
        part = torch.from_numpy(flat[offset:offset + n].copy()).reshape(base[k].shape)
        out[k] = (base[k].to(torch.float64) + part).to(torch.float32)
        offset += n
    return out


def clipped_states(base: ModelState, updated: dict[str, ModelState],
                   quantile: float = 0.5) -> dict[str, ModelState]:
    """Every update with its deviation from the coordinate-wise median of all of them
    shortened to at most the `quantile` deviation (aggregate_clipped's step, per update): any
    mean of these lies within that radius of the median, whatever the far ones sent."""
    if not updated:
        return {}
    ids = sorted(updated)
    deltas = {t: _flat_delta(base, updated[t]) for t in ids}
    centre = coordinate_median([deltas[t] for t in ids])
    factors, _radius = clip_factors(deltas, centre, quantile)
    return {t: _state_from_flat(base, centre + factors[t] * (deltas[t] - centre)) for t in ids}


def find_misaligned(base: ModelState, updates: dict[str, ModelState]) -> tuple[str, ...]:
    """Trainers whose update (delta over base) has a non-positive inner product with the
    coordinate-wise median of all the updates: it pulls the model back along the direction
    most trainers agree on, whatever its length (FLTrust's ReLU(cosine), with the median for
    the server's root update). Exact fsum dot products; all of them when every one is."""
    if len(updates) < 3:
        return ()
    ids = sorted(updates)
    deltas = {t: _flat_delta(base, updates[t], learned_only=True) for t in ids}
    centre = coordinate_median([deltas[t] for t in ids])
    out = tuple(t for t in ids if not _exact_dot(deltas[t], centre) > 0.0)
    return () if len(out) == len(ids) else out


def find_far(base: ModelState, updates: dict[str, ModelState], ratio: float) -> tuple[str, ...]:
    """Trainers whose update (delta over base) lies farther than `ratio` times the median
    distance from the coordinate-wise median of all the updates: far updates would lift the
    clipping radius (the median deviation) for everyone. Exact fsum norms; none if fewer
    than 3 updates or ratio <= 1."""
    if not ratio > 1.0 or len(updates) < 3:
        return ()
    ids = sorted(updates)
    deltas = {t: _flat_delta(base, updates[t], learned_only=True) for t in ids}
    centre = coordinate_median([deltas[t] for t in ids])
    dist = {t: math.sqrt(_exact_dot(d - centre, d - centre)) for t, d in deltas.items()}
    limit = ratio * statistics.median(sorted(dist.values()))
    return tuple(t for t in ids if dist[t] > limit)


def _ordered_mean(vectors: list[np.ndarray]) -> np.ndarray:
    """The mean of flat float64 vectors by element-wise adds in the given order (IEEE adds in a
    fixed order: the same bytes on every peer, unlike a pairwise-summing reduction)."""
    total = np.zeros_like(vectors[0])
    for v in vectors:
        total = total + v
    return total / len(vectors)


def find_far_pairwise(base: ModelState, updates: dict[str, ModelState], ratio: float,
                      quantile: float = 0.25) -> tuple[str, ...]:
    """Trainers farther from the coordinate-wise median than `ratio` times the `quantile` of
    the pairwise distances between updates. Unlike find_far's median distance to the median,
    a tight group of colluders cannot shrink this scale (their pairs are few among all
    pairs) and so cannot make the honest updates look far; far pushers that would lift the
    clipping radius are still left out. Exact fsum norms; none if fewer than 3 updates."""
    if not ratio > 1.0 or len(updates) < 3:
        return ()
    ids = sorted(updates)
    deltas = {t: _flat_delta(base, updates[t], learned_only=True) for t in ids}
    centre = coordinate_median([deltas[t] for t in ids])
    pairs = [math.sqrt(_exact_dot(deltas[a] - deltas[b], deltas[a] - deltas[b]))
             for i, a in enumerate(ids) for b in ids[i + 1:]]
    limit = ratio * _quantile(pairs, quantile)
    return tuple(t for t in ids
                 if math.sqrt(_exact_dot(deltas[t] - centre, deltas[t] - centre)) > limit)


def find_coherent(base: ModelState, updates: dict[str, ModelState],
                  max_cosine: float) -> tuple[str, ...]:
    """Trainers whose deviation from the updates' mean has cosine similarity above
    `max_cosine` with another trainer's deviation. Peers training on their own (non-IID) data
    deviate each their own way; colluders pushing the model one way deviate together, however
    much they spread their updates to stay under find_collinear's test on the updates
    themselves (a suspicion of near-identical updates, judged on what each adds to the mean:
    FoolsGold, Fung et al. 2020, within one round). Both members of a pair are listed; none
    when that would be every update, or with fewer than 3. Exact fsum dot products."""
    if not 0.0 < max_cosine < 1.0 or len(updates) < 3:
        return ()
    ids = sorted(updates)
    deltas = [_flat_delta(base, updates[t], learned_only=True) for t in ids]
    mean = _ordered_mean(deltas)
    dev = [d - mean for d in deltas]
    norms = [math.sqrt(_exact_dot(d, d)) for d in dev]
    out = set()
    for i in range(len(ids)):
        for j in range(i + 1, len(ids)):
            if norms[i] > 0.0 and norms[j] > 0.0 and \
                    _exact_dot(dev[i], dev[j]) > max_cosine * norms[i] * norms[j]:
                out.update((ids[i], ids[j]))
    return () if len(out) == len(ids) else tuple(sorted(out))


def collinear_extras(base: ModelState, updates: dict[str, ModelState],
                     max_cosine: float) -> tuple[str, ...]:
    """The near-parallel updates (find_collinear) beyond one per group: pairs above
    `max_cosine` are joined into groups and every group keeps its first trainer by id. Copies
    and sybils then count once, and honest peers whose updates happen to be parallel (IID data
    early in training) still move the model."""
    pairs = _collinear_pairs(base, updates, max_cosine)
    parent = {t: t for pair in pairs for t in pair}

    def root(t: str) -> str:
        while parent[t] != t:
            t = parent[t]
        return t

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return tuple(sorted(t for t in parent if root(t) != t))
