"""DP parameters and their privacy accounting, without torch: what updates declare and blocks
record (`DpReport`), what a genesis demands (`DpPolicy`), and a peer's budget over rounds
(`PrivacyAccountant`), all by Opacus' accountants (imported on first use: they take seconds).

Kept apart from learning.privacy (the DP-SGD training, which needs torch) so that the chain's
data types (chain.block) stay light: a process that only reads or writes blocks does not load
torch. learning.privacy re-exports everything here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: The delta the project reports epsilon at (well below 1 / the number of digits samples).
DEFAULT_DELTA = 1e-5
MECHANISMS = ("rdp", "prv")
#: Keys of the DP parameters dict an update carries (DpReport.to_dict).
DP_PARAMS_KEYS = frozenset(
    {"accountant", "noise_multiplier", "max_grad_norm", "sample_rate", "steps", "epsilon", "delta"}
)
#: Bound on a declared step count (a round trains far fewer; keeps the accountant's work sane).
MAX_STEPS = 2**32
#: Keys a genesis `training.dp` dict may hold (the first two are required).
DP_GENESIS_KEYS = frozenset({"noise_multiplier", "max_grad_norm", "delta", "accountant"})
#: Relative tolerance when re-deriving a declared epsilon: the accountants use floating point
#: (scipy, numpy FFTs), so another machine or library version may differ in the last digits.
EPSILON_RTOL = 1e-6


def _library_accountant(mechanism: str) -> Any:
    # Imported here: importing opacus takes seconds, and peers without DP never need it.
    from opacus.accountants import PRVAccountant, RDPAccountant

    if mechanism == "rdp":
        return RDPAccountant()
    if mechanism == "prv":
        return PRVAccountant()
    raise ValueError(f"unknown accountant {mechanism!r}; expected one of {MECHANISMS}")


def _epsilon(history: list[tuple[float, float, int]], delta: float, mechanism: str) -> float:
    """Epsilon of a composition of subsampled Gaussian mechanisms, by Opacus' accountant."""
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    # Runs of one same mechanism compose as one entry of their summed steps (the same
    # composition, and exact for RDP, which is additive): a peer's rounds all share (sigma, q),
    # so its total costs one accountant evaluation however many rounds it has trained.
    merged: dict[tuple[float, float], int] = {}
    for s, q, t in history:
        if t > 0 and q > 0:
            key = (float(s), float(q))
            merged[key] = merged.get(key, 0) + int(t)
    return _composed_epsilon(tuple((s, q, t) for (s, q), t in merged.items()), delta, mechanism)


@functools.lru_cache(maxsize=1024)
def _composed_epsilon(entries: tuple[tuple[float, float, int], ...], delta: float,
                      mechanism: str) -> float:
    # Cached: a committee member checks every update's declared epsilon, and a peer's
    # parameters repeat round after round; one evaluation takes ~50 ms.
    if not entries:
        return 0.0
    if any(s <= 0.0 for s, _, _ in entries):
        return math.inf  # no noise: nothing is private
    acc = _library_accountant(mechanism)
    # Opacus keeps (noise_multiplier, sample_rate, steps) triples and composes them in
    # get_epsilon; filling the history directly is what step() would build, one call per step.
    acc.history = list(entries)
    return float(acc.get_epsilon(delta=delta))


def round_epsilon(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float = DEFAULT_DELTA,
    mechanism: str = "rdp",
) -> float:
    """Epsilon at delta of `steps` DP-SGD steps with the given noise and Poisson sampling rate."""
    return _epsilon([(noise_multiplier, sample_rate, steps)], delta, mechanism)


@dataclass(frozen=True)
class DpReport:
    """The DP parameters of one local training run and the epsilon (at delta) they spent."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    epsilon: float
    delta: float = DEFAULT_DELTA
    accountant: str = "rdp"

    def to_dict(self) -> dict:
        """The DP parameters dict a signed update carries and the block records (CBOR-safe)."""
        return {
            "accountant": self.accountant,
            "noise_multiplier": float(self.noise_multiplier),
            "max_grad_norm": float(self.max_grad_norm),
            "sample_rate": float(self.sample_rate),
            "steps": int(self.steps),
            "epsilon": float(self.epsilon),
            "delta": float(self.delta),
        }

    @classmethod
    def from_dict(cls, d: object, check: bool = True) -> DpReport:
        """Parse an untrusted DP parameters dict; with check, re-derive epsilon from the others.

        Raises ValueError on a malformed dict or (check) a declared epsilon the parameters do
        not give. The parameters themselves cannot be verified: a peer could declare noise it
        did not add. The check only stops a peer from understating what its own claim costs."""
        if not isinstance(d, dict) or set(d) != DP_PARAMS_KEYS:
            raise ValueError(f"DP parameters must be a dict with keys {sorted(DP_PARAMS_KEYS)}")
        # Texts name types, never the values: these dicts come from the network.
        if not isinstance(d["accountant"], str) or d["accountant"] not in MECHANISMS:
            raise ValueError(f"accountant must be one of {MECHANISMS}")
        steps = d["steps"]
        if not isinstance(steps, int) or isinstance(steps, bool) or not 0 <= steps < MAX_STEPS:
            raise ValueError(f"steps must be an int in [0, {MAX_STEPS}), got "
                             f"{type(steps).__name__}")
        floats = {}
        for k in ("noise_multiplier", "max_grad_norm", "sample_rate", "epsilon", "delta"):
            v = d[k]
            # An int beyond 2**53 has no exact float, and float() of a huge one overflows.
            if not isinstance(v, (int, float)) or isinstance(v, bool) or \
                    (isinstance(v, int) and abs(v) > 2**53) or math.isnan(v):
                raise ValueError(f"{k} must be a number, got {type(v).__name__}")
            floats[k] = float(v)
        if not (floats["noise_multiplier"] >= 0 and math.isfinite(floats["noise_multiplier"])):
            raise ValueError("noise_multiplier must be finite and >= 0")
        if not (0 < floats["max_grad_norm"] < math.inf):
            raise ValueError("max_grad_norm must be finite and > 0")
        if not 0 < floats["sample_rate"] <= 1:
            raise ValueError("sample_rate must be in (0, 1]")
        if not 0 < floats["delta"] < 1:
            raise ValueError("delta must be in (0, 1)")
        report = cls(steps=steps, accountant=d["accountant"], **floats)
        if check:
            report.check_epsilon()
        return report

    def check_epsilon(self) -> None:
        """Raise ValueError unless the declared epsilon is the one the parameters give."""
        expected = round_epsilon(self.noise_multiplier, self.sample_rate, self.steps,
                                 self.delta, self.accountant)
        if not math.isclose(self.epsilon, expected, rel_tol=EPSILON_RTOL):
            raise ValueError(f"declared epsilon {self.epsilon} != {expected} re-derived")


def _number(d: Mapping[str, Any], key: str) -> float:
    v = d[key]
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise ValueError(f"{key} must be a finite number, got {type(v).__name__}")
    return float(v)


@dataclass(frozen=True)
class DpPolicy:
    """The DP-SGD a network's genesis demands of every peer (`training.dp`), with the training
    hyper-parameters that fix each update's sampling rate and step count.

    Every peer trains with exactly these parameters, and an update must declare them: weaker
    noise would spend more privacy than the network promises, and stronger noise is refused
    too, because the noise-debiased scoring subtracts what an update declares, and a large
    declared noise would hide a poisoned update in the noise's own fluctuation."""

    noise_multiplier: float
    max_grad_norm: float
    epochs: int
    lr: float
    batch_size: int
    delta: float = DEFAULT_DELTA
    accountant: str = "rdp"

    @classmethod
    def from_training(cls, training: Mapping[str, Any]) -> DpPolicy | None:
        """Read a genesis `training` dict: None without a `dp` entry; ValueError (naming the
        problem) if `dp` or the hyper-parameters it depends on are malformed."""
        dp = training.get("dp")
        if dp is None:
            return None
        if not isinstance(dp, Mapping):
            raise ValueError("dp must be a dict")
        if not {"noise_multiplier", "max_grad_norm"} <= set(dp) <= DP_GENESIS_KEYS:
            raise ValueError(f"dp needs noise_multiplier and max_grad_norm and may hold only "
                             f"{sorted(DP_GENESIS_KEYS)}, got {sorted(dp)}")
        sigma, clip = _number(dp, "noise_multiplier"), _number(dp, "max_grad_norm")
        delta = _number(dp, "delta") if "delta" in dp else DEFAULT_DELTA
        accountant = dp.get("accountant", "rdp")
        if not sigma > 0:
            # sigma 0 is clipping without noise: epsilon is infinite, nothing is private.
            raise ValueError(f"noise_multiplier must be > 0, got {sigma}")
        if not clip > 0:
            raise ValueError(f"max_grad_norm must be > 0, got {clip}")
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        if accountant not in MECHANISMS:
            raise ValueError(f"accountant must be one of {MECHANISMS}, got {accountant!r}")
        try:
            epochs, lr = int(training["epochs"]), float(training["lr"])
            batch_size = int(training["batch_size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"DP needs epochs, lr and batch_size: {exc}") from None
        if epochs < 1 or batch_size < 1 or not lr > 0:
            raise ValueError(f"bad hyper-parameters for DP: epochs={epochs} lr={lr} "
                             f"batch_size={batch_size}")
        return cls(sigma, clip, epochs, lr, batch_size, delta, accountant)

    def schedule(self, samples: int) -> tuple[float, int]:
        """(sample_rate, steps) of a DP-SGD run on `samples` samples, as train_local_dp has it."""
        return min(1.0, self.batch_size / samples), self.epochs * math.ceil(samples / self.batch_size)

    def report(self, samples: int) -> DpReport:
        """What a run under this policy on `samples` samples declares (train_local_dp's report)."""
        q, steps = self.schedule(samples)
        return DpReport(self.noise_multiplier, self.max_grad_norm, q, steps,
                        round_epsilon(self.noise_multiplier, q, steps, self.delta,
                                      self.accountant), self.delta, self.accountant)

    def check(self, report: DpReport, samples: int) -> None:
        """Raise ValueError unless `report` is what training `samples` samples under this
        policy declares, its epsilon included."""
        if report.noise_multiplier < self.noise_multiplier:
            raise ValueError(f"weaker noise than the genesis requires (noise_multiplier "
                             f"{report.noise_multiplier} < {self.noise_multiplier})")
        if report.noise_multiplier > self.noise_multiplier:
            raise ValueError(f"more noise than the genesis sets (noise_multiplier "
                             f"{report.noise_multiplier} > {self.noise_multiplier}) would "
                             f"hide the update from noise-debiased scoring")
        if report.max_grad_norm != self.max_grad_norm:
            raise ValueError(f"max_grad_norm {report.max_grad_norm} is not the genesis' "
                             f"{self.max_grad_norm}")
        if (report.delta, report.accountant) != (self.delta, self.accountant):
            raise ValueError(f"epsilon at delta {report.delta} by {report.accountant}, the "
                             f"genesis reports at {self.delta} by {self.accountant}")
        if (report.sample_rate, report.steps) != self.schedule(samples):
            raise ValueError(f"sample_rate {report.sample_rate} and steps {report.steps} do "
                             f"not follow from {samples} samples and the genesis training")
        report.check_epsilon()

    def noise_variance(self, report: DpReport | None, samples: int) -> float:
        """Per-coordinate variance of the noise in an update trained as `report` declares (0
        without a report)."""
        return 0.0 if report is None else update_noise_variance(report, self.lr, samples)


@dataclass
class PrivacyAccountant:
    """One peer's privacy budget over rounds: composes each round's DP-SGD steps (Opacus RDP,
    or PRV) and reports epsilon at delta for the last round and in total."""

    mechanism: str = "rdp"
    #: (noise_multiplier, sample_rate, steps) per recorded round, in order
    rounds: list[tuple[float, float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"unknown accountant {self.mechanism!r}; expected {MECHANISMS}")

    def record(self, report: DpReport) -> None:
        """Add one round's training (its report) to the budget."""
        self.spend(report.noise_multiplier, report.sample_rate, report.steps)

    def spend(self, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        """Add `steps` DP-SGD steps with the given noise and sampling rate to the budget."""
        if steps < 0 or not 0 < sample_rate <= 1 or noise_multiplier < 0:
            raise ValueError(f"bad DP step: sigma={noise_multiplier} q={sample_rate} T={steps}")
        self.rounds.append((float(noise_multiplier), float(sample_rate), int(steps)))

    def epsilon(self, delta: float = DEFAULT_DELTA) -> float:
        """Total epsilon at delta over every recorded round."""
        return _epsilon(self.rounds, delta, self.mechanism)

    def last_round_epsilon(self, delta: float = DEFAULT_DELTA) -> float:
        """Epsilon at delta of the last recorded round alone (0 if none)."""
        return _epsilon(self.rounds[-1:], delta, self.mechanism)


def update_noise_variance(report: DpReport, lr: float, n_samples: int) -> float:
    """Per-coordinate variance of the DP noise in a state trained as `report` says: each of
    the steps adds lr * N(0, (sigma C)^2) / (expected batch size) to every parameter."""
    if report.noise_multiplier == 0 or report.steps == 0:
        return 0.0
    expected_batch = report.sample_rate * n_samples
    per_step_std = lr * report.noise_multiplier * report.max_grad_norm / expected_batch
    return report.steps * per_step_std**2
