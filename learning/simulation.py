"""In-memory federated-learning runs for the robustness harness: CMFL or a baseline rule.

A run is a pure function of its `RunSpec`: the same spec gives the same accuracies. CMFL runs
go through `learning.cmfl.select_round` / `finish_round`, the code the peers run in
`chain.round_rules.derive_block`; only the transport is missing.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, replace

import numpy as np

from bft.quorum import quorum_size
from learning.attacks import (Attack, Omniscient, RoundView, committed_lies, leader_quorum,
                             lie_votes, make_attack, selective_reveal)
from learning.baselines import BASELINES, aggregate_baseline
from learning.choice import (RECOMMENDED, ChoiceConfig, candidate_models, candidate_sets,
                             choice_seed, choose, judge_votes)
from learning.cmfl import RoundConfig, finish_round, select_round
from learning.compression import UpdateCodec, round_trip
from learning.data import Dataset, load_digits_split, shard_indices, subset
import torch

from learning.model import ModelSpec, build_model, initial_state, load_state
from learning.privacy import DpPolicy, DpReport, noise_consistent, train_local_dp
from learning.scoring import score_updates
from learning.task import Task, load_task, num_classes, split_by_group
from learning.tensors import ModelState, state_hash
from learning.training import evaluate, train_local

#: CMFL variants by name: the genesis `selection` settings they stand for.
CMFL_RULES: dict[str, RoundConfig] = {
    "cmfl-s1": RoundConfig(rule="S1", scoring="sum", election="middle"),
    "cmfl-s2": RoundConfig(rule="S2", scoring="sum", election="middle"),
    "cmfl-auto": RoundConfig(rule="auto", scoring="median", election="trusted"),
    # issue 14's candidate: cmfl-auto whose typical distance a colluding minority at the
    # bottom of the ranking cannot pull down, and which drops identical score vectors
    "cmfl-robust": RoundConfig(rule="auto", scoring="median", election="robust",
                               typical="floored", clone_ratio=0.02),
    # cmfl-robust whose aggregate leaves out near-parallel updates and caps declared counts
    "cmfl-robust2": RoundConfig(rule="auto", scoring="median", election="robust",
                                typical="floored", clone_ratio=0.02, max_cosine=0.9,
                                sample_cap="median"),
    # cmfl-robust2 whose aggregate clips every update around the coordinate-wise median
    # instead of dropping outliers (learning.aggregation.aggregate_clipped)
    "cmfl-clip": RoundConfig(rule="auto", scoring="median", election="robust",
                             typical="floored", clone_ratio=0.02, max_cosine=0.9,
                             sample_cap="median", aggregate="clipped"),
    # cmfl-clip leaving out updates with a non-positive inner product with the median
    "cmfl-clip-aligned": RoundConfig(rule="auto", scoring="median", election="robust",
                                     typical="floored", clone_ratio=0.02, max_cosine=0.9,
                                     sample_cap="median", aggregate="clipped-aligned"),
    # cmfl-clip-aligned that also drops trainers past 2x / 1.3x the typical distance
    "cmfl-clip-far": RoundConfig(rule="auto", scoring="median", election="robust",
                                 typical="floored", clone_ratio=0.02, max_cosine=0.9,
                                 sample_cap="median", aggregate="clipped-aligned",
                                 drop_ratio=2.0),
    # cmfl-clip-far that first leaves out far updates by the pairwise scale and updates that
    # deviate from the mean together (learning.aggregation.find_far_pairwise, find_coherent)
    "cmfl-coherent": RoundConfig(rule="auto", scoring="median", election="robust",
                                 typical="floored", clone_ratio=0.02, max_cosine=0.9,
                                 sample_cap="median", aggregate="clipped-aligned",
                                 drop_ratio=2.0, pair_far=2.0, coherence=0.5),
    # the same with a tighter coherence test (colluders keep sqrt(coherence) of their push)
    "cmfl-coherent-tight": RoundConfig(rule="auto", scoring="median", election="robust",
                                       typical="floored", clone_ratio=0.02, max_cosine=0.9,
                                       sample_cap="median", aggregate="clipped-aligned",
                                       drop_ratio=2.0, pair_far=2.0, coherence=0.2),
    # the same without find_far's median-distance test
    "cmfl-coherent-nf": RoundConfig(rule="auto", scoring="median", election="robust",
                                    typical="floored", clone_ratio=0.02, max_cosine=0.9,
                                    sample_cap="median", aggregate="clipped-aligned",
                                    pair_far=2.0, coherence=0.5),
    "cmfl-clip-drop": RoundConfig(rule="auto", scoring="median", election="robust",
                                  typical="floored", clone_ratio=0.02, max_cosine=0.9,
                                  sample_cap="median", aggregate="clipped-aligned",
                                  drop_ratio=1.3),
}
#: Rules where the peers judge candidate aggregates on their own data (learning.choice):
#: every peer trains and every peer judges; colluding judges lie (attacks.lie_votes).
JUDGED_RULES: dict[str, ChoiceConfig] = {
    "cmfl-choose": RECOMMENDED,
    # the peers' default (cmfl-choose-clipped, its pledge a RunSpec field): subsets of
    # clipped updates (docs/learning.md, tenth pass)
    "cmfl-choose-clipped": replace(RECOMMENDED, clip_subsets=True),
    # the first form: the lower median of the raw loss decreases (the lie breaks it)
    "cmfl-choose-plain": ChoiceConfig(),
}
RULE_NAMES = tuple(CMFL_RULES) + tuple(JUDGED_RULES) + BASELINES


@dataclass(frozen=True)
class RunSpec:
    """Everything one run depends on."""

    rule: str = "cmfl-choose"
    attack: str = "none"
    fraction: float = 0.3
    partition: str = "iid"
    alpha: float = 0.5
    seed: int = 0
    n_peers: int = 20
    committee_size: int = 5
    rounds: int = 40
    epochs: int = 2
    lr: float = 0.1
    batch_size: int = 16
    layers: tuple[int, ...] = (64, 64, 10)
    #: overrides the CMFL_RULES config of a cmfl-* rule
    config: RoundConfig | None = None
    #: DP-SGD on every peer when > 0 (the genesis training.dp), with this clipping norm; CMFL
    #: members then score by noise-debiased distance, as the peers do
    dp_noise_multiplier: float = 0.0
    dp_max_grad_norm: float = 1.0
    #: False: attackers skip the DP noise (train without it) but declare the honest parameters
    dp_attacker_noise: bool = True
    #: members validate on their own data (design notes step 6): "" off, "own" scales each
    #: distance by the update's loss over the member's own model's, "base" over the base's
    validate: str = ""
    #: the learning task (learning.task.BUILTIN_TASKS): "digits" is the MLP of `layers` on the
    #: digits, as before tasks; another trains the task's model on its bundled data set, split
    #: by the task's institution groups when `partition` is "dirichlet" and it has them
    task: str = "digits"
    #: the genesis `compression`: every trainer's update is what its receivers decode of it
    #: (learning.compression), topk with each peer's error-feedback residual
    compression: UpdateCodec = UpdateCodec()
    #: a cmfl-* rule whose committee aggregate is then judged by every peer among candidates
    #: (learning.choice with reference "committee"); None: the committee's aggregate stands
    judge: ChoiceConfig | None = None
    #: judged rules: the lying judges vote before seeing the honest votes (a commit-reveal
    #: of the votes); they aim with their own data's votes standing in for the honest ones
    blind_liars: bool = False
    #: > 0: under the commit-reveal, the liars commit this many different lies blind and
    #: reveal the subset that suits them once the honest votes are out; a liar who withholds
    #: its reveal is excluded from judging for the rest of the run
    selective_reveal: int = 0
    #: judged rules, the first-quorum alternative (measured and rejected: docs/learning.md,
    #: seventh pass; the peers wait for every vote): the honest votes arrive in a random
    #: order, an honest leader counts the first quorum, and the liars race it: they lie having
    #: seen the first quorum - liars - 1 honest votes and are counted with the next ones; when
    #: a liar leads (members in turn, by round) they see and count every vote
    racing_liars: bool = False
    #: judged rules, the current protocol (liars see every vote): in rounds a colluder leads
    #: (members in turn, by round) the block counts the liars' lies plus the quorum - liars
    #: honest votes they pick (attacks.leader_quorum; any quorum re-derives)
    colluding_leader: bool = False
    #: judged rules under a pledge (a commit-reveal whose late pledges count only if enough
    #: reveals listed them): None off; k: the liars have seen k random honest votes when they
    #: pledge, their own data's votes stand in for the rest (0 is blind_liars); all count
    peeking_liars: int | None = None
    #: the pledge with a colluding leader: in colluder-led rounds the liars see honest - (quorum
    #: - 2f) honest votes and the leader counts the quorum - liars honest votes they pick; in
    #: honest-led rounds they see honest - (n - 2f) (the most a late pledge can have seen)
    pledge_leader: bool = False
    #: judged rules: what the lying judges aim at (attacks.LIAR_TARGETS): "colluders" (the
    #: candidate holding the most colluders) or "worst" (the one the honest judges like least)
    liar_target: str = "colluders"

    @property
    def dp(self) -> DpPolicy | None:
        """The DP policy of the run's genesis, None without DP."""
        if not self.dp_noise_multiplier > 0:
            return None
        return DpPolicy(self.dp_noise_multiplier, self.dp_max_grad_norm, self.epochs, self.lr,
                        self.batch_size)


@dataclass
class RunResult:
    """Per-round test accuracy plus, for CMFL, who was selected and who sat on the committee."""

    spec: RunSpec
    accuracy: list[float] = field(default_factory=list)
    #: per round, every metric of the task on the test split (digits: {"accuracy": ..})
    metrics: list[dict[str, float]] = field(default_factory=list)
    attackers_selected: list[int] = field(default_factory=list)
    attackers_on_committee: list[int] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    #: judged rules with selective reveals: liars barred from judging so far, per round
    barred_judges: list[int] = field(default_factory=list)


def peer_ids(n: int) -> list[str]:
    """Peer names p00, p01, ... (sorted order = index order)."""
    return [f"p{i:02d}" for i in range(n)]


def choose_attackers(spec: RunSpec) -> frozenset[str]:
    """round(fraction * n) peers, drawn from the seed."""
    ids = peer_ids(spec.n_peers)
    m = int(round(spec.fraction * spec.n_peers))
    rng = np.random.default_rng([spec.seed, 17])
    return frozenset(ids[i] for i in sorted(rng.choice(spec.n_peers, size=m, replace=False)))


def genesis_committee(spec: RunSpec) -> tuple[str, ...]:
    """The round-0 committee, a seeded draw from all peers (so it may hold attackers)."""
    ids = peer_ids(spec.n_peers)
    rng = np.random.default_rng([spec.seed, 29])
    pick = rng.choice(spec.n_peers, size=spec.committee_size, replace=False)
    return tuple(sorted(ids[i] for i in pick))


def _local_data(spec: RunSpec, train: Dataset, attackers: frozenset[str],
                attack: Attack | None, groups: tuple[np.ndarray, np.ndarray] | None = None
                ) -> dict[str, Dataset]:
    if groups is not None and spec.partition == "dirichlet":  # by institution
        parts = split_by_group(*groups, spec.n_peers, spec.seed, spec.alpha)[0]
    else:
        parts = shard_indices(train.y.numpy(), spec.n_peers, spec.seed, spec.partition,
                              spec.alpha)
    out = {}
    for i, p in enumerate(peer_ids(spec.n_peers)):
        d = subset(train, parts[i])
        if attack is not None and p in attackers:
            d = attack.poison_data(d, np.random.default_rng([spec.seed, i, 3]))
        out[p] = d
    return out


def _train(spec: RunSpec, base: ModelState, data: Dataset, seed: int,
           noise: bool, task: Task | None = None) -> tuple[ModelState, DpReport | None]:
    """One peer's local training: DP-SGD under a DP policy (noise False: the same declared
    report, trained without the noise), train_local (a task's own training) otherwise."""
    dp = spec.dp
    mspec: ModelSpec | Task = ModelSpec(spec.layers) if task is None else task
    if task is not None and (dp is None or not noise):
        hyper = (spec.epochs, spec.lr, spec.batch_size) if dp is None else \
            (dp.epochs, dp.lr, dp.batch_size)
        trained = task.train_state(base, data, dict(zip(("epochs", "lr", "batch_size"), hyper)),
                                   seed)
        return trained, None if dp is None else dp.report(len(data))
    if dp is None:
        return train_local(mspec, base, data, spec.epochs, spec.lr, spec.batch_size, seed), None
    if not noise:
        return train_local(mspec, base, data, dp.epochs, dp.lr, dp.batch_size, seed), \
            dp.report(len(data))
    return train_local_dp(mspec, base, data, dp.epochs, dp.lr, dp.batch_size, seed,
                          dp.noise_multiplier, dp.max_grad_norm, dp.delta, dp.accountant)


def local_loss(spec: ModelSpec, state: ModelState, data: Dataset) -> float:
    """Mean cross-entropy of `state` on `data` (a member's validation of an update)."""
    model = build_model(spec, seed=0)
    load_state(model, state)
    model.eval()
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(model(data.x), data.y).item())


def validated_distances(distances: dict[str, float], losses: dict[str, float],
                        reference_loss: float) -> dict[str, float]:
    """A member's distances scaled by how much worse each update does on the member's own
    data than its reference (never scaled down): an update crafted to sit close to every
    model but pointing the wrong way is close, yet fails the member's data."""
    ref = max(reference_loss, 1e-12)
    return {t: d * max(1.0, losses[t] / ref) for t, d in sorted(distances.items())}


def _round_models(spec: RunSpec, rnd: int, base: ModelState, data: dict[str, Dataset],
                  attackers: frozenset[str], attack: Attack | None,
                  committee: tuple[str, ...] = (), task: Task | None = None,
                  ) -> tuple[dict[str, ModelState], dict[str, DpReport | None]]:
    """Every peer's model to send this round (trained, then poisoned by attackers) and the DP
    report it declares (None without DP). Omniscient attacks choose after every honest peer
    has trained, knowing all of it and the committee (a rushing, full-knowledge adversary)."""
    ids = sorted(data)
    runs = {p: _train(spec, base, data[p], spec.seed * 1_000_003 + rnd * 1_009 + i,
                      spec.dp_attacker_noise or p not in attackers, task)
            for i, p in enumerate(ids)}
    trained = {p: state for p, (state, _) in runs.items()}
    reports = {p: report for p, (_, report) in runs.items()}
    if attack is None or not attackers:
        return trained, reports
    if isinstance(attack, Omniscient):
        pooled = [data[p] for p in ids if p in attackers]
        attack = attack.observe_round(RoundView(
            base, {p: trained[p] for p in ids if p not in attackers},
            {p: trained[p] for p in ids if p in attackers}, tuple(committee),
            Dataset(torch.cat([d.x for d in pooled]), torch.cat([d.y for d in pooled])),
            ModelSpec(spec.layers) if task is None else task))
    elif attack.colluding:
        # The omniscient colluders: every benign model of the round (see ALittleIsEnough).
        benign = [trained[p] for p in ids if p not in attackers]
        attack = attack.observe(benign, len(ids), len(attackers))
    sent = dict(trained)
    for i, p in enumerate(ids):
        if p in attackers:
            rng = np.random.default_rng([spec.seed, rnd, i, 5])
            sent[p] = attack.poison_update(base, trained[p], rng)
    return sent, reports


def _as_sent(spec: RunSpec, base: ModelState, models: dict[str, ModelState],
             residuals: dict[str, ModelState | None]) -> dict[str, ModelState]:
    """What the receivers decode of these updates under the run's codec (the models
    themselves without compression); updates each sender's residual in `residuals`."""
    if not spec.compression.compresses:
        return models
    out = {}
    for p, state in sorted(models.items()):
        out[p], residuals[p] = round_trip(base, state, spec.compression, residuals.get(p))
    return out


class JudgeLosses:
    """Every judge's mean cross-entropy of a model on its own data, in one forward pass."""

    def __init__(self, spec: ModelSpec | Task, data: dict[str, Dataset]) -> None:
        self.model = build_model(spec, seed=0)
        self.model.eval()
        self.ids = sorted(data)
        self.x = torch.cat([data[p].x for p in self.ids])
        self.y = torch.cat([data[p].y for p in self.ids])
        sizes = [len(data[p]) for p in self.ids]
        self.segment = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        self.sizes = torch.tensor(sizes, dtype=torch.float64)

    def __call__(self, state: ModelState) -> dict[str, float]:
        load_state(self.model, state)
        with torch.no_grad():
            per = torch.nn.functional.cross_entropy(self.model(self.x), self.y,
                                                    reduction="none").to(torch.float64)
        sums = torch.zeros(len(self.ids), dtype=torch.float64).index_add_(0, self.segment, per)
        return dict(zip(self.ids, (sums / self.sizes).tolist()))


def _own_votes_standing_in(measured: dict[str, tuple[float, ...]], liars: list[str],
                           honest: list[str]) -> dict[str, tuple[float, ...]]:
    """The liars' own data's votes, repeated to the honest judges' number, in place of honest
    votes they cannot see yet."""
    return {j: measured[liars[k % len(liars)]] for k, j in enumerate(honest)}


def _peeked(votes: dict[str, tuple[float, ...]], measured: dict[str, tuple[float, ...]],
            liars: list[str], k: int, key: list[int]) -> dict[str, tuple[float, ...]]:
    """What liars who have seen k random honest votes (seeded by `key`) aim with: those, and
    their own data's votes standing in for the rest (k = 0: exactly the blind liars' view)."""
    honest = sorted(votes)
    k = max(0, min(k, len(honest)))
    seen = set(np.random.default_rng(key).choice(honest, size=k, replace=False).tolist()) \
        if k else set()
    view = _own_votes_standing_in(measured, liars, [j for j in honest if j not in seen])
    view.update({j: votes[j] for j in sorted(seen)})
    return view


def _leader_counts(votes: dict[str, tuple[float, ...]], view: dict[str, tuple[float, ...]] | None,
                   cands: list, liars: list[str], quorum: int, rule, key: list[int],
                   target: str = "colluders") -> dict[str, tuple[float, ...]]:
    """The votes a colluding leader's block counts: every liar's lie and the quorum - liars
    honest votes the liars pick (attacks.leader_quorum). `view`: what the liars saw when they
    lied (None: every vote); the honest subset is picked knowing every vote either way."""
    size, rng = max(0, quorum - len(liars)), np.random.default_rng(key)
    lies = None
    if view is not None:  # lied half-blind: the plain lie and the one planned for a subset
        lies = [lie_votes(view, cands, frozenset(liars), rule, target),
                leader_quorum(view, size, cands, frozenset(liars), rule, rng,
                              target=target)[1]]
    kept, lie = leader_quorum(votes, size, cands, frozenset(liars), rule, rng, lies,
                              target=target)
    counted = {j: votes[j] for j in sorted(kept)}
    counted.update({j: lie for j in liars})
    return counted


def judged_round(rnd: int, state: ModelState, sent: dict[str, ModelState],
                 samples: dict[str, int], judge: JudgeLosses, attackers: frozenset[str],
                 config: ChoiceConfig, previous: bytes,
                 committee_model: ModelState | None = None, blind: bool = False,
                 selective: int = 0, barred: set[str] | None = None,
                 race: tuple[int, int] | None = None, run_seed: int = 0,
                 colluding_leader: bool = False, peek: int | None = None,
                 pledge_leader: bool = False, liar_target: str = "colluders"):
    """One round of learning.choice: candidates from every update, every peer's votes (the
    attackers' the strongest lie, aimed at `liar_target`), the chosen model. Returns (model,
    candidate, next seed).
    The round's leader is judge rnd % n in sorted order (members in turn)."""
    seed = choice_seed(rnd, previous, [state_hash(sent[t]) for t in sorted(sent)])
    cands = candidate_sets(sorted(sent), seed, config)
    models = candidate_models(state, sent, samples, cands, config, committee_model)
    base_loss = judge(state)
    losses = [judge(m) for m in models]
    # every judge's measured votes: the honest ones' are sent, the liars aim with theirs
    measured = {j: judge_votes(base_loss[j], [ls[j] for ls in losses]) for j in judge.ids}
    votes = {j: v for j, v in measured.items() if j not in attackers}
    barred = set() if barred is None else barred
    liars = sorted(set(judge.ids) & attackers - barred)
    rule = lambda v: choose(v, len(cands), config)  # noqa: E731
    led_by_liar = sorted(judge.ids)[rnd % len(judge.ids)] in attackers
    if liars and selective:
        commits = committed_lies({j: measured[j] for j in liars}, cands, frozenset(liars),
                                 selective)
        shown = selective_reveal(dict(votes), commits, cands, frozenset(liars), rule)
        withheld = tuple(-math.inf for _ in cands)
        votes.update({j: commits[j] if j in shown else withheld for j in liars})
        barred |= set(liars) - shown  # the withheld reveal is evidence: no more judging
    elif liars and race is not None and not led_by_liar:
        # honest leader: the first quorum counts; the liars saw the first quorum - L - 1
        order = sorted(votes)
        np.random.default_rng(race).shuffle(order)
        quorum = quorum_size(len(judge.ids) - len(barred & set(judge.ids)))
        seen_count = max(0, quorum - len(liars) - 1)
        seen = {j: votes[j] for j in order[:seen_count]}
        if not seen:  # nothing seen yet: their own data's votes stand in, as when blind
            seen = _own_votes_standing_in(measured, liars, order)
        lie = lie_votes(seen, cands, frozenset(liars), rule, liar_target)
        votes = {j: votes[j] for j in order[:max(0, quorum - len(liars))]}
        votes.update({j: lie for j in liars})
    elif liars and (colluding_leader or pledge_leader) and led_by_liar:
        n_live = len(judge.ids) - len(barred & set(judge.ids))
        quorum, f = quorum_size(n_live), (n_live - 1) // 3
        view = None
        if pledge_leader:  # a late pledge counts if quorum - 2f honest reveals listed it
            view = _peeked(votes, measured, liars, len(votes) - (quorum - 2 * f),
                           [run_seed, rnd, 41])
        votes = _leader_counts(votes, view, cands, liars, quorum, rule, [run_seed, rnd, 43],
                               liar_target)
    elif liars and (peek is not None or pledge_leader):
        n_live = len(judge.ids) - len(barred & set(judge.ids))
        # an honest leader counts every reveal: a late pledge needs n - 2f honest listings
        k = peek if peek is not None else len(votes) - (n_live - 2 * ((n_live - 1) // 3))
        lie = lie_votes(_peeked(votes, measured, liars, k, [run_seed, rnd, 41]), cands,
                        frozenset(liars), rule, liar_target)
        votes.update({j: lie for j in liars})
    elif liars:
        seen = dict(votes)
        if blind:  # a commit-reveal: they cannot see the honest votes yet
            seen = _own_votes_standing_in(measured, liars, sorted(votes))
        lie = lie_votes(seen, cands, frozenset(liars), rule, liar_target)
        votes.update({j: lie for j in liars})
    best = rule(votes)
    model = models[best]
    if config.blend < 1.0:  # harness only: a step of `blend` from the clipped full-set model
        anchor = next((m for m, c in zip(models, cands) if c.kind == "clipped"), model)
        model = {k: (anchor[k].to(torch.float64) + config.blend *
                     (model[k].to(torch.float64) - anchor[k].to(torch.float64))
                     ).to(torch.float32) for k in sorted(model)}
    return model, cands[best], state_hash(model)


def run(spec: RunSpec) -> RunResult:
    """Run spec.rounds rounds and record the test accuracy after each."""
    if spec.rule not in RULE_NAMES:
        raise ValueError(f"unknown rule {spec.rule!r}; expected one of {RULE_NAMES}")
    task = None if spec.task == "digits" else load_task(spec.task)
    groups = None
    if task is None:
        train, test = load_digits_split(spec.seed)
    else:
        train, test, groups = task.demo_data(spec.seed, {"test_fraction": 0.2})
    # what builds the model (learning.model.build_model takes either)
    mspec: ModelSpec | Task = ModelSpec(spec.layers) if task is None else task
    attackers = choose_attackers(spec)
    attack = make_attack(spec.attack)
    if task is not None and hasattr(attack, "num_classes"):  # flip labels within its classes
        attack = dataclasses.replace(attack, num_classes=num_classes(task, train))
    data = _local_data(spec, train, attackers, attack, groups)
    # declared counts: attackers may inflate theirs (Attack.sample_factor); nothing checks them
    factor = attack.sample_factor if attack is not None else 1
    samples = {p: len(d) * (factor if p in attackers else 1) for p, d in data.items()}
    state = initial_state(mspec, spec.seed) if task is None else task.initial_state(spec.seed)
    result = RunResult(spec)
    residuals: dict[str, ModelState | None] = {}

    def record(state: ModelState) -> None:
        metrics = ({"accuracy": evaluate(mspec, state, test)} if task is None
                   else task.evaluate_state(state, test))
        result.metrics.append(metrics)
        result.accuracy.append(metrics.get("accuracy", float("nan")))

    if spec.rule in CMFL_RULES:
        config = spec.config or CMFL_RULES[spec.rule]
        committee = genesis_committee(spec)
        excluded: set[str] = set()
        dp = spec.dp
        judges, previous = None, b"genesis"
        for rnd in range(spec.rounds):
            base_state = state
            sent, reports = _round_models(spec, rnd, state, data, attackers, attack, committee,
                                          task)
            trainers = [p for p in sorted(sent) if p not in committee]
            variances = None
            if dp is not None:
                variances = {p: dp.noise_variance(reports[p], samples[p]) for p in sent}
                # The peers refuse these at admission (chain.round_rules.update_dp).
                trainers = [t for t in trainers
                            if noise_consistent(state, sent[t], variances[t])]
            # A member's own model is its reference, never sent; the updates are as decoded.
            updates = _as_sent(spec, state, {t: sent[t] for t in trainers}, residuals)
            vectors = {}
            for m in committee:
                # The member's own model is its reference; on DP, debiased as the peers do.
                vec = score_updates(sent[m], updates, variances,
                                    variances[m] if variances else 0.0)
                if spec.validate:
                    ref = sent[m] if spec.validate == "own" else state
                    vec = validated_distances(
                        vec, {t: local_loss(mspec, updates[t], data[m]) for t in vec},
                        local_loss(mspec, ref, data[m]))
                if attack is not None and m in attackers:
                    vec = attack.poison_scores(vec, attackers)
                vectors[m] = vec
            selection = select_round(vectors, config)
            decision = finish_round(state, selection, updates, samples, spec.committee_size,
                                    committee, config,
                                    # plain CMFL (middle election) stays plain in the table
                                    frozenset(excluded) if config.election != "middle"
                                    else frozenset())
            # Recorded misbehaviour: members whose vectors contradicted the committee's.
            excluded |= set(decision.dissenters)
            result.attackers_selected.append(len(set(decision.aggregated) & attackers))
            result.attackers_on_committee.append(len(set(committee) & attackers))
            result.applied.append(decision.applied)
            state, committee = decision.new_state, decision.next_committee
            if spec.judge is not None:
                if judges is None:
                    judges = JudgeLosses(mspec, data)
                state, chosen, previous = judged_round(
                    rnd, base_state, updates, samples, judges, attackers, spec.judge, previous,
                    decision.new_state, spec.blind_liars)
                result.applied[-1] = f"{decision.applied}:{chosen.kind}"
            record(state)
    elif spec.rule in JUDGED_RULES:
        # a genesis's own choice settings (RunSpec.config, as bench.peers_vs_harness passes)
        choice = spec.config.choice if spec.config is not None and spec.config.judged \
            else JUDGED_RULES[spec.rule]
        judge = JudgeLosses(mspec, data)
        previous = b"genesis"
        barred: set[str] = set()
        for rnd in range(spec.rounds):
            sent, _ = _round_models(spec, rnd, state, data, attackers, attack, task=task)
            sent = _as_sent(spec, state, sent, residuals)
            state, chosen, previous = judged_round(rnd, state, sent, samples, judge, attackers,
                                                   choice, previous,
                                                   blind=spec.blind_liars,
                                                   selective=spec.selective_reveal,
                                                   barred=barred,
                                                   race=(spec.seed, rnd) if spec.racing_liars
                                                   else None, run_seed=spec.seed,
                                                   colluding_leader=spec.colluding_leader,
                                                   peek=spec.peeking_liars,
                                                   pledge_leader=spec.pledge_leader,
                                                   liar_target=spec.liar_target)
            result.attackers_selected.append(len(set(chosen.trainers) & attackers))
            result.applied.append(chosen.kind)
            result.barred_judges.append(len(barred))
            record(state)
    else:
        for rnd in range(spec.rounds):
            sent, _ = _round_models(spec, rnd, state, data, attackers, attack, task=task)
            sent = _as_sent(spec, state, sent, residuals)
            state = aggregate_baseline(spec.rule, sent, samples, len(attackers))
            record(state)
    return result

