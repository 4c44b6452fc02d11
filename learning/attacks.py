"""Pluggable Byzantine attacks: each attack is one small class registered in ATTACKS.

An attack has three hooks, each the identity for honest behaviour:
  poison_data    what a malicious trainer trains on,
  poison_update  the model it sends instead of the one it trained (and, on the committee, the
                 model it scores against: a poisoned reference comes for free),
  poison_scores  the distances it reports when it sits on the committee.
Colluding attacks (ALIE) also read what the colluders observed this round, `observed`.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import statistics
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import torch

from learning.baselines import flatten_state, krum_scores, unflatten_state
from learning.data import Dataset
from learning.scoring import model_distance
from learning.tensors import ModelState


@dataclass(frozen=True)
class Attack:
    """Base attack: honest behaviour; subclasses override one or more hooks."""

    name: ClassVar[str] = "none"
    #: True if the attack needs the round's honest models (see ALittleIsEnough.observe).
    colluding: ClassVar[bool] = False
    #: attackers declare this many times their true sample count (the harness and peers
    #: weigh updates by the declared count; nothing can check it)
    sample_factor: ClassVar[int] = 1

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


# --- Omniscient colluders (the literature's strongest threat model) --------------------------
#
# Every attack below sees the whole round before it sends: every honest peer's trained model
# (by peer), the base model, which peers sit on the committee and what its colluders trained.
# They all send after the honest peers (a rushing adversary), and those on the committee lie
# in their score vectors in the way that cannot be told from honest skew (`_favour_colluders`).


@dataclass(frozen=True)
class RoundView:
    """What omniscient colluders know when they choose their updates."""

    base: ModelState
    #: every honest peer's trained model this round (committee members' included), by peer
    honest: dict[str, ModelState]
    #: what each colluder trained on its own (possibly poisoned) data, by peer
    colluders: dict[str, ModelState]
    committee: tuple[str, ...] = ()
    #: the colluders' pooled training data and the model they train (attacks that train a
    #: crafted model of their own, ChoiceUnlearn)
    colluder_data: Dataset | None = None
    model_spec: object = None

    @property
    def honest_trainers(self) -> list[str]:
        """The honest peers whose updates the committee scores this round."""
        return [p for p in sorted(self.honest) if p not in self.committee]


def _favour_colluders(scores: dict[str, float], colluders: frozenset[str] | set[str]
                      ) -> dict[str, float]:
    """A lying member's vector: colluders at distance 0, honest trainers as measured. The
    ranking of honest trainers is kept, so a rank test (find_dissenters) sees nothing odd."""
    return {t: 0.0 if t in colluders else d for t, d in sorted(scores.items())}


def _deltas(view: RoundView, ids: list[str]) -> torch.Tensor:
    base = flatten_state(view.base)
    return torch.stack([flatten_state(view.honest[p]) - base for p in ids])


def _state(view: RoundView, delta: torch.Tensor) -> ModelState:
    return unflatten_state(flatten_state(view.base) + delta, view.base)


@dataclass(frozen=True)
class Omniscient(Attack):
    """Base of the omniscient colluding attacks: `observe_round` hands them the RoundView;
    `craft` returns the update (a flat delta over base) every colluder sends."""

    colluding: ClassVar[bool] = True
    view: RoundView | None = None

    def observe(self, honest: list[ModelState], n_peers: int, n_colluders: int) -> Attack:
        """Without a full view (a real peer with no side channel) the attack cannot aim: it
        sends what it trained."""
        return self

    def observe_round(self, view: RoundView) -> Attack:
        """This attack knowing the whole round."""
        return replace(self, view=view)

    def craft(self, view: RoundView, own: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        raise NotImplementedError

    def poison_update(
        self, base: ModelState, trained: ModelState, rng: np.random.Generator
    ) -> ModelState:
        """The crafted update; the trained model when the round is unknown."""
        if self.view is None or len(self.view.honest) < 2:
            return trained
        own = flatten_state(trained) - flatten_state(base)
        return _state(self.view, self.craft(self.view, own, rng))

    def poison_scores(
        self, scores: dict[str, float], colluders: frozenset[str] | set[str]
    ) -> dict[str, float]:
        """Colluders reported closest; honest trainers as measured."""
        return _favour_colluders(scores, colluders)


def _direction(deltas: torch.Tensor, kind: str) -> torch.Tensor:
    """Shejwalkar & Houmansadr's perturbation vectors (pointing against the honest mean)."""
    mean = deltas.mean(dim=0)
    if kind == "std":
        return -deltas.std(dim=0, unbiased=False)
    if kind == "unit":
        return -mean / (mean.norm() + 1e-12)
    if kind == "sign":
        return -torch.sign(mean)
    raise ValueError(f"unknown perturbation {kind!r}")


def _largest_gamma(ok, gamma: float = 10.0, tau: float = 1e-4) -> float:
    """Shejwalkar & Houmansadr's Algorithm 1: the largest gamma with ok(gamma), by halving."""
    step, best = gamma / 2, 0.0
    while step > tau:
        if ok(gamma):
            best = gamma
            gamma += step
        else:
            gamma -= step
        step /= 2
    return best if ok(best) else 0.0


@dataclass(frozen=True)
class AgrMinMax(Omniscient):
    """Min-max (Shejwalkar & Houmansadr, NDSS 2021): mean + gamma * p, gamma the largest
    with the malicious update no farther from any honest update than the two farthest honest
    updates are from each other: it stays inside the honest spread, as far out as it can."""

    name: ClassVar[str] = "min_max"
    perturbation: str = "std"

    def craft(self, view: RoundView, own: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        d = _deltas(view, view.honest_trainers or sorted(view.honest))
        mean, p = d.mean(dim=0), _direction(d, self.perturbation)
        limit = float(torch.cdist(d, d).max())

        def ok(g: float) -> bool:
            return float((d - (mean + g * p)).norm(dim=1).max()) <= limit

        return mean + _largest_gamma(ok) * p


@dataclass(frozen=True)
class AgrMinSum(Omniscient):
    """Min-sum (Shejwalkar & Houmansadr, NDSS 2021): as min-max, but the sum of squared
    distances to the honest updates may not exceed the largest such sum of an honest one."""

    name: ClassVar[str] = "min_sum"
    perturbation: str = "std"

    def craft(self, view: RoundView, own: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        d = _deltas(view, view.honest_trainers or sorted(view.honest))
        mean, p = d.mean(dim=0), _direction(d, self.perturbation)
        limit = float((torch.cdist(d, d) ** 2).sum(dim=1).max())

        def ok(g: float) -> bool:
            return float(((d - (mean + g * p)).norm(dim=1) ** 2).sum()) <= limit

        return mean + _largest_gamma(ok) * p


@dataclass(frozen=True)
class InnerProduct(Omniscient):
    """Inner-product manipulation (Xie, Koyejo & Gupta, UAI 2019): every colluder sends
    -epsilon times the honest mean, so the aggregate's inner product with the true gradient
    turns negative; epsilon 0.5 passes Krum and distance filters (the paper's small-eps case)."""

    name: ClassVar[str] = "ipm"
    epsilon: float = 0.5

    def craft(self, view: RoundView, own: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        return -self.epsilon * _deltas(view, sorted(view.honest)).mean(dim=0)


@dataclass(frozen=True)
class FangMedian(Omniscient):
    """Fang et al. (USENIX Security 2020), full-knowledge attack on trimmed mean and median:
    per coordinate, against the honest mean's sign s_j, a value just beyond the honest
    extreme on the other side (drawn from [w/b, w] or [b w, w], b = 2), independently per
    colluder."""

    name: ClassVar[str] = "fang_median"
    b: float = 2.0

    def craft(self, view: RoundView, own: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        d = _deltas(view, sorted(view.honest))
        s = torch.sign(d.mean(dim=0))
        lo, hi = d.min(dim=0).values, d.max(dim=0).values
        u = torch.from_numpy(rng.random(lo.numel())).to(torch.float64)
        # s > 0: go below the honest minimum; s <= 0: above the honest maximum.
        below = torch.where(lo > 0, lo / self.b + u * (lo - lo / self.b),
                            self.b * lo + u * (lo - self.b * lo))
        above = torch.where(hi > 0, hi + u * (self.b * hi - hi),
                            hi / self.b + u * (hi - hi / self.b))
        return torch.where(s > 0, below, above)


@dataclass(frozen=True)
class FangKrum(Omniscient):
    """Fang et al. (USENIX Security 2020), full-knowledge attack on Krum: every colluder sends
    base - lambda * s (s the sign of the honest mean), lambda halved from its upper bound until
    Krum, seeing the honest updates and the m identical copies, picks a copy."""

    name: ClassVar[str] = "fang_krum"
    n_colluders: int = 6

    def craft(self, view: RoundView, own: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        d = _deltas(view, view.honest_trainers or sorted(view.honest))
        s = torch.sign(d.mean(dim=0))
        m = max(len(view.colluders), 1)
        n, k = len(d) + m, d.shape[1]
        # The paper's upper bound on lambda from the honest updates' spread and the base.
        pair = torch.cdist(d, d)
        nearest = torch.sort(pair, dim=1).values[:, 1 : max(n - m - 1, 2)].sum(dim=1).min()
        lam = float(nearest / ((n - 2 * m - 1) * math.sqrt(k)) if n - 2 * m - 1 > 0 else 1.0)
        lam += float(d.norm(dim=1).max()) / math.sqrt(k)
        while lam > 1e-5:
            mal = -lam * s
            vectors = list(d) + [mal] * m
            scores = krum_scores(vectors, m)
            if min(range(len(vectors)), key=lambda i: (scores[i], i)) >= len(d):
                return mal
            lam /= 2
        return -lam * s


@dataclass(frozen=True)
class Mimic(Omniscient):
    """Mimic (Karimireddy, He & Jaggi, ICLR 2022): every colluder sends a copy of one honest
    trainer's update. Each copy is honest, so no filter can reject it; on non-IID data the
    aggregate is dragged towards that one peer's classes. The target is fixed for the run
    (the first honest trainer by id), as the paper fixes it after its warm-up."""

    name: ClassVar[str] = "mimic"

    def craft(self, view: RoundView, own: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        target = (view.honest_trainers or sorted(view.honest))[0]
        return _deltas(view, [target])[0]


@dataclass(frozen=True)
class SybilFlip(Omniscient):
    """Sybil copies (Fung et al., FoolsGold, 2020): the colluders pool their label-flipped
    training and all send the same averaged update, so the flipped direction arrives m times
    with none of the spread that honest updates have."""

    name: ClassVar[str] = "sybil_flip"
    num_classes: int = 10

    def poison_data(self, data: Dataset, rng: np.random.Generator) -> Dataset:
        """Flip every label."""
        return Dataset(x=data.x, y=(self.num_classes - 1) - data.y)

    def craft(self, view: RoundView, own: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if not view.colluders:
            return own
        base = flatten_state(view.base)
        return torch.stack([flatten_state(view.colluders[p]) - base
                            for p in sorted(view.colluders)]).mean(dim=0)


def committee_score(view: RoundView, delta: torch.Tensor, colluders: set[str]) -> float:
    """What `combine_scores(..., "median")` gives an update: the median over the committee of
    its distance (learning.scoring.model_distance, per layer) to each member's model, colluding
    members reporting 0 (_favour_colluders)."""
    state = _state(view, delta)
    dists = [0.0 if m in colluders else model_distance(state, view.honest[m])
             for m in view.committee if m in view.honest or m in colluders]
    return statistics.median(sorted(dists)) if dists else 0.0


@dataclass(frozen=True)
class CmflCapture(Omniscient):
    """Aimed at cmfl-auto's typical distance: the colluders send one identical update
    mean + gamma * p (p against the honest mean, as min-max), gamma the largest that keeps the
    copies' combined committee score at or below the `rank`-th lowest honest trainer's. Then
    the copies fill the bottom of the ranking, the median of the lower half (the typical
    honest distance) is theirs, and honest trainers 1.3 times farther become outliers, dropped
    from the aggregate and from the election."""

    name: ClassVar[str] = "cmfl_capture"
    perturbation: str = "unit"
    rank: int = 0
    #: random spread around the copy, as a share of the honest std (0: exact copies)
    jitter: float = 0.0
    #: > 0: colluder i of m aims at target * (1 + stagger * i), so no two score alike
    stagger: float = 0.0

    def _target(self, view: RoundView, colluders: set[str]) -> float:
        honest = sorted(committee_score(view, _deltas(view, [t])[0], colluders)
                        for t in view.honest_trainers)
        return honest[min(self.rank, len(honest) - 1)] if honest else math.inf

    def craft(self, view: RoundView, own: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if not view.committee:
            # No committee to aim at (a baseline rule): min-max with the same perturbation.
            return AgrMinMax(perturbation=self.perturbation).craft(view, own, rng)
        colluders = set(view.colluders)
        d = _deltas(view, sorted(view.honest))
        mean, p = d.mean(dim=0), _direction(d, self.perturbation)
        target = self._target(view, colluders)
        if self.stagger > 0:
            target *= 1.0 + self.stagger * _colluder_index(view, own)
        # gamma in units of the typical honest update norm, searched up to 40 of them
        scale = float(d.norm(dim=1).mean()) if self.perturbation == "unit" else 1.0

        def ok(g: float) -> bool:
            return committee_score(view, mean + g * scale * p, colluders) <= target

        mal = mean + _largest_gamma(ok, gamma=20.0) * scale * p
        if self.jitter > 0:
            std = d.std(dim=0, unbiased=False)
            mal = mal + self.jitter * std * torch.from_numpy(rng.standard_normal(mal.numel()))
        return mal


def _colluder_index(view: RoundView, own: torch.Tensor) -> int:
    """Which colluder trained `own` (its position by id), 0 if none matches."""
    base = flatten_state(view.base)
    for i, p in enumerate(sorted(view.colluders)):
        if torch.equal(flatten_state(view.colluders[p]) - base, own):
            return i
    return 0


@dataclass(frozen=True)
class CmflCaptureStaggered(CmflCapture):
    """cmfl_capture with the colluders' scores spread 5% apart (colluder i aims 5 i % above
    the lowest honest score): the adaptive answer to a test of near-identical score vectors,
    at almost no cost in harm."""

    name: ClassVar[str] = "cmfl_capture_staggered"
    stagger: float = 0.05


@dataclass(frozen=True)
class CmflElect(CmflCapture):
    """Aimed at the election: as cmfl_capture, but the copies sit at the honest trainers'
    median score, where the middle-of-the-ranking election seats them (ties by id), each with
    a small random spread so no two copies are identical."""

    name: ClassVar[str] = "cmfl_elect"
    jitter: float = 0.05

    def _target(self, view: RoundView, colluders: set[str]) -> float:
        honest = sorted(committee_score(view, _deltas(view, [t])[0], colluders)
                        for t in view.honest_trainers)
        return honest[len(honest) // 2] if honest else math.inf


@dataclass(frozen=True)
class CmflCaptureNoisy(CmflCapture):
    """cmfl_capture with each copy spread by 5% of the honest std, so that no two colluders'
    updates (or score vectors) are identical: the adaptive answer to a duplicate test."""

    name: ClassVar[str] = "cmfl_capture_noisy"
    jitter: float = 0.05


@dataclass(frozen=True)
class CmflCaptureSpread(CmflCaptureStaggered):
    """Aimed at the collinearity test (learning.aggregation.find_collinear): staggered copies,
    each plus its own random direction sized so that two copies' cosine similarity is about
    `cosine` (just under a 0.9 limit); the gamma search counts the added distance, so the
    copies still score at or just above the lowest honest trainer."""

    name: ClassVar[str] = "cmfl_capture_spread"
    cosine: float = 0.85

    def craft(self, view: RoundView, own: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if not view.committee:
            return AgrMinMax(perturbation=self.perturbation).craft(view, own, rng)
        colluders = set(view.colluders)
        d = _deltas(view, sorted(view.honest))
        mean, p = d.mean(dim=0), _direction(d, self.perturbation)
        target = self._target(view, colluders) * (
            1.0 + self.stagger * _colluder_index(view, own))
        scale = float(d.norm(dim=1).mean()) if self.perturbation == "unit" else 1.0
        noise = torch.from_numpy(rng.standard_normal(mean.numel())).to(mean.dtype)
        noise = noise / (noise.norm() + 1e-12)
        share = math.sqrt((1.0 - self.cosine) / self.cosine)

        def mal(g: float) -> torch.Tensor:
            core = mean + g * scale * p
            return core + share * float(core.norm()) * noise

        def ok(g: float) -> bool:
            return committee_score(view, mal(g), colluders) <= target

        return mal(_largest_gamma(ok, gamma=20.0))


@dataclass(frozen=True)
class CmflCaptureHeavy(CmflCaptureSpread):
    """cmfl_capture_spread whose colluders declare 50 times their sample count (a count is
    declared in the signed update and checked by no one), so whatever of theirs is aggregated
    outweighs the honest updates."""

    name: ClassVar[str] = "cmfl_capture_heavy"
    sample_factor: ClassVar[int] = 50


def _clip_centre(view: RoundView) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The honest trainers' deltas, their coordinate-wise median (the centre the clipped rule
    uses, learning.aggregation.aggregate_clipped, without the colluders' pull on it) and the
    median distance to it (the clipping radius)."""
    d = _deltas(view, view.honest_trainers or sorted(view.honest))
    centre = d.median(dim=0).values if len(d) % 2 else torch.quantile(d, 0.5, dim=0)
    radius = float((d - centre).norm(dim=1).median())
    return d, centre, radius


@dataclass(frozen=True)
class ClipPush(Omniscient):
    """Aimed at centered clipping: every colluder sends the centre plus `reach` radii against
    the honest mean. Clipping shortens each to one radius on that ray, but being farther than
    every honest update they lift the radius (the median distance) to a higher honest one, and
    together they pull the aggregate back by (colluders / trainers) radii a round."""

    name: ClassVar[str] = "clip_push"
    reach: float = 4.0
    #: colluder i reaches (1 + stagger i) times as far and adds its own random part of
    #: `spread` radii, so neither the clone test nor the collinearity test fires
    stagger: float = 0.1
    spread: float = 0.5

    def craft(self, view: RoundView, own: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        d, centre, radius = _clip_centre(view)
        mean = d.mean(dim=0)
        reach = self.reach * (1.0 + self.stagger * _colluder_index(view, own))
        noise = torch.from_numpy(rng.standard_normal(mean.numel())).to(mean.dtype)
        noise = noise / (noise.norm() + 1e-12)
        return centre + reach * radius * (-mean / (mean.norm() + 1e-12) + self.spread * noise)


def _away_orthogonal(view: RoundView, rng: np.random.Generator, spread: float
                     ) -> tuple[torch.Tensor, float, torch.Tensor]:
    """The clip centre, its radius and a unit direction against the honest mean, orthogonal to
    the centre (so an update along it keeps a positive inner product with the centre), plus
    `spread` of a random orthogonal part so no two colluders are near-parallel."""
    d, centre, radius = _clip_centre(view)
    mean = d.mean(dim=0)
    c_unit = centre / (centre.norm() + 1e-12)
    away = -(mean - (mean @ c_unit) * c_unit)
    noise = torch.from_numpy(rng.standard_normal(mean.numel())).to(mean.dtype)
    noise = noise - (noise @ c_unit) * c_unit
    direction = away / (away.norm() + 1e-12) + spread * noise / (noise.norm() + 1e-12)
    return centre, radius, direction / (direction.norm() + 1e-12)


@dataclass(frozen=True)
class ClipOrthogonal(Omniscient):
    """Aimed at a clipped rule that drops updates pointing away from the centre: the colluders
    send centre + one radius along the part of the negated honest mean orthogonal to the centre
    (a positive inner product with the centre, so never dropped), each with its own random part
    so no two are near-parallel."""

    name: ClassVar[str] = "clip_orthogonal"
    spread: float = 0.5
    #: colluder i sends at (1 + stagger i) radii, so no two score vectors coincide
    stagger: float = 0.1

    def craft(self, view: RoundView, own: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        centre, radius, direction = _away_orthogonal(view, rng, self.spread)
        reach = 1.0 + self.stagger * _colluder_index(view, own)
        return centre + reach * radius * direction


@dataclass(frozen=True)
class ClipSneak(Omniscient):
    """Aimed at the aligned clipped rule: each colluder keeps only `keep` of the centre (so its
    inner product with the median stays positive and the alignment test passes) plus `reach`
    radii against the honest mean, orthogonal to the centre. Its deviation from the centre
    then points back along the centre as well as away from the honest mean; clipping shortens
    it to one radius but keeps that direction. Staggered and spread, as clip_push."""

    name: ClassVar[str] = "clip_sneak"
    keep: float = 0.05
    reach: float = 1.0
    stagger: float = 0.1
    spread: float = 0.3

    def craft(self, view: RoundView, own: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        centre, radius, direction = _away_orthogonal(view, rng, self.spread)
        reach = self.reach * (1.0 + self.stagger * _colluder_index(view, own))
        return self.keep * centre + reach * radius * direction


@dataclass(frozen=True)
class ClipPushNear(ClipPush):
    """clip_push from just beyond the honest spread (1.3 radii): not far enough to be an
    outlier of the committee's distances, still beyond the median, so still lifting the
    radius."""

    name: ClassVar[str] = "clip_push_near"
    reach: float = 1.3
    stagger: float = 0.05
    spread: float = 0.3


@dataclass(frozen=True)
class ClipPushLoose(ClipPush):
    """Aimed at the coherence test (learning.aggregation.find_coherent): clip_push_near whose
    colluders each add their own random direction as long as the push, so two colluders'
    deviations from the mean have a cosine under 1/2; a loose push, but still one way."""

    name: ClassVar[str] = "clip_push_loose"
    reach: float = 1.3
    stagger: float = 0.05
    spread: float = 1.1


@dataclass(frozen=True)
class ClipPushWide(ClipPushLoose):
    """clip_push_loose from twice as far, just inside the pairwise far test's limit
    (learning.aggregation.find_far_pairwise, 2x the lower quartile of pairwise distances)."""

    name: ClassVar[str] = "clip_push_wide"
    reach: float = 1.8


@dataclass(frozen=True)
class CoherenceFrame(Omniscient):
    """Aimed at the coherence test from the other side: each colluder sends a copy of one
    honest trainer's update (the ones most aligned with the honest mean, one victim per
    colluder) plus a random part that keeps the two updates under find_collinear's cosine,
    so victim and copy deviate from the mean together and are both left out: the colluders
    choose which honest updates the model loses."""

    name: ClassVar[str] = "coherence_frame"
    cosine: float = 0.85

    def craft(self, view: RoundView, own: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        ids = view.honest_trainers or sorted(view.honest)
        d = _deltas(view, ids)
        mean = d.mean(dim=0)
        order = sorted(range(len(ids)), key=lambda i: -float(d[i] @ mean))
        victim = d[order[_colluder_index(view, own) % len(order)]]
        noise = torch.from_numpy(rng.standard_normal(victim.numel())).to(victim.dtype)
        share = math.sqrt(1.0 / self.cosine ** 2 - 1.0)
        return victim + share * float(victim.norm()) * noise / (noise.norm() + 1e-12)


@dataclass(frozen=True)
class ChoiceUnlearn(Omniscient):
    """Aimed at judges who choose by their own data's loss (learning.choice): from the honest
    mean the colluders train, on their pooled data, a model that fits every class but one and
    unlearns that one (its loss subtracted, capped), and send that delta times `boost`. Judges
    who hold little of the target class (most, on non-IID data) see a better model than any
    honest candidate; the test set loses a class. `rotate`: the target changes every round (a
    function of the base model, the same for all colluders)."""

    name: ClassVar[str] = "choice_unlearn"
    target: int = 3
    rotate: bool = False
    boost: float = 1.0
    steps: int = 30
    lr: float = 0.1
    unlearn: float = 1.0
    spread: float = 0.05

    def craft(self, view: RoundView, own: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if view.colluder_data is None or view.model_spec is None:
            return own
        from learning.model import build_model, load_state  # training code: not at import
        d = _deltas(view, view.honest_trainers or sorted(view.honest))
        mean = d.mean(dim=0)
        x, y = view.colluder_data.x, view.colluder_data.y
        classes = int(y.max()) + 1 if len(y) else 1
        target = self.target % classes
        if self.rotate:
            target = int(view_digest(view.base)[0]) % classes
        model = build_model(view.model_spec, seed=0)
        load_state(model, _state(view, mean))
        opt = torch.optim.SGD(model.parameters(), lr=self.lr)
        keep, drop = y != target, y == target
        for _ in range(self.steps):
            opt.zero_grad()
            out = model(x)
            loss = torch.nn.functional.cross_entropy(out[keep], y[keep])
            if bool(drop.any()):
                bad = torch.nn.functional.cross_entropy(out[drop], y[drop])
                loss = loss - self.unlearn * torch.clamp(bad, max=5.0)
            loss.backward()
            opt.step()
        trained = {k: v.detach() for k, v in model.state_dict().items()}
        delta = self.boost * (flatten_state(trained) - flatten_state(view.base))
        noise = torch.from_numpy(rng.standard_normal(delta.numel())).to(delta.dtype)
        return delta + self.spread * float(delta.norm()) * noise / (noise.norm() + 1e-12)


def view_digest(state: ModelState) -> bytes:
    """A digest of a model every colluder computes alike (the round's shared coin)."""
    return hashlib.blake2b(flatten_state(state).numpy().tobytes(), digest_size=8).digest()


@dataclass(frozen=True)
class ChoiceUnlearnRotate(ChoiceUnlearn):
    """ChoiceUnlearn with a new target class every round."""

    name: ClassVar[str] = "choice_unlearn_rotate"
    rotate: bool = True


@dataclass(frozen=True)
class ChoiceUnlearnBoost(ChoiceUnlearn):
    """ChoiceUnlearn, rotating, each colluder's delta times 3 (one colluder in a subset of 5
    moves its FedAvg by about 3/5 of the crafted step)."""

    name: ClassVar[str] = "choice_unlearn_boost"
    rotate: bool = True
    boost: float = 3.0


ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls
    for cls in (SignFlip, GaussianNoise, Scaling, Zeros, LabelFlip, ALittleIsEnough, FalseScores,
                AgrMinMax, AgrMinSum, InnerProduct, FangMedian, FangKrum, Mimic, SybilFlip,
                CmflCapture, CmflCaptureNoisy, CmflCaptureStaggered, CmflElect,
                CmflCaptureSpread, CmflCaptureHeavy, ClipPush, ClipOrthogonal, ClipSneak,
                ClipPushNear, ClipPushLoose, ClipPushWide, CoherenceFrame, ChoiceUnlearn,
                ChoiceUnlearnRotate, ChoiceUnlearnBoost)
}
#: The attacks before issue 14 (docs/results/bar.csv was measured with exactly these).
CLASSIC_ATTACKS = ("alie", "false_scores", "gaussian_noise", "label_flip", "scaling",
                   "sign_flip", "zeros")


def make_attack(name: str) -> Attack | None:
    """Instantiate an attack by name with defaults; "none" or "" -> None."""
    key = name.strip().lower().replace("-", "_")
    if key in ("", "none"):
        return None
    cls = ATTACKS.get(key)
    if cls is None:
        raise ValueError(f"unknown attack {name!r}; valid: none, {', '.join(sorted(ATTACKS))}")
    return cls()


#: What lying judges aim at (lie_votes' `target`): "colluders", the candidate holding the
#: most colluders' updates, then the one the honest judges like least; "worst", the one the
#: honest judges like least whoever it holds (their summed votes: plain harm, no poison).
LIAR_TARGETS = ("colluders", "worst")


def _liars_key(candidates: list, colluders, honest_votes: dict[str, tuple[float, ...]],
               i: int, target: str = "colluders") -> tuple[float, float]:
    """How much the liars want candidate i to win (LIAR_TARGETS): under "colluders" the
    colluders it holds, then how little the honest judges like it (their summed votes,
    negated); under "worst" the other way round."""
    held = len(set(candidates[i].trainers) & set(colluders))
    disliked = -math.fsum(votes[i] for votes in honest_votes.values())
    if target == "worst":
        return (disliked, held)
    if target != "colluders":
        raise ValueError(f"unknown liar target {target!r}; valid: {', '.join(LIAR_TARGETS)}")
    return (held, disliked)


def lie_votes(honest_votes: dict[str, tuple[float, ...]], candidates: list, colluders,
              rule, target: str = "colluders") -> tuple[float, ...]:
    """The colluding judges' vote vector (all of them send this one) against a choice `rule`
    (votes -> chosen index, e.g. learning.choice.choose with its config), knowing every honest
    judge's votes (a rushing, omniscient liar). For every candidate it tries the lies that
    push that one up and all others down (with each candidate in turn held at 0, the reference
    of a relative rule, or none) and keeps those that make it win; the favourite among those
    is the one `target` ranks first (LIAR_TARGETS: by default the one holding the most
    colluders, then the one the honest judges like least). If no lie wins anything the liars
    vote for that favourite anyway."""
    count = len(candidates)
    honest = sorted(honest_votes)
    liars = sorted(colluders)

    def held(i: int) -> tuple[float, float]:
        return _liars_key(candidates, colluders, honest_votes, i, target)

    def lie(i: int, zero: int | None) -> tuple[float, ...]:
        return tuple(1e9 if k == i else 0.0 if k == zero else -1e9 for k in range(count))

    def wins(vec: tuple[float, ...], i: int) -> bool:
        votes = dict(honest_votes)
        votes.update({j: vec for j in liars})
        return rule(votes) == i

    best = None
    for i in sorted(range(count), key=held, reverse=True):
        for zero in (None,) + tuple(k for k in range(min(count, 4)) if k != i):
            vec = lie(i, zero)
            if wins(vec, i):
                best = vec
                break
        if best is not None:
            break
    return best if best is not None else lie(max(range(count), key=held), None)


def committed_lies(proxy_votes: dict[str, tuple[float, ...]], candidates: list, colluders,
                   favourites: int) -> dict[str, tuple[float, ...]]:
    """What colluding judges commit to under a commit-reveal of the votes, before any honest
    vote is known, when they mean to reveal selectively: `favourites` different lies (+1e9 for
    one candidate, -1e9 for every other), for the candidates holding the most colluders that
    their own data's votes (`proxy_votes`) like least, shared round-robin among them."""
    count = len(candidates)
    liars = sorted(colluders)

    def held(i: int) -> tuple[int, float]:
        return (len(set(candidates[i].trainers) & set(colluders)),
                -math.fsum(v[i] for v in proxy_votes.values()))

    ranked = sorted(range(count), key=held, reverse=True)[:max(1, favourites)]
    return {liar: tuple(1e9 if k == ranked[n % len(ranked)] else -1e9 for k in range(count))
            for n, liar in enumerate(liars)}


def selective_reveal(honest_votes: dict[str, tuple[float, ...]],
                     commits: dict[str, tuple[float, ...]], candidates: list, colluders,
                     rule) -> frozenset[str]:
    """Which committed liars reveal, once every honest vote is revealed: the subset whose
    winner (a withheld vote counts as -inf on every candidate) holds the most colluders, then
    is the one the honest judges like least; ties go to the larger subset (each withheld
    reveal is evidence that excludes its member from judging)."""
    count = len(candidates)
    liars = sorted(commits)
    honest = sorted(honest_votes)
    withheld = tuple(-math.inf for _ in range(count))
    best, best_key = frozenset(liars), None
    for r in range(len(liars), -1, -1):
        for subset in itertools.combinations(liars, r):
            votes = dict(honest_votes)
            votes.update({j: commits[j] if j in subset else withheld for j in liars})
            i = rule(votes)
            key = (len(set(candidates[i].trainers) & set(colluders)),
                   -math.fsum(honest_votes[j][i] for j in honest), r)
            if best_key is None or key > best_key:
                best, best_key = frozenset(subset), key
    return best


def leader_quorum(honest_votes: dict[str, tuple[float, ...]], size: int, candidates: list,
                  colluders, rule, rng: np.random.Generator,
                  lies: list[tuple[float, ...]] | None = None, tries: int = 4,
                  swaps: int = 8, target: str = "colluders"
                  ) -> tuple[frozenset[str], tuple[float, ...]]:
    """Which `size` honest votes a colluding leader puts in the block beside the colluders'
    lie (any quorum of votes re-derives), and the lie. A greedy search, not the optimum: for
    each of the `tries` candidates the liars like best (lie_votes' order: most colluders,
    then least liked by the honest judges) the honest judges who rank it highest among their
    own votes, plus `tries` random subsets; each is tried with the lie that suits it
    (lie_votes on that subset, or each of the fixed `lies`, made before the liars saw every
    vote) and the pair whose winner holds the most colluders, then is the one all honest
    judges like least (lie_votes' key), is kept; then up to `swaps` times one kept honest
    vote is traded for a left-out one, the lie held, if that improves the key. Returns (the
    kept honest judges, the lie). `target`: what the liars want (LIAR_TARGETS), for the
    order above and the key."""
    count = len(candidates)
    honest = sorted(honest_votes)
    liars = sorted(colluders)

    def held(i: int) -> tuple[float, float]:
        return _liars_key(candidates, colluders, honest_votes, i, target)

    def ranks_it(i: int, j: str) -> tuple[int, str]:  # how many candidates j puts below i
        return (sum(v < honest_votes[j][i] for v in honest_votes[j]), j)

    if size >= len(honest):
        tries_ = [honest]
    else:
        tries_ = [sorted(honest, key=lambda j: ranks_it(i, j), reverse=True)[:size]
                  for i in sorted(range(count), key=held, reverse=True)[:tries]]
        tries_ += [sorted(rng.choice(honest, size=size, replace=False).tolist())
                   for _ in range(tries)]

    def key(subset, vec: tuple[float, ...]) -> tuple[int, float]:
        votes = {j: honest_votes[j] for j in subset}
        votes.update({j: vec for j in liars})
        return held(rule(votes))

    best, best_key = None, None
    for subset in tries_:
        for vec in lies or [lie_votes({j: honest_votes[j] for j in subset}, candidates,
                                      colluders, rule, target)]:
            k = key(subset, vec)
            if best_key is None or k > best_key:
                best, best_key = (frozenset(subset), vec), k
    for _ in range(swaps):  # then one honest vote in for one out, the lie held, while it helps
        kept, vec = best
        better = next(((kept - {o}) | {i} for o in sorted(kept)
                       for i in honest if i not in kept
                       if key((kept - {o}) | {i}, vec) > best_key), None)
        if better is None:
            break
        best, best_key = (frozenset(better), vec), key(better, vec)
    return best
