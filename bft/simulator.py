"""A deterministic, seeded network simulator for the pBFT core, with faulty members on purpose.

Everything random comes from `random.Random` seeded by the scenario, and time is a virtual clock
driven by an event queue, so a scenario replays exactly. The network delays every message (which
reorders them), drops and duplicates some, and may split the committee in two; at `heal_at` the
partition heals and drops stop (GST), delays stay bounded. Members are honest (maybe crashing
and restarting from their write-ahead snapshot), crashed, or Byzantine of one of several kinds
(`FAULT_KINDS`: silent, equivocating leader, invalid proposer, conflicting voter, withholder,
twins). After each run `check` states the properties: safety (honest members decide one value,
with a valid certificate, never an invalid value), liveness after healing (every honest member
decides within `liveness_bound` of `heal_at`) and evidence soundness (only faulty members are
accused).
"""

from __future__ import annotations

import hashlib
import heapq
import random
from dataclasses import dataclass, field, replace
from typing import Any

import cbor2

from bft.messages import Commit, Message, NewView, PrePrepare, Prepare
from bft.pbft import (
    Broadcast,
    Decided,
    Equivocation,
    Output,
    PbftCore,
    ProposalNeeded,
    Relay,
    SetTimer,
)
from bft.quorum import fault_tolerance, quorum_size

#: Virtual time units: a message takes at most MAX_DELAY after healing, a view BASE_TIMEOUT * 2**k.
MAX_DELAY = 1.0
BASE_TIMEOUT = 6.0
BACKOFF_CAP = 4

#: Faults that count against f. "crashed" stops at a random time, "silent" never speaks.
FAULT_KINDS = ("crashed", "silent", "equivocating_leader", "invalid_proposer",
               "conflicting_voter", "withholder", "twins")
#: Equivocating leader and double voter in one, coordinating with the other colluders; with f+1
#: of them safety can break, which is how we show the checker is able to fail.
COLLUDER = "colluder"


@dataclass(frozen=True)
class Scenario:
    """One schedule: committee, faults and network conditions, all derived from `seed`."""

    seed: int
    committee_size: int
    height: int
    faults: tuple[tuple[str, str], ...]
    crash_at: tuple[tuple[str, float], ...] = ()
    #: honest members that crash and restart from their last snapshot: (member, down, up)
    restarts: tuple[tuple[str, float, float], ...] = ()
    drop: float = 0.0
    #: directed links (sender, receiver) that lose everything until `heal_at`
    dead_links: tuple[tuple[str, str], ...] = ()
    duplicate: float = 0.0
    partition: tuple[tuple[str, ...], ...] = ()
    #: the partition holds from this time until `heal_at` (a late cut strands votes in flight)
    partition_from: float = 0.0
    heal_at: float = 0.0
    unknown_validity: float = 0.0

    @property
    def committee(self) -> tuple[str, ...]:
        return tuple(f"m{i}" for i in range(self.committee_size))

    @property
    def faulty(self) -> frozenset[str]:
        return frozenset(m for m, _ in self.faults)


def random_scenario(seed: int, committee_size: int, faulty: int | None = None,
                    kinds: tuple[str, ...] = FAULT_KINDS) -> Scenario:
    """A random schedule with `faulty` members (default: up to f) of random `kinds`."""
    rng = random.Random(seed)
    committee = tuple(f"m{i}" for i in range(committee_size))
    f = fault_tolerance(committee_size)
    count = rng.randint(0, f) if faulty is None else faulty
    bad = rng.sample(committee, count)
    faults = tuple(sorted((m, rng.choice(kinds)) for m in bad))
    heal_at = rng.choice([0.0, rng.uniform(5, 60), rng.uniform(60, 200)])
    crash_at = tuple((m, rng.uniform(0, heal_at + 20)) for m, k in faults if k == "crashed")
    honest = [m for m in committee if m not in bad]
    restarts = []
    if rng.random() < 0.3 and heal_at > 10:
        down = rng.uniform(0, heal_at - 5)
        restarts.append((rng.choice(honest), down, rng.uniform(down + 1, heal_at)))
    partition: tuple[tuple[str, ...], ...] = ()
    partition_from = 0.0
    if rng.random() < 0.5 and heal_at > 0:
        shuffled = list(committee)
        rng.shuffle(shuffled)
        cut = rng.randint(1, committee_size - 1)
        partition = (tuple(sorted(shuffled[:cut])), tuple(sorted(shuffled[cut:])))
        partition_from = rng.choice([0.0, rng.uniform(0, 4 * MAX_DELAY)])
    dead_links: list[tuple[str, str]] = []
    if rng.random() < 0.4 and heal_at > 0:
        pairs = [(a, b) for a in committee for b in committee if a != b]
        dead_links = sorted(rng.sample(pairs, rng.randint(1, committee_size)))
    return Scenario(
        seed=seed, committee_size=committee_size, height=rng.randrange(1000), faults=faults,
        crash_at=crash_at, restarts=tuple(restarts),
        drop=rng.choice([0.0, 0.05, 0.2, 0.5]) if heal_at > 0 else 0.0,
        dead_links=tuple(dead_links),
        duplicate=rng.choice([0.0, 0.05, 0.2]), partition=partition,
        partition_from=partition_from, heal_at=heal_at,
        unknown_validity=rng.choice([0.0, 0.2, 0.6]))


def liveness_bound(committee_size: int) -> float:
    """Virtual time after healing by which every honest member must have decided.

    A longest view timeout for the timers set before healing to run out and the members to meet
    in one view, then one view per faulty leader that may follow, then a view to decide in.
    """
    longest_view = BASE_TIMEOUT * 2**BACKOFF_CAP
    return longest_view * (fault_tolerance(committee_size) + 3)


@dataclass
class RunResult:
    """What happened in one run, and which properties failed (`violations`, empty when none)."""

    scenario: Scenario
    honest: tuple[str, ...]
    decisions: dict[str, Decided] = field(default_factory=dict)
    decided_at: dict[str, float] = field(default_factory=dict)
    evidence: list[tuple[str, Equivocation]] = field(default_factory=list)
    deliveries: int = 0
    end_time: float = 0.0
    violations: list[str] = field(default_factory=list)

    @property
    def safety_violated(self) -> bool:
        return any(v.startswith("safety") for v in self.violations)

    @property
    def stalled(self) -> bool:
        return any(v.startswith("liveness") for v in self.violations)


def value_for(member: str, variant: str = "") -> bytes:
    """The block a member would build; invalid ones start with INVALID (honest validity says no)."""
    return f"block|{member}|{variant}".encode()


def value_hash(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def sign(member: str, message: Message) -> Message:
    """The simulator's stand-in for Ed25519: a keyed hash only `member`'s node computes."""
    message = replace(message, sender=member, signature=b"")
    return replace(message, signature=_signature(member, message))


def verify(message: Message) -> bool:
    """Whether `message` carries its sender's simulated signature."""
    return message.signature == _signature(message.sender, replace(message, signature=b""))


def _signature(member: str, unsigned: Message) -> bytes:
    body = cbor2.dumps([unsigned.kind, unsigned.height, member, unsigned.body()], canonical=True)
    return hashlib.sha256(b"secret-of-" + member.encode() + body).digest()


class _Node:
    """One process: an identity, a core, and how it misbehaves (if it does)."""

    def __init__(self, index: int, member: str, behaviour: str, candidate: bytes) -> None:
        self.index = index
        self.member = member
        self.behaviour = behaviour
        self.candidate = candidate
        self.core: PbftCore | None = None
        self.alive = True
        self.incarnation = 0
        self.snapshot: bytes | None = None


class Simulation:
    """Runs one `Scenario` to completion; `run()` returns the `RunResult`."""

    def __init__(self, scenario: Scenario) -> None:
        self.s = scenario
        self.rng = random.Random(scenario.seed ^ 0x5EED)
        self.committee = scenario.committee
        self.quorum = quorum_size(len(self.committee))
        kinds = dict(scenario.faults)
        self.nodes: list[_Node] = []
        for member in self.committee:
            behaviour = kinds.get(member, "honest")
            candidate = value_for(member)
            if behaviour in ("invalid_proposer",):
                candidate = b"INVALID|" + candidate
            self.nodes.append(_Node(len(self.nodes), member, behaviour, candidate))
            if behaviour == "twins":
                self.nodes.append(_Node(len(self.nodes), member, behaviour,
                                        value_for(member, "twin")))
        self.honest = tuple(m for m in self.committee if m not in scenario.faulty)
        self.result = RunResult(scenario, self.honest)
        self.now = 0.0
        self._queue: list[tuple[float, int, str, int, Any]] = []
        self._seq = 0
        self._timers: dict[tuple[int, str], int] = {}
        self._verified: dict[int, tuple[Message, bool]] = {}
        # Colluders' shared knowledge: which members were sent which proposal value.
        self._audience: dict[bytes, set[str]] = {}
        self._colluders = {n.member for n in self.nodes if n.behaviour == COLLUDER}
        self._dead_links = set(scenario.dead_links)

    # the run -----------------------------------------------------------------------------------
    def run(self, max_events: int = 400_000) -> RunResult:
        """Play the scenario until every honest member decided or the liveness bound passed."""
        deadline = self.s.heal_at + liveness_bound(len(self.committee))
        for member, at in self.s.crash_at:
            for node in self._nodes_of(member):
                self._schedule(at, "crash", node.index, None)
        for member, down, up in self.s.restarts:
            node = self._nodes_of(member)[0]
            self._schedule(down, "crash", node.index, None)
            self._schedule(up, "restart", node.index, None)
        for node in self.nodes:
            if node.behaviour == "silent":
                node.alive = False
                continue
            self._boot(node)
        events = 0
        while self._queue and not self._all_decided():
            at, _, kind, index, payload = heapq.heappop(self._queue)
            if at > deadline:
                break
            self.now = at
            events += 1
            if events > max_events:
                self.result.violations.append(f"liveness: more than {max_events} events")
                break
            self._dispatch(kind, self.nodes[index], payload)
        self.result.end_time = self.now
        self.result.violations += check(self.result, self.s)
        return self.result

    def _dispatch(self, kind: str, node: _Node, payload: Any) -> None:
        if kind == "restart":
            self._restart(node)
            return
        if not node.alive or node.core is None:
            return
        core = node.core
        if kind == "crash":
            node.alive = False
        elif kind == "deliver":
            self.result.deliveries += 1
            self._after(node, core.on_message(payload))
            if node.behaviour == COLLUDER:
                self._collude_on(node, payload)
        elif kind == "timer":
            name, view, incarnation, token = payload
            if incarnation == node.incarnation and self._timers.get((node.index, name)) == token:
                self._after(node, core.on_timer(name, view))
        elif kind == "validated":
            incarnation, h, ok = payload
            if incarnation == node.incarnation:
                self._after(node, core.on_value_validated(h, ok))
        elif kind == "propose":
            self._after(node, core.propose(value_hash(node.candidate), node.candidate))

    def _boot(self, node: _Node) -> None:
        node.incarnation += 1
        node.core = PbftCore(self.s.height, self.committee, node.member,
                             self._validity_of(node), self._verify_cached,
                             backoff_cap=BACKOFF_CAP)
        self._after(node, node.core.start())

    def _restart(self, node: _Node) -> None:
        """Come back from the write-ahead snapshot, as a driver would after a crash."""
        node.alive = True
        node.incarnation += 1
        if node.snapshot is None:
            self._boot(node)
            return
        snapshot = cbor2.loads(node.snapshot)
        node.core = PbftCore.from_snapshot(snapshot, self.committee, node.member,
                                           self._validity_of(node), self._verify_cached,
                                           backoff_cap=BACKOFF_CAP)
        self._after(node, node.core.start())

    # the driver's side of the core -------------------------------------------------------------
    def _after(self, node: _Node, outputs: list[Output]) -> None:
        """Carry out a core's outputs, after persisting its state (the write-ahead rule)."""
        assert node.core is not None
        if any(isinstance(o, Broadcast) for o in outputs) and self._restarts(node):
            node.snapshot = cbor2.dumps(node.core.snapshot(), canonical=True)
        for out in outputs:
            if isinstance(out, Broadcast):
                self._broadcast(node, out.message)
            elif isinstance(out, Relay):
                for message in out.messages:
                    self._send(node, message, self._others(node))
            elif isinstance(out, SetTimer):
                token = self._seq
                self._timers[(node.index, out.name)] = token
                self._schedule(self.now + BASE_TIMEOUT * out.duration_factor, "timer", node.index,
                               (out.name, out.view, node.incarnation, token))
            elif isinstance(out, ProposalNeeded):
                self._schedule(self.now + self.rng.uniform(0, 0.5), "propose", node.index, None)
            elif isinstance(out, Decided):
                if node.member in self.honest and node.member not in self.result.decisions:
                    self.result.decisions[node.member] = out
                    self.result.decided_at[node.member] = self.now
            elif isinstance(out, Equivocation):
                self.result.evidence.append((node.member, out))

    def _restarts(self, node: _Node) -> bool:
        return any(m == node.member for m, _, _ in self.s.restarts)

    def _validity_of(self, node: _Node) -> Any:
        honest = node.behaviour == "honest"

        def validate(h: bytes, value: bytes) -> bool | None:
            if not honest:
                return True  # Byzantine members vote for anything
            ok = not value.startswith(b"INVALID")
            if self.rng.random() < self.s.unknown_validity:
                # The member lacks some inputs (updates to fetch): it answers later.
                self._schedule(self.now + self.rng.uniform(0.2, 3.0), "validated", node.index,
                               (node.incarnation, h, ok))
                return None
            return ok

        return validate

    def _verify_cached(self, message: Message) -> bool:
        # Members share message objects in the simulator; verifying each once keeps runs fast.
        hit = self._verified.get(id(message))
        if hit is not None and hit[0] is message:
            return hit[1]
        ok = verify(message)
        self._verified[id(message)] = (message, ok)
        return ok

    # sending and misbehaving -------------------------------------------------------------------
    def _broadcast(self, node: _Node, message: Message) -> None:
        behaviour = node.behaviour
        signed = sign(node.member, message)
        # The own copy comes straight back, as a driver feeds its signed messages to its core.
        self._schedule(self.now, "deliver", node.index, signed)
        others = self._others(node)
        proposal = isinstance(signed, (PrePrepare, NewView))
        if behaviour == "equivocating_leader" and proposal:
            half = len(others) // 2
            self._send(node, signed, others[:half])
            self._send(node, self._variant(node, signed), others[half:])
            return
        if behaviour == "invalid_proposer" and proposal:
            bad = b"INVALID|" + value_for(node.member, f"view{signed.view}")
            signed = sign(node.member, replace(signed, value_hash=value_hash(bad), value=bad))
        if behaviour == COLLUDER:
            self._collude_send(node, signed, others)
            return
        if behaviour == "withholder" and isinstance(signed, Commit):
            # Its commit completes a quorum at one member only: that member decides alone.
            others = self.rng.sample(others, 1)
        self._send(node, signed, others)
        if behaviour == "conflicting_voter" and isinstance(signed, (Prepare, Commit)):
            fake = sign(node.member, replace(signed, value_hash=self.rng.randbytes(32)))
            if isinstance(signed, Prepare):
                self._send(node, fake, self.rng.sample(others, len(others) // 2))
            else:
                self._send(node, fake, others)  # two commits to everyone: provable

    def _variant(self, node: _Node, proposal: PrePrepare | NewView) -> Message:
        alt = value_for(node.member, f"alt-view{proposal.view}")
        return sign(node.member, replace(proposal, value_hash=value_hash(alt), value=alt))

    def _collude_send(self, node: _Node, signed: Message, others: list[_Node]) -> None:
        if isinstance(signed, (Prepare, Commit)):
            return  # colluders vote through _collude_on, for every proposal, to its audience
        if not isinstance(signed, (PrePrepare, NewView)):
            self._send(node, signed, others)
            return
        honest = [n for n in others if n.member not in self._colluders]
        friends = [n for n in others if n.member in self._colluders]
        half = len(honest) // 2
        variant = self._variant(node, signed)
        assert isinstance(variant, (PrePrepare, NewView))
        for proposal, group in ((signed, honest[:half]), (variant, honest[half:])):
            self._audience.setdefault(proposal.value_hash, set()).update(
                n.member for n in group)
            self._send(node, proposal, group + friends)
        self._collude_on(node, variant)  # the own copy of `signed` comes back; this one not

    def _collude_on(self, node: _Node, message: Message) -> None:
        """A colluder prepares and commits every proposal, towards those who were sent it."""
        if not isinstance(message, (PrePrepare, NewView)):
            return
        audience = self._audience.get(message.value_hash)
        targets = [n for n in self.nodes if n is not node and (
            audience is None or n.member in audience or n.member in self._colluders)]
        for vote in (Prepare, Commit):
            signed = sign(node.member, vote(self.s.height, message.view, message.value_hash))
            self._send(node, signed, targets)

    def _send(self, node: _Node, message: Message, targets: list[_Node]) -> None:
        """Put `message` on the wire to each target: delayed, maybe dropped or duplicated."""
        before_heal = self.now < self.s.heal_at
        for target in targets:
            if before_heal:
                if self._partitioned(node.member, target.member):
                    continue
                if (node.member, target.member) in self._dead_links:
                    continue
                if self.rng.random() < self.s.drop:
                    continue
            copies = 2 if self.rng.random() < self.s.duplicate else 1
            for _ in range(copies):
                self._schedule(self.now + self.rng.uniform(0.05, MAX_DELAY), "deliver",
                               target.index, message)

    def _partitioned(self, a: str, b: str) -> bool:
        if self.now < self.s.partition_from:
            return False
        return any((a in group) != (b in group) for group in self.s.partition)

    def _others(self, node: _Node) -> list[_Node]:
        return [n for n in self.nodes if n is not node]

    def _nodes_of(self, member: str) -> list[_Node]:
        return [n for n in self.nodes if n.member == member]

    def _schedule(self, at: float, kind: str, index: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, kind, index, payload))

    def _all_decided(self) -> bool:
        return len(self.result.decisions) == len(self.honest)


def run(scenario: Scenario) -> RunResult:
    """Simulate `scenario` and check its properties."""
    return Simulation(scenario).run()


def check(result: RunResult, scenario: Scenario) -> list[str]:
    """The properties every run must have; each violation is one line of text."""
    violations: list[str] = []
    committee = scenario.committee
    hashes = {d.value_hash for d in result.decisions.values()}
    if len(hashes) > 1:
        violations.append(f"safety: honest members decided {len(hashes)} different values")
    for member, d in result.decisions.items():
        if value_hash(d.value) != d.value_hash:
            violations.append(f"safety: {member} decided a value that does not match its hash")
        if d.value.startswith(b"INVALID"):
            violations.append(f"safety: {member} decided an invalid value")
        signers = {m for m, _ in d.certificate}
        if len(signers) != len(d.certificate) or len(signers) < quorum_size(len(committee)):
            violations.append(f"safety: {member}'s certificate lacks a quorum")
        for m, signature in d.certificate:
            vote = Commit(d.height, d.view, d.value_hash, m, signature)
            if m not in committee or not verify(vote):
                violations.append(f"safety: {member}'s certificate has a bad signature of {m}")
    bound = scenario.heal_at + liveness_bound(len(committee))
    for member in result.honest:
        at = result.decided_at.get(member)
        if at is None or at > bound:
            violations.append(f"liveness: {member} did not decide by t={bound:.0f}")
    for reporter, ev in result.evidence:
        if reporter in scenario.faulty:
            continue
        if ev.member not in scenario.faulty:
            violations.append(f"evidence: {reporter} accused honest {ev.member}")
        a, b = ev.first, ev.second
        if not (verify(a) and verify(b) and a.sender == b.sender == ev.member
                and (a.kind, a.height, a.view) == (b.kind, b.height, b.view)
                and replace(a, signature=b"") != replace(b, signature=b"")):
            violations.append(f"evidence: {reporter} produced unconvincing evidence")
    return violations


@dataclass
class CampaignReport:
    """Counts over many runs; `failures` keeps each failing scenario to replay it."""

    runs: int = 0
    safety_violations: int = 0
    stalls: int = 0
    other_violations: int = 0
    decided_after_view_change: int = 0
    evidence: int = 0
    max_decided_after_heal: float = 0.0
    failures: list[tuple[Scenario, list[str]]] = field(default_factory=list)


def campaign(count: int, sizes: tuple[int, ...] = (4, 5, 7, 10), first_seed: int = 0,
             kinds: tuple[str, ...] = FAULT_KINDS) -> CampaignReport:
    """Run `count` seeded schedules over committee `sizes`; every other one has exactly f faults."""
    report = CampaignReport()
    for i in range(count):
        size = sizes[i % len(sizes)]
        faulty = fault_tolerance(size) if i % 2 else None
        scenario = random_scenario(first_seed + i, size, faulty, kinds)
        result = run(scenario)
        report.runs += 1
        report.safety_violations += result.safety_violated
        report.stalls += result.stalled
        report.other_violations += bool(result.violations) and not (
            result.safety_violated or result.stalled)
        report.decided_after_view_change += any(d.view > 0 for d in result.decisions.values())
        report.evidence += len(result.evidence)
        if result.decided_at:
            report.max_decided_after_heal = max(report.max_decided_after_heal,
                                                max(result.decided_at.values()) - scenario.heal_at)
        if result.violations:
            report.failures.append((scenario, result.violations))
    return report
