"""One CMFL round decision, as pure functions: the single code path of peers and harness.

`chain.round_rules.derive_block` and the experiment harness both call `select_round` (which
trainers' updates to aggregate; needed before the updates themselves are fetched) and then
`finish_round` (aggregate them and elect the next committee). `decide_round` does both.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from learning.choice import ChoiceConfig
from learning.aggregation import (aggregate_clipped, aggregate_weighted, cap_samples,
                                  collinear_extras, find_coherent, find_collinear,
                                  find_far, find_far_pairwise, find_misaligned)
from learning.election import elect_middle
from learning.scoring import combine_scores
from learning.selection import rank_by_score, select_highest_distance, select_lowest_distance
from learning.tensors import ModelState

RULES = ("S1", "S2", "auto")
SCORINGS = ("sum", "median")
ELECTIONS = ("middle", "trusted", "robust")
TYPICALS = ("lower_half", "median", "floored")
AGGREGATES = ("mean", "clipped", "clipped-aligned")
#: clipped aggregates: below this many scored trainers the committee's outliers are dropped
MIN_GEOMETRY = 3
#: "floored": the lower-half median, but never below this share of the median of all
FLOOR_SHARE = 0.85


@dataclass(frozen=True)
class RoundConfig:
    """The genesis `selection` settings that shape a round's decision."""

    #: S1 lowest distances (attacks), S2 highest (non-IID, no attack), auto: chosen by evidence
    rule: str = "S1"
    #: share of scored trainers aggregated by S1/S2 (auto keeps at least this share)
    fraction: float = 0.5
    #: sum (CMFL) or median over committee members (robust to lying members)
    scoring: str = "sum"
    #: middle (CMFL), trusted (middle of the trainers that passed this round's checks) or
    #: robust (middle of every scored trainer, barring clones and recorded misbehaviour)
    election: str = "middle"
    #: auto: a trainer is an outlier past this many times the typical honest distance
    outlier_ratio: float = 1.3
    #: auto: the typical honest distance, median of the lower half of the scores (breaks when
    #: colluders fill a quarter of the trainers) or of all of them (breaks at a half)
    typical: str = "lower_half"
    #: auto: > 0 drops trainers whose score vectors match another trainer's to within this
    #: share of the typical distance (identical updates from distinct data: colluders' copies)
    clone_ratio: float = 0.0
    #: < 1: the aggregate leaves out selected updates whose cosine similarity with another
    #: selected update exceeds this (learning.aggregation.find_collinear: staggered copies)
    max_cosine: float = 1.0
    #: "median": declared sample counts are capped at the selected updates' lower median
    #: before weighting (learning.aggregation.cap_samples); "": weighted as declared
    sample_cap: str = ""
    #: "mean": the sample-weighted mean of the selected updates; "clipped": auto selects every
    #: scored trainer, each aggregated update's deviation from the coordinate-wise median
    #: clipped to the median deviation (learning.aggregation.aggregate_clipped);
    #: "clipped-aligned": the same, leaving out updates pointing away from that median
    aggregate: str = "mean"
    #: clipped aggregates: > 1 also leaves out updates farther from the coordinate-wise median
    #: than this many times the median distance to it (far updates would lift the clipping
    #: radius; learning.aggregation.find_far); 0 keeps every one
    drop_ratio: float = 0.0
    #: clipped aggregates: > 1 first leaves out updates farther from the coordinate-wise median
    #: than this many times the lower quartile of the pairwise distances (a tight group cannot
    #: shrink it; learning.aggregation.find_far_pairwise); 0 off
    pair_far: float = 0.0
    #: clipped aggregates: in (0, 1) leaves out updates whose deviation from the mean has a
    #: cosine above this with another's (colluders pushing together;
    #: learning.aggregation.find_coherent); 0 off
    coherence: float = 0.0
    #: judged rounds (learning.choice, genesis `selection.choice`): every member trains and
    #: judges, the block's model is the candidate the members' votes choose; None: scored
    #: rounds (the committee scores, the rest of this config selects and aggregates)
    choice: ChoiceConfig | None = None

    @property
    def judged(self) -> bool:
        """Whether rounds are judged (every member trains and votes on candidate models)."""
        return self.choice is not None

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"selection rule must be one of {RULES}, got {self.rule!r}")
        if self.scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {self.scoring!r}")
        if self.election not in ELECTIONS:
            raise ValueError(f"election must be one of {ELECTIONS}, got {self.election!r}")
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if not self.outlier_ratio > 1.0:
            raise ValueError(f"outlier_ratio must be > 1, got {self.outlier_ratio}")
        if self.typical not in TYPICALS:
            raise ValueError(f"typical must be one of {TYPICALS}, got {self.typical!r}")
        if not 0.0 <= self.clone_ratio < 1.0:
            raise ValueError(f"clone_ratio must be in [0, 1), got {self.clone_ratio}")
        if not 0.0 < self.max_cosine <= 1.0:
            raise ValueError(f"max_cosine must be in (0, 1], got {self.max_cosine}")
        if self.sample_cap not in ("", "median"):
            raise ValueError(f"sample_cap must be '' or 'median', got {self.sample_cap!r}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, got {self.aggregate!r}")
        if not (self.drop_ratio == 0.0 or self.drop_ratio > 1.0):
            raise ValueError(f"drop_ratio must be 0 (off) or > 1, got {self.drop_ratio}")
        if not (self.pair_far == 0.0 or self.pair_far > 1.0):
            raise ValueError(f"pair_far must be 0 (off) or > 1, got {self.pair_far}")
        if not 0.0 <= self.coherence < 1.0:
            raise ValueError(f"coherence must be in [0, 1), got {self.coherence}")

    @classmethod
    def from_selection(cls, selection: Mapping[str, Any]) -> RoundConfig:
        """Read a genesis `selection` dict; absent keys take the defaults above."""
        d = cls()
        return cls(rule=str(selection.get("rule", d.rule)),
                   fraction=float(selection.get("fraction", d.fraction)),
                   scoring=str(selection.get("scoring", d.scoring)),
                   election=str(selection.get("election", d.election)),
                   outlier_ratio=float(selection.get("outlier_ratio", d.outlier_ratio)),
                   typical=str(selection.get("typical", d.typical)),
                   clone_ratio=float(selection.get("clone_ratio", d.clone_ratio)),
                   max_cosine=float(selection.get("max_cosine", d.max_cosine)),
                   sample_cap=str(selection.get("sample_cap", d.sample_cap)),
                   aggregate=str(selection.get("aggregate", d.aggregate)),
                   drop_ratio=float(selection.get("drop_ratio", d.drop_ratio)),
                   pair_far=float(selection.get("pair_far", d.pair_far)),
                   coherence=float(selection.get("coherence", d.coherence)),
                   choice=choice_config(selection.get("choice")))

    def to_selection(self) -> dict[str, Any]:
        """The genesis `selection` dict for this config (the issue-14 keys only when set, so
        existing genesis files and their hashes stay as they were)."""
        out: dict[str, Any] = {"rule": self.rule, "fraction": self.fraction,
                               "scoring": self.scoring, "election": self.election,
                               "outlier_ratio": self.outlier_ratio}
        d = RoundConfig()
        if self.typical != d.typical:
            out["typical"] = self.typical
        if self.clone_ratio != d.clone_ratio:
            out["clone_ratio"] = self.clone_ratio
        if self.max_cosine != d.max_cosine:
            out["max_cosine"] = self.max_cosine
        if self.sample_cap != d.sample_cap:
            out["sample_cap"] = self.sample_cap
        if self.aggregate != d.aggregate:
            out["aggregate"] = self.aggregate
        if self.drop_ratio != d.drop_ratio:
            out["drop_ratio"] = self.drop_ratio
        if self.pair_far != d.pair_far:
            out["pair_far"] = self.pair_far
        if self.coherence != d.coherence:
            out["coherence"] = self.coherence
        if self.choice is not None:
            out["choice"] = choice_settings(self.choice)
        return out


#: the genesis `selection.choice` keys (learning.choice.ChoiceConfig's fields)
CHOICE_KEYS = ("subsets", "size", "statistic", "tolerate", "reference", "normalize", "pledged",
               "clip_subsets")
#: keys written only when set: judged genesis files from before them keep their hash
_OPTIONAL_FLAGS = ("pledged", "clip_subsets")


def choice_config(settings: Any) -> ChoiceConfig | None:
    """A genesis `selection.choice` dict as a ChoiceConfig (None: not judged); ValueError
    names an unknown key or a bad value."""
    if settings is None:
        return None
    if not isinstance(settings, Mapping):
        raise ValueError(f"selection.choice must be a table, got {settings!r}")
    unknown = sorted(set(settings) - set(CHOICE_KEYS))
    if unknown:
        raise ValueError(f"selection.choice has unknown keys {unknown}; known: {CHOICE_KEYS}")
    d = ChoiceConfig()
    if "committee" == settings.get("reference"):
        raise ValueError("selection.choice.reference 'committee' needs a scoring committee; "
                         "judged rounds have none")
    return ChoiceConfig(subsets=int(settings.get("subsets", d.subsets)),
                        size=int(settings.get("size", d.size)),
                        statistic=str(settings.get("statistic", d.statistic)),
                        tolerate=float(settings.get("tolerate", d.tolerate)),
                        reference=str(settings.get("reference", d.reference)),
                        normalize=str(settings.get("normalize", d.normalize)),
                        pledged=_flag("pledged", settings.get("pledged", d.pledged)),
                        clip_subsets=_flag("clip_subsets",
                                           settings.get("clip_subsets", d.clip_subsets)))


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"selection.choice.{key} must be true or false, got {value!r}")
    return value


def choice_settings(config: ChoiceConfig) -> dict[str, Any]:
    """The genesis `selection.choice` dict of a ChoiceConfig (every key written, but the
    `_OPTIONAL_FLAGS` only when set: judged genesis files from before them keep their hash)."""
    return {k: getattr(config, k) for k in CHOICE_KEYS
            if k not in _OPTIONAL_FLAGS or getattr(config, k)}


@dataclass(frozen=True)
class RoundSelection:
    """What the score vectors decide before any update is needed."""

    combined: dict[str, float]
    selected: tuple[str, ...]
    #: the rule applied: "S1" or "S2" (auto resolves to one of them, or "S1+S2")
    applied: str
    #: trainers whose combined distance marks them as outliers this round
    outliers: tuple[str, ...] = ()
    #: committee members whose score vector contradicts the others' (recorded misbehaviour)
    dissenters: tuple[str, ...] = ()
    #: trainers whose score vectors coincide (find_clones; also among the outliers)
    clones: tuple[str, ...] = ()


@dataclass(frozen=True)
class RoundDecision:
    """A round's outcome: scores, the aggregated trainers, the new model and next committee."""

    combined_scores: dict[str, float]
    selected: tuple[str, ...]
    new_state: ModelState
    next_committee: tuple[str, ...]
    applied: str = "S1"
    outliers: tuple[str, ...] = ()
    dissenters: tuple[str, ...] = field(default_factory=tuple)
    #: the selected trainers whose updates went into the aggregate (selected minus collinear)
    aggregated: tuple[str, ...] = ()


def rank_agreement(vector: Mapping[str, float], consensus: Mapping[str, float]) -> float:
    """Spearman rank correlation of one member's distances with the consensus, over the
    trainers both score (ties by id, so exact and order-free); 1.0 if fewer than 3 trainers."""
    common = sorted(set(vector) & set(consensus))
    n = len(common)
    if n < 3:
        return 1.0
    mine = {t: i for i, t in enumerate(rank_by_score({t: vector[t] for t in common}))}
    theirs = {t: i for i, t in enumerate(rank_by_score({t: consensus[t] for t in common}))}
    d2 = sum((mine[t] - theirs[t]) ** 2 for t in common)  # an int: exact
    return 1.0 - 6.0 * d2 / (n * (n * n - 1))


def find_dissenters(
    vectors: Mapping[str, Mapping[str, float]], outlier_ratio: float = 1.3,
    typical: str = "lower_half",
) -> tuple[str, ...]:
    """Members who rank the consensus outliers closer than the consensus inliers.

    The consensus is the median over members, which one liar cannot move; its outliers are the
    updates far from the typical honest one (find_outliers). An honest member ranks them last,
    whatever its local data; a member that scores against a poisoned model, or lies to pull
    its colluders in, ranks them first. Without outliers no one is accused: when every update
    is honest the rankings are noise, and disagreeing about noise is not misbehaviour."""
    if len(vectors) < 3:
        return ()
    consensus = combine_scores([dict(vectors[m]) for m in sorted(vectors)], "median")
    outliers = set(find_outliers(consensus, outlier_ratio, typical))
    if not outliers or len(outliers) == len(consensus):
        return ()
    dissenters = []
    for member in sorted(vectors):
        ranks = {t: i for i, t in enumerate(rank_by_score(
            {t: vectors[member][t] for t in consensus if t in vectors[member]}))}
        far = [ranks[t] for t in outliers if t in ranks]
        near = [ranks[t] for t in consensus if t not in outliers and t in ranks]
        if far and near and sum(far) * len(near) < sum(near) * len(far):  # mean(far) < mean(near)
            dissenters.append(member)
    return tuple(dissenters)


def typical_distance(combined: Mapping[str, float], typical: str = "lower_half") -> float:
    """The typical honest distance: the median of the lower half of the scores, or of all.

    Colluders who sit close to everyone (inside the honest spread) take the lowest ranks, so
    the lower-half median is theirs once they fill a quarter of the trainers; the median of
    all ranks stays between two honest scores while they are fewer than half."""
    ranked = rank_by_score(dict(combined))
    pool = [combined[t] for t in ranked]
    if typical == "floored":
        return max(typical_distance(combined, "lower_half"),
                   FLOOR_SHARE * typical_distance(combined, "median"))
    if typical == "lower_half":
        pool = pool[: max(len(pool) // 2, 1)]
    return pool[len(pool) // 2] if len(pool) % 2 else (
        pool[len(pool) // 2 - 1] + pool[len(pool) // 2]) / 2


def find_outliers(combined: Mapping[str, float], ratio: float,
                  typical: str = "lower_half") -> tuple[str, ...]:
    """Trainers farther than `ratio` times the typical honest distance (typical_distance)."""
    if len(combined) < 2:
        return ()
    limit = ratio * typical_distance(combined, typical)
    return tuple(sorted(t for t in combined if not combined[t] <= limit))


def find_clones(vectors: Mapping[str, Mapping[str, float]], ratio: float) -> tuple[str, ...]:
    """Trainers whose distance to every member matches another trainer's to within `ratio`
    times that member's median reported distance: two peers training on their own data never
    send the same update, but colluders sending one crafted update (or copying an honest
    peer) do, and then their score vectors coincide. Each member's tolerance is its own, so a
    member that inflates its distances widens only its own; exact comparisons of the signed
    distances, so every peer agrees."""
    members = sorted(vectors)
    if not members or not ratio > 0:
        return ()
    trainers = sorted(set.intersection(*(set(vectors[m]) for m in members)))
    tol = {m: ratio * statistics.median(sorted(vectors[m][t] for t in trainers))
           for m in members} if trainers else {}
    # a member whose median is infinite (most updates unusable to it) tells clones apart
    # only by exact equality
    tol = {m: x if math.isfinite(x) else 0.0 for m, x in tol.items()}
    clones = set()
    for i, a in enumerate(trainers):
        for b in trainers[i + 1:]:
            if all(abs(vectors[m][a] - vectors[m][b]) <= tol[m] for m in members):
                clones.update((a, b))
    return tuple(sorted(clones))


def select_round(
    member_vectors: Mapping[str, Mapping[str, float]], config: RoundConfig
) -> RoundSelection:
    """Combine the committee's score vectors and choose the trainers to aggregate."""
    members = sorted(member_vectors)
    combined = combine_scores([dict(member_vectors[m]) for m in members], config.scoring)
    dissenters = find_dissenters(member_vectors, config.outlier_ratio, config.typical)
    n = len(combined)
    k = math.ceil(config.fraction * n) if n else 0
    if config.rule == "S1":
        return RoundSelection(combined, tuple(select_lowest_distance(combined, k)), "S1",
                              dissenters=dissenters)
    if config.rule == "S2":
        return RoundSelection(combined, tuple(select_highest_distance(combined, k)), "S2",
                              dissenters=dissenters)
    clones: tuple[str, ...] = ()
    if config.clone_ratio > 0 and combined:
        clones = find_clones(member_vectors, config.clone_ratio)
    rest = {t: s for t, s in combined.items() if t not in clones}
    outliers = tuple(sorted(set(find_outliers(rest, config.outlier_ratio, config.typical))
                            | set(clones)))
    inliers = {t: s for t, s in combined.items() if t not in outliers}
    if config.aggregate != "mean":
        # Clipping bounds every update's pull, so no trainer is dropped on the committee's word
        # (a captured committee would choose which honest updates make the model): every scored
        # trainer is selected, and what is left out of the aggregate is decided by the updates'
        # geometry alone (finish_round). Outliers and clones only inform the election.
        # With fewer than MIN_GEOMETRY trainers the updates' geometry cannot tell who is off
        # (two updates are each other's median): the committee's outliers are left out then.
        chosen = sorted(combined) if len(combined) >= MIN_GEOMETRY else sorted(inliers)
        return RoundSelection(combined, tuple(chosen), "clipped", outliers, dissenters, clones)
    if outliers or dissenters:
        # Evidence of attack: drop the outliers, then aggregate the closest, as S1 does, but
        # every inlier rather than a fixed share, so diverse honest data is not cut away.
        chosen = select_lowest_distance(inliers, max(k, len(inliers)))
        applied = "S1"
    else:
        chosen = sorted(combined)
        applied = "S1+S2"
    return RoundSelection(combined, tuple(chosen), applied, outliers, dissenters, clones)


def elect_committee(
    selection: RoundSelection,
    size: int,
    current_committee: tuple[str, ...],
    config: RoundConfig,
    excluded: frozenset[str] | set[str] = frozenset(),
) -> tuple[str, ...]:
    """The next committee, sorted: CMFL's middle of the score ranking, among trusted trainers.

    Recorded misbehaviour (`excluded`: equivocation proofs, twins, dissenters) bars a peer in
    every mode and is never re-seated. With fewer trusted candidates than seats the current
    committee stays, except that its excluded members' seats go to the trusted candidates, then
    to the other scored trainers not excluded, by rank."""
    combined = selection.combined
    if config.election == "middle":
        barred = set(excluded)
    else:
        # robust: colluders who sit just inside the outlier limit, at the bottom of the
        # ranking, would fill the middle of the inliers; the middle of every scored trainer
        # stays honest while they are fewer than a third of the trainers.
        barred = set(excluded) | set(
            selection.clones if config.election == "robust" else selection.outliers)
    candidates = {t: s for t, s in combined.items() if t not in barred}
    if len(candidates) >= size:
        return tuple(elect_middle(candidates, size))
    if not set(current_committee) & set(excluded):
        return tuple(sorted(current_committee))
    # a convicted member is never re-seated: its seat goes to the trusted candidates, then to
    # the other scored trainers not excluded, by rank
    seated = [m for m in sorted(current_committee) if m not in excluded]
    fill = [t for t in elect_middle(candidates, len(candidates)) if t not in seated]
    fill += [t for t in rank_by_score(combined) if t not in excluded and t not in seated
             and t not in fill]
    seated += fill[: size - len(seated)]
    if not seated:
        return tuple(sorted(current_committee))
    return tuple(sorted(seated))


def finish_round(
    base_state: ModelState,
    selection: RoundSelection,
    updates: Mapping[str, ModelState],
    samples: Mapping[str, int],
    committee_size: int,
    current_committee: tuple[str, ...],
    config: RoundConfig,
    excluded: frozenset[str] | set[str] = frozenset(),
) -> RoundDecision:
    """Aggregate the selected updates (sample-weighted, bit-reproducible) and elect.

    With config.max_cosine < 1 the selected updates that are near-parallel to another selected
    one are left out of the aggregate; with config.sample_cap the declared counts are capped."""
    missing = [t for t in selection.selected if t not in updates or t not in samples]
    if missing:
        raise KeyError(f"selected trainers without an update: {missing}")
    chosen = {t: updates[t] for t in selection.selected}
    if config.aggregate == "mean":
        collinear = set(find_collinear(base_state, chosen, config.max_cosine))
    else:
        # copies count once: each near-parallel group keeps its first trainer
        collinear = set(collinear_extras(base_state, chosen, config.max_cosine))
    if config.aggregate != "mean" and config.pair_far > 1.0:
        collinear |= set(find_far_pairwise(
            base_state, {t: chosen[t] for t in selection.selected if t not in collinear},
            config.pair_far))
    if config.aggregate != "mean" and config.coherence > 0.0:
        collinear |= set(find_coherent(
            base_state, {t: chosen[t] for t in selection.selected if t not in collinear},
            config.coherence))
    if config.aggregate != "mean" and config.drop_ratio > 1.0:
        collinear |= set(find_far(
            base_state, {t: chosen[t] for t in selection.selected if t not in collinear},
            config.drop_ratio))
    if config.aggregate == "clipped-aligned":
        collinear |= set(find_misaligned(
            base_state, {t: chosen[t] for t in selection.selected if t not in collinear}))
    aggregated = tuple(t for t in selection.selected if t not in collinear)
    weights = {t: samples[t] for t in aggregated}
    if config.sample_cap == "median":
        weights = cap_samples(weights)
    if config.aggregate != "mean":
        new_state = aggregate_clipped(base_state, {t: chosen[t] for t in aggregated}, weights)
    else:
        new_state = aggregate_weighted(base_state, {t: chosen[t] for t in aggregated}, weights)
    committee = elect_committee(selection, committee_size, current_committee, config, excluded)
    return RoundDecision(selection.combined, selection.selected, new_state, committee,
                         selection.applied, selection.outliers, selection.dissenters,
                         aggregated)


def decide_round(
    base_state: ModelState,
    member_vectors: Mapping[str, Mapping[str, float]],
    updates: Mapping[str, ModelState],
    samples: Mapping[str, int],
    committee_size: int,
    current_committee: tuple[str, ...],
    config: RoundConfig,
    excluded: frozenset[str] | set[str] = frozenset(),
) -> RoundDecision:
    """select_round then finish_round: the whole learning decision of one round."""
    selection = select_round(member_vectors, config)
    return finish_round(base_state, selection, updates, samples, committee_size,
                        current_committee, config, excluded)
