"""Digits dataset loading, train/test split and deterministic sharding across peers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

MIN_SHARD_SIZE = 2


@dataclass(frozen=True, eq=False)  # tensor == is element-wise; compare by identity
class Dataset:
    """Features x (float32 [n, 64] in [0, 1]) and labels y (int64 [n])."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


def load_digits_split(seed: int, test_fraction: float = 0.2) -> tuple[Dataset, Dataset]:
    """Load sklearn's bundled 8x8 digits and return a seeded stratified (train, test) split."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    bunch = load_digits()  # ships with scikit-learn; no download
    x = np.asarray(bunch.data, dtype=np.float32) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return _dataset(x_tr, y_tr), _dataset(x_te, y_te)


def _dataset(x: np.ndarray, y: np.ndarray) -> Dataset:
    return Dataset(
        x=torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        y=torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)),
    )


def subset(data: Dataset, indices: np.ndarray) -> Dataset:
    """Rows of data at the given indices (copied)."""
    idx = torch.from_numpy(np.asarray(indices, dtype=np.int64))
    return Dataset(x=data.x[idx].clone(), y=data.y[idx].clone())


def shard_indices(
    labels: np.ndarray, n_shards: int, seed: int, partition: str = "iid", alpha: float = 0.5
) -> list[np.ndarray]:
    """All shards' sorted index arrays; disjoint, covering range(len(labels)), seeded."""
    n = len(labels)
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    rng = np.random.default_rng(seed)
    if partition == "iid":
        if n < n_shards:
            raise ValueError(f"cannot split {n} samples into {n_shards} non-empty shards")
        parts = np.array_split(rng.permutation(n), n_shards)
        return [np.sort(p) for p in parts]
    if partition != "dirichlet":
        raise ValueError(f"unknown partition {partition!r}; expected 'iid' or 'dirichlet'")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if n < MIN_SHARD_SIZE * n_shards:
        raise ValueError(f"need >= {MIN_SHARD_SIZE * n_shards} samples for {n_shards} shards")
    shards: list[list[int]] = [[] for _ in range(n_shards)]
    for c in np.unique(labels):  # np.unique is sorted, so RNG draws happen in a fixed order
        idx = rng.permutation(np.flatnonzero(labels == c))
        props = rng.dirichlet(np.full(n_shards, alpha))
        cuts = (np.cumsum(props)[:-1] * len(idx)).astype(np.int64)
        for s, part in enumerate(np.split(idx, cuts)):
            shards[s].extend(part.tolist())
    # Small alpha can leave shards empty; top them up from the largest shard so every peer
    # can train. Ties break on shard index, keeping this deterministic.
    while True:
        small = min(range(n_shards), key=lambda s: (len(shards[s]), s))
        if len(shards[small]) >= MIN_SHARD_SIZE:
            break
        large = max(range(n_shards), key=lambda s: (len(shards[s]), -s))
        shards[small].append(shards[large].pop())
    return [np.sort(np.asarray(s, dtype=np.int64)) for s in shards]


def shard(
    train: Dataset, n_shards: int, index: int, seed: int, partition: str = "iid", alpha: float = 0.5
) -> Dataset:
    """The index-th of n_shards disjoint shards of train ("iid" or "dirichlet"), seeded."""
    if not 0 <= index < n_shards:
        raise ValueError(f"shard index {index} out of range for {n_shards} shards")
    parts = shard_indices(train.y.numpy(), n_shards, seed, partition, alpha)
    return subset(train, parts[index])
