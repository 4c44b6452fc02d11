"""Pluggable Byzantine attacks: each attack is one small class registered in ATTACKS.

An attack has three hooks, each the identity for honest behaviour:
  poison_data    what a malicious trainer trains on,
  poison_update  the model it sends instead of the one it trained (and, on the committee, the
                 model it scores against: a poisoned reference comes for free),
  poison_scores  the distances it reports when it sits on the committee.
Colluding attacks (ALIE) also read what the colluders observed this round, `observed`.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from learning.data import Dataset
from learning.tensors import ModelState


@dataclass(frozen=True)
class Attack:
    """Base attack: honest behaviour; subclasses override one or more hooks."""

    name: ClassVar[str] = "none"
    #: True if the attack needs the round's honest models (see ALittleIsEnough.observe).
    colluding: ClassVar[bool] = False

    def observe(self, honest: list[ModelState], n_peers: int, n_colluders: int) -> Attack:
        """This attack knowing the round's `honest` models (only colluding attacks care)."""
        return self

    def poison_data(self, data: Dataset, rng: np.random.Generator) -> Dataset:
        """Return the (possibly poisoned) local training data."""
        return data

    def poison_update(
        self, base: ModelState, trained: ModelState, rng: np.random.Generator
    ) -> ModelState:
        """Return the full model state to send instead of `trained`."""
        return trained

    def poison_scores(
        self, scores: dict[str, float], colluders: frozenset[str] | set[str]
    ) -> dict[str, float]:
        """Return the trainer -> distance vector to report instead of the measured `scores`."""
        return scores


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


def alie_z(n_peers: int, n_colluders: int) -> float:
    """Baruch et al.'s z_max: the largest shift that still leaves the colluders inside the
    majority of a coordinate-wise vote, from s = floor(n/2 + 1) - m and Phi(z) = (n - s) / n."""
    s = math.floor(n_peers / 2 + 1) - n_colluders
    p = (n_peers - s) / n_peers
    # p <= 0.5 (few colluders) gives z <= 0; there is no useful shift, so send the mean.
    return statistics.NormalDist().inv_cdf(p) if 0.5 < p < 1.0 else 0.0


@dataclass(frozen=True)
class ALittleIsEnough(Attack):
    """"A little is enough" (Baruch et al., NeurIPS 2019), colluding: every colluder sends
    mean - z * std of the honest updates, coordinate-wise, which sits inside the spread of
    honest updates and so passes distance- and median-based filters while biasing the model.

    `observed` holds the honest trained models the colluders know of this round; `observe`
    returns a copy that knows them. The harness gives every benign update of the round (the
    usual omniscient assumption). A real peer can only pool its own and other colluders'
    honest training over a side channel: the mean and std are then estimated from m samples
    instead of n - m, which is noisier but unbiased for IID data. With nothing observed the
    attacker's own trained model is the only sample: std is 0 and it sends it unchanged.
    """

    name: ClassVar[str] = "alie"
    colluding: ClassVar[bool] = True
    #: None: derive z from n_peers and n_colluders (z_max of the paper).
    z: float | None = None
    n_peers: int = 20
    n_colluders: int = 6
    observed: tuple[ModelState, ...] = ()

    def observe(self, honest: list[ModelState], n_peers: int, n_colluders: int) -> ALittleIsEnough:
        """This attack knowing `honest` updates of a round with the given population."""
        return ALittleIsEnough(z=self.z, n_peers=n_peers, n_colluders=n_colluders,
                               observed=tuple(honest))

    def poison_update(
        self, base: ModelState, trained: ModelState, rng: np.random.Generator
    ) -> ModelState:
        """Send mean - z * std of the observed (else own) honest models."""
        samples = list(self.observed) or [trained]
        z = self.z if self.z is not None else alie_z(self.n_peers, self.n_colluders)
        out: ModelState = {}
        for k in sorted(trained):
            stack = torch.stack([s[k].to(torch.float64) for s in samples])
            std = stack.std(dim=0, unbiased=False)
            out[k] = (stack.mean(dim=0) - z * std).to(trained[k].dtype)
        return out


@dataclass(frozen=True)
class FalseScores(Attack):
    """A lying committee member, colluding with sign-flipping trainers: it reports distance 0
    for every colluder and inflates every honest trainer's distance, to pull the poisoned
    updates into the lowest-distance selection (and push honest ones out)."""

    name: ClassVar[str] = "false_scores"
    inflate: float = 10.0

    def poison_update(
        self, base: ModelState, trained: ModelState, rng: np.random.Generator
    ) -> ModelState:
        """As a trainer, send the sign-flipped update."""
        return SignFlip().poison_update(base, trained, rng)

    def poison_scores(
        self, scores: dict[str, float], colluders: frozenset[str] | set[str]
    ) -> dict[str, float]:
        """Colluders at distance 0, honest trainers `inflate` times farther than measured."""
        return {t: 0.0 if t in colluders else self.inflate * d for t, d in sorted(scores.items())}


ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls
    for cls in (SignFlip, GaussianNoise, Scaling, Zeros, LabelFlip, ALittleIsEnough, FalseScores)
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
