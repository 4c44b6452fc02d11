"""Pluggable Byzantine attacks: each attack is one small class registered in ATTACKS."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from learning.data import Dataset
from learning.tensors import ModelState


@dataclass(frozen=True)
class Attack:
    """Base attack: honest behaviour; subclasses override one or both hooks."""

    name: ClassVar[str] = "none"

    def poison_data(self, data: Dataset, rng: np.random.Generator) -> Dataset:
        """Return the (possibly poisoned) local training data."""
        return data

    def poison_update(
        self, base: ModelState, trained: ModelState, rng: np.random.Generator
    ) -> ModelState:
        """Return the full model state to send instead of `trained`."""
        return trained


@dataclass(frozen=True)
class SignFlip(Attack):
    """Send base - (trained - base): the update pointing the opposite way."""

    name: ClassVar[str] = "sign_flip"

    def poison_update(
        self, base: ModelState, trained: ModelState, rng: np.random.Generator
    ) -> ModelState:
        """Reverse the update direction."""
        return {k: base[k] - (trained[k] - base[k]) for k in sorted(trained)}


@dataclass(frozen=True)
class GaussianNoise(Attack):
    """Send base + N(0, sigma^2) noise, ignoring training."""

    name: ClassVar[str] = "gaussian_noise"
    sigma: float = 1.0

    def poison_update(
        self, base: ModelState, trained: ModelState, rng: np.random.Generator
    ) -> ModelState:
        """Replace the update with Gaussian noise around base."""
        out: ModelState = {}
        for k in sorted(base):
            noise = rng.normal(0.0, self.sigma, size=tuple(base[k].shape))
            out[k] = base[k] + torch.from_numpy(noise).to(base[k].dtype)
        return out


@dataclass(frozen=True)
class Scaling(Attack):
    """Send base + factor * (trained - base): an amplified update."""

    name: ClassVar[str] = "scaling"
    factor: float = 10.0

    def poison_update(
        self, base: ModelState, trained: ModelState, rng: np.random.Generator
    ) -> ModelState:
        """Amplify the update by factor."""
        return {k: base[k] + self.factor * (trained[k] - base[k]) for k in sorted(trained)}


@dataclass(frozen=True)
class Zeros(Attack):
    """Send an all-zero model (the Flower/CMFL "zeros" attack)."""

    name: ClassVar[str] = "zeros"

    def poison_update(
        self, base: ModelState, trained: ModelState, rng: np.random.Generator
    ) -> ModelState:
        """Replace every parameter with zeros."""
        return {k: torch.zeros_like(trained[k]) for k in sorted(trained)}


@dataclass(frozen=True)
class LabelFlip(Attack):
    """Train on labels mapped y -> (num_classes - 1) - y."""

    name: ClassVar[str] = "label_flip"
    num_classes: int = 10

    def poison_data(self, data: Dataset, rng: np.random.Generator) -> Dataset:
        """Flip every label."""
        return Dataset(x=data.x, y=(self.num_classes - 1) - data.y)


ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls for cls in (SignFlip, GaussianNoise, Scaling, Zeros, LabelFlip)
}


def make_attack(name: str) -> Attack | None:
    """Instantiate an attack by name with defaults; "none" or "" -> None."""
    key = name.strip().lower().replace("-", "_")
    if key in ("", "none"):
        return None
    cls = ATTACKS.get(key)
    if cls is None:
        raise ValueError(f"unknown attack {name!r}; valid: none, {', '.join(sorted(ATTACKS))}")
    return cls()
