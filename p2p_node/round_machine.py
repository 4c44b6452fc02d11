"""One round of the protocol as a peer lives it, as a pure state machine.

Inputs: admitted envelopes (signature, network and round already checked), the peer's own
finished training, and deadlines firing. Outputs: messages to publish, rejections to log, and at
most one commit. No trio, no libp2p, no clock, no disk: the driver (p2p_node.node) does the I/O.

Flow: trainers publish updates; each committee member scores every update against its own and
publishes the signed score vector; the leader derives the block from a quorum of vectors and
proposes it; members re-derive it, vote, and a quorum of votes is the commit certificate.
Every peer, member or not, re-derives the block before it commits it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from bft.vote_agreement import VoteAgreement
from chain.block import Block, BlockError, CommittedBlock
from chain.round_rules import (
    MissingUpdates,
    ReceivedUpdate,
    RoundContext,
    derive_block,
    parse_scores_body,
    scores_payload,
)
from gossip.envelope import Envelope
from learning.scoring import score_updates
from learning.tensors import ModelState, decode_state, encode_state


@dataclass(frozen=True)
class Publish:
    """Sign and gossip this message."""

    kind: str
    payload: Any


@dataclass(frozen=True)
class Rejected:
    """A message was refused; log why (and, later, lower its sender's score)."""

    sender: str
    kind: str
    reason: str


@dataclass(frozen=True)
class Commit:
    """The round is decided: store this block and continue from this model."""

    committed: CommittedBlock
    new_state: ModelState


Action = Union[Publish, Rejected, Commit]


class RoundMachine:
    """What one peer does in one round, given what it has received so far."""

    def __init__(self, ctx: RoundContext, me: str) -> None:
        self.ctx = ctx
        self.me = me
        self.agreement = VoteAgreement(ctx.committee, me)
        self.updates: dict[str, ReceivedUpdate] = {}
        self.own_reference: ModelState | None = None
        self.score_vectors: dict[str, bytes] = {}
        self.collect_expired = False
        self.propose_expired = False
        self.scored = False
        self.proposed = False
        self.proposal: Block | None = None
        self.certified: CommittedBlock | None = None
        self.validated: dict[bytes, tuple[Block, ModelState]] = {}
        self.committed: Commit | None = None

    # roles -------------------------------------------------------------------------------------
    @property
    def is_committee(self) -> bool:
        return self.me in self.ctx.committee

    @property
    def is_trainer(self) -> bool:
        return self.me in self.ctx.trainers

    @property
    def is_leader(self) -> bool:
        return self.me == self.ctx.leader

    # inputs ------------------------------------------------------------------------------------
    def on_own_update(self, state: ModelState, samples: int) -> list[Action]:
        """Local training finished: trainers gossip the update, members keep it as reference."""
        if self.committed:
            return []
        if self.is_committee:
            self.own_reference = state
            return self._progress()
        if self.is_trainer:
            return [Publish("update", {"model": encode_state(state), "samples": samples,
                                       "base": self.ctx.base_hash})]
        return []

    def on_collect_deadline(self) -> list[Action]:
        """Stop waiting for late updates: score what has arrived."""
        self.collect_expired = True
        return self._progress()

    def on_propose_deadline(self) -> list[Action]:
        """Stop waiting for every member's scores: propose from a quorum."""
        self.propose_expired = True
        return self._progress()

    def on_envelope(self, env: Envelope) -> list[Action]:
        """An admitted message of this round."""
        if self.committed or env.round != self.ctx.height:
            return []
        handler = {"update": self._on_update, "scores": self._on_scores,
                   "proposal": self._on_proposal, "vote": self._on_vote,
                   "block": self._on_block}[env.kind]
        try:
            actions = handler(env)
        except BlockError as exc:
            return [Rejected(env.sender, env.kind, str(exc))]
        return actions + self._progress()

    # handlers ----------------------------------------------------------------------------------
    def _on_update(self, env: Envelope) -> list[Action]:
        if env.sender not in self.ctx.trainers:
            return [Rejected(env.sender, "update", "sender is not a trainer this round")]
        digest = env.digest()
        held = self.updates.get(env.sender)
        if held is not None:
            if held.digest == digest:
                return []  # the same update again (a rebroadcast or a replay): nothing new
            return [Rejected(env.sender, "update", "second, different update this round")]
        body = env.payload
        if not isinstance(body, dict) or set(body) != {"model", "samples", "base"}:
            return [Rejected(env.sender, "update", "malformed update body")]
        if body["base"] != self.ctx.base_hash:
            return [Rejected(env.sender, "update", "trained from another base model")]
        samples = body["samples"]
        if not isinstance(samples, int) or isinstance(samples, bool) or not 0 < samples < 2**40:
            return [Rejected(env.sender, "update", "bad sample count")]
        try:
            state = decode_state(body["model"])
        except ValueError as exc:
            return [Rejected(env.sender, "update", f"bad tensors: {exc}")]
        base = self.ctx.base_state
        if set(state) != set(base) or any(state[k].shape != base[k].shape or
                                          state[k].dtype != base[k].dtype for k in base):
            return [Rejected(env.sender, "update", "tensors do not match the model")]
        if not all(bool(t.isfinite().all()) for t in state.values()):
            return [Rejected(env.sender, "update", "non-finite values in tensors")]
        self.updates[env.sender] = ReceivedUpdate(env.sender, digest, samples, state)
        return []

    def _on_scores(self, env: Envelope) -> list[Action]:
        if env.sender not in self.ctx.committee:
            return [Rejected(env.sender, "scores", "sender is not on the committee")]
        raw = env.encode()
        held = self.score_vectors.get(env.sender)
        if held is not None:
            return [] if held == raw else [Rejected(env.sender, "scores", "second score vector")]
        parse_scores_body(self.ctx, env)
        self.score_vectors[env.sender] = raw
        return []

    def _on_proposal(self, env: Envelope) -> list[Action]:
        if env.sender != self.ctx.leader:
            return [Rejected(env.sender, "proposal", "sender is not this round's leader")]
        block = Block.from_obj(env.payload)
        if self.proposal is not None:
            return [] if block == self.proposal else [
                Rejected(env.sender, "proposal", "leader proposed two blocks")]
        self.proposal = block
        return []

    def _on_vote(self, env: Envelope) -> list[Action]:
        body = env.payload
        if not isinstance(body, dict) or set(body) != {"block_hash"}:
            return [Rejected(env.sender, "vote", "malformed vote")]
        reason = self.agreement.on_vote(env.sender, body["block_hash"], env.signature)
        return [Rejected(env.sender, "vote", reason)] if reason else []

    def _on_block(self, env: Envelope) -> list[Action]:
        committed = CommittedBlock.from_obj(env.payload)
        block = committed.block
        if block.height != self.ctx.height or block.prev_hash != self.ctx.prev_hash:
            return [Rejected(env.sender, "block", "block does not extend our head")]
        committed.certificate.verify(block, self.ctx.committee)
        self.certified = committed
        return []

    # progress ----------------------------------------------------------------------------------
    def _progress(self) -> list[Action]:
        """Take every step the inputs so far allow, in protocol order."""
        if self.committed:
            return []
        actions = self._maybe_score() + self._maybe_propose() + self._maybe_vote()
        return actions + self._maybe_commit()

    def _maybe_score(self) -> list[Action]:
        if self.scored or self.own_reference is None:
            return []
        if not (self.collect_expired or set(self.updates) >= set(self.ctx.trainers)):
            return []
        self.scored = True
        distances = score_updates(self.own_reference,
                                  {t: u.state for t, u in self.updates.items()})
        return [Publish("scores", scores_payload(
            {t: (self.updates[t].digest, d) for t, d in distances.items()}))]

    def _maybe_propose(self) -> list[Action]:
        if not self.is_leader or self.proposed:
            return []
        have = len(self.score_vectors)
        if have < len(self.ctx.committee) and not (self.propose_expired and have >= self.ctx.quorum):
            return []
        try:
            block, _ = derive_block(self.ctx, list(self.score_vectors.values()), self.updates)
        except MissingUpdates:
            return []
        self.proposed = True
        return [Publish("proposal", block.to_obj())]

    def _rederive(self, block: Block) -> tuple[Block, ModelState] | None:
        """Re-derive `block` from its own score vectors; None while updates are missing."""
        known = self.validated.get(block.hash())
        if known is not None:
            return known
        try:
            derived, state = derive_block(self.ctx, list(block.score_vectors), self.updates)
        except MissingUpdates:
            return None
        if derived != block:
            raise BlockError("block does not re-derive from its score vectors")
        self.validated[block.hash()] = (block, state)
        return block, state

    def _maybe_vote(self) -> list[Action]:
        if self.proposal is None or not self.is_committee or self.agreement.voted_for:
            return []
        try:
            if self._rederive(self.proposal) is None:
                return []
        except BlockError as exc:
            bad, self.proposal = self.proposal, None
            return [Rejected(self.ctx.leader, "proposal", f"{exc} (height {bad.height})")]
        block_hash = self.proposal.hash()
        if self.agreement.vote_for(block_hash):
            return [Publish("vote", {"block_hash": block_hash})]
        return []

    def _maybe_commit(self) -> list[Action]:
        candidates = [b for b in (self.proposal, self.certified and self.certified.block) if b]
        for block in candidates:
            cert = (self.certified.certificate
                    if self.certified and self.certified.block == block
                    else self.agreement.certificate(block.hash()))
            if cert is None:
                continue
            try:
                derived = self._rederive(block)
            except BlockError as exc:
                return [Rejected("", "block", f"certified block is invalid: {exc}")]
            if derived is None:
                continue
            committed = CommittedBlock(block, cert)
            self.committed = Commit(committed, derived[1])
            return [self.committed, Publish("block", committed.to_obj())]
        return []
