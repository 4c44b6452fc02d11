"""What a peer holds across rounds, and the per-round machine it feeds: one pure core.

`RoundMachine` lives one round. Some protocol state outlives a round: equivocation proofs kept
for any later round's block (the evidence pool), non-members' join requests kept for a block to
admit (the join pool), messages of rounds we have not reached (FutureMessages), which trainers
failed to serve an update they announced (the withheld-update decision), and which kinds each
topic carries. `RoundCore` owns all of them, bounded, and decides what reaches the machine; the
driver (p2p_node.node) feeds it typed inputs and carries out its actions. Pure: no trio, no
libp2p, no clock, no disk.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Union

from bft.messages import KINDS as PBFT_KINDS
from chain.block import BlockError
from chain.membership import JOIN_WINDOW, MembershipRules, admissible_joins, join_request
from chain.round_rules import MAX_EVIDENCE_PER_BLOCK, RoundContext, check_evidence
from gossip.envelope import Envelope
from gossip.sealing import SealKey
from p2p_node.future_messages import FutureMessages
from p2p_node.round_machine import (
    Action,
    Evidence,
    HintBehind,
    Input,
    Publish,
    Received,
    Rejected,
    RoundMachine,
    RoundTimeouts,
    Withheld,
)

#: Which topic carries which kinds: updates are the bulk, blocks are for every peer, join
#: requests are the only thing a non-member may send.
TOPIC_KINDS = {"updates": ("update",), "committee": ("scores", "pledge", *PBFT_KINDS),
               "blocks": ("block", "evidence", "metrics"), "membership": ("join",)}
#: Topics where a peer republishes others' signed envelopes (pBFT relays to members behind);
#: on the others every envelope is published by its own signer.
RELAYED_TOPICS = ("committee",)
#: Join requests held for future blocks, at most (one per sender, the newest).
MAX_HELD_JOINS = 256
#: Equivocation proofs held, at most (one per convicted member; a block records
#: MAX_EVIDENCE_PER_BLOCK of them, later blocks the rest).
MAX_HELD_EVIDENCE = 1024


def topic_of(kind: str) -> str:
    """The topic a message of `kind` travels on."""
    return next(t for t, kinds in TOPIC_KINDS.items() if kind in kinds)


@dataclass(frozen=True)
class TwinSeen:
    """Discovery holds two address records of one sequence number signed by `member`."""

    member: str
    pair: tuple[bytes, bytes]


@dataclass(frozen=True)
class ServeFailed:
    """`trainer` itself did not serve the bytes of the update it announced in round `height`."""

    height: int
    trainer: str


@dataclass(frozen=True)
class Convicted:
    """`member` signed two conflicting messages of `kind` (or two processes sign as it:
    `twin`); the proof is held for a block (and gossiped once, by the Publish that follows)."""

    member: str
    kind: str


CoreInput = Union[Input, TwinSeen, ServeFailed]


class RoundCore:
    """A peer's protocol state across rounds: the pools, the buffer of later rounds, and the
    round machine of the current round. `begin` starts a round; `feed` takes every input."""

    def __init__(self, network_id: bytes, me: str, membership: MembershipRules,
                 timeouts: RoundTimeouts = RoundTimeouts(),
                 future: FutureMessages | None = None,
                 max_joins: int = MAX_HELD_JOINS,
                 max_evidence: int = MAX_HELD_EVIDENCE,
                 seal_key: SealKey | None = None) -> None:
        self.network_id = network_id
        #: our X25519 key for sealed networks (gossip.sealing), handed to every round's machine
        self.seal_key = seal_key
        self.me = me
        self.membership = membership
        self.timeouts = timeouts
        self.max_joins = max_joins
        self.max_evidence = max_evidence
        #: equivocation proofs held, by convicted member: any round's leader records them
        self.evidence: dict[str, tuple[bytes, bytes]] = {}
        #: signed join requests of non-members, by sender (the newest), for a block to admit
        self.join_requests: dict[str, Envelope] = {}
        #: messages of rounds ahead of ours, replayed when we get there (bounded)
        self.future = future if future is not None else FutureMessages()
        self._future_logged: set[tuple[int, str]] = set()
        #: (round, trainer) pairs whose trainer failed to serve an update it announced
        self._unserved: set[tuple[int, str]] = set()
        self.ctx: RoundContext | None = None
        self.machine: RoundMachine | None = None
        self.replay: list[Received] = []

    # rounds ------------------------------------------------------------------------------------
    def begin(self, ctx: RoundContext, persisted: Mapping[str, bytes | None] | None = None,
              addrs: tuple[str, ...] = (), **machine_options: Any) -> list[Action]:
        """Start round `ctx.height`: build its machine from the pools and ask to join if we are
        no member; the messages held for this round are then in `replay`, to be fed in order."""
        evidence = tuple(pair for member, pair in sorted(self.evidence.items())
                         if member not in ctx.excluded)[:MAX_EVIDENCE_PER_BLOCK]
        joins = admissible_joins(self.membership, ctx.current_roster, self.network_id,
                                 ctx.height, [env.encode() for env in self._held_joins(ctx)])
        # A trainer's error-feedback residual (topk) carries from one round's machine to the next.
        residual = self.machine.residual if self.machine is not None else None
        self.ctx = ctx
        self.machine = RoundMachine(ctx, self.me, evidence=evidence, joins=joins,
                                    timeouts=self.timeouts, persisted=persisted,
                                    residual=residual, seal_key=self.seal_key,
                                    **machine_options)
        # A lagging peer may still fetch last round's blobs: their failures stay relevant.
        self._unserved = {(h, t) for h, t in self._unserved if h >= ctx.height - 1}
        self._future_logged = {(r, s) for r, s in self._future_logged if r > ctx.height}
        actions: list[Action] = []
        if self.me not in ctx.members:
            # Not (or no longer) a member: ask to join, again each round (rebroadcast within
            # it) until a block admits us; meanwhile we follow the rounds as an observer.
            actions.append(Publish("join", join_request(self.network_id, ctx.height,
                                                        list(addrs)).payload))
        #: what was held for this round, for the driver to feed after what `begin` returns
        self.replay = [Received(env) for env in self.future.release(ctx.height)]
        return actions + self._outputs(self.machine.start())

    def feed(self, event: CoreInput) -> list[Action]:
        """Take one input of the current round (or one for the pools); returns the actions."""
        assert self.machine is not None and self.ctx is not None, "begin a round first"
        match event:
            case TwinSeen(member, pair):
                return self._hold_evidence(member, "twin", pair)
            case ServeFailed(height, trainer):
                self._unserved.add((height, trainer))
                return []
            case Received(env) if env.kind == "evidence":
                return self._on_evidence(env)
            case Received(env) if env.kind == "join":
                self._on_join(env)
                return []
            case Received(env) if env.round > self.ctx.height:
                hint: list[Action] = [HintBehind()] if env.kind == "block" else []
                return hint + self._hold_future(env)  # a later block: we are behind
        return self._outputs(self.machine.feed(event))

    def _outputs(self, actions: list[Action]) -> list[Action]:
        """The machine's actions as the driver must carry them out: proofs into the pool,
        withheld updates judged, and a joiner's publishes dropped."""
        out: list[Action] = []
        for action in actions:
            if isinstance(action, Evidence):
                out += self._hold_evidence(action.member, action.first.kind,
                                           (action.first.encode(), action.second.encode()))
            elif isinstance(action, Withheld):
                assert self.ctx is not None
                out.append(replace(action, proven=(self.ctx.height, action.trainer)
                                   in self._unserved))
            elif isinstance(action, Publish) and self.me not in self._members():
                continue  # a joiner's relayed block: peers take only join requests from it
            else:
                out.append(action)
        return out

    def _members(self) -> tuple[str, ...]:
        assert self.ctx is not None
        return self.ctx.members

    # the evidence pool -------------------------------------------------------------------------
    def _hold_evidence(self, member: str, kind: str, pair: tuple[bytes, bytes]) -> list[Action]:
        """Keep a proof found here (a machine's, or discovery's twin) and gossip it, once."""
        if kind == "twin" and member in self.evidence:
            return []  # discovery reports a twin once per pair; one proof is enough
        actions: list[Action] = [Convicted(member, kind)]
        if member not in self.evidence and len(self.evidence) >= self.max_evidence:
            return actions
        if self.evidence.setdefault(member, pair) == pair:
            actions.append(Publish("evidence", list(pair), repeat=False))
        return actions

    def _on_evidence(self, env: Envelope) -> list[Action]:
        """Keep a gossiped equivocation proof (from any round) for a future block."""
        try:
            first, second = env.payload
            member = check_evidence(self.network_id, (first, second))
        except (BlockError, TypeError, ValueError) as exc:
            return [Rejected(env.sender, "evidence", str(exc))]
        if member not in self.evidence and len(self.evidence) < self.max_evidence:
            self.evidence[member] = (first, second)
        return []

    # the join pool -----------------------------------------------------------------------------
    def _on_join(self, env: Envelope) -> None:
        """Hold a non-member's join request (the newest per sender) for a block to admit."""
        held = self.join_requests.get(env.sender)
        if held is not None and held.round >= env.round:
            return
        if held is None and len(self.join_requests) >= self.max_joins:
            return  # a flood of requests: the ones held are admitted first, then others
        self.join_requests[env.sender] = env

    def _held_joins(self, ctx: RoundContext) -> list[Envelope]:
        """The join requests still worth holding at this round: senders not yet members,
        requests not expired (chain.membership.check_join decides what a block may admit)."""
        for sender, env in list(self.join_requests.items()):
            if sender in ctx.members or env.round + JOIN_WINDOW < ctx.height:
                del self.join_requests[sender]
        return list(self.join_requests.values())

    # the buffer of later rounds ----------------------------------------------------------------
    def _hold_future(self, env: Envelope) -> list[Action]:
        """Keep a message of a later round for then, unless its sender floods such messages."""
        code = self.future.hold(env, env.encode())
        if code is None:
            return []
        # One line per sender and round: a flood must not become a flood of log lines.
        logged = (env.round, env.sender) not in self._future_logged
        self._future_logged.add((env.round, env.sender))
        reason = (f"not holding messages of round {env.round}: " +
                  ("more than a member sends in a round" if code == "future-flood"
                   else "the buffer of later rounds is full"))
        return [Rejected(env.sender, env.kind, reason,
                         code if code == "future-flood" else None, code=code, logged=logged)]
