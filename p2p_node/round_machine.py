"""One round of the protocol as a peer lives it, as a pure state machine.

Inputs (frozen dataclasses, fed through `RoundMachine.feed`): admitted envelopes (signature,
network and round already checked), the peer's own finished training, fetched blobs, and timers
firing. Outputs: messages to publish, records to persist before them, timers to arm, rejections
to log, and at most one commit. No trio, no libp2p, no clock, no disk: the driver
(p2p_node.node) does the I/O, sleeps for the timers the core asks for and feeds them back.

Flow: trainers publish updates; each committee member scores every update against its own and
publishes the signed score vector; once it holds enough vectors, every member derives the block
they imply and hands it to its pBFT core as its candidate; the leader of the view proposes it and
the committee agrees (bft.pbft: prepare, commit, view change). A quorum of signed commits is the
block's certificate. Every peer, member or not, re-derives the block before it commits it,
except on a network whose genesis seals updates to the round's validators (`sealing =
"validators"`, gossip.sealing): there a peer that cannot read the updates checks the certified
block's certificate and everything its score vectors decide (chain.round_rules.check_outline),
then fetches the new model by its hash (FetchModel) and commits it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections import Counter
from typing import Any, Mapping, Union

import cbor2

import bft.pbft as pbft
from bft.messages import KINDS as PBFT_KINDS
from bft.messages import Message, MessageError, decode_message
from chain.block import Block, BlockError, CommitCertificate, CommittedBlock
from chain.membership import join_requests
from chain.round_rules import (
    MAX_EVIDENCE_MESSAGE_BYTES,
    MissingUpdates,
    ReceivedUpdate,
    RoundContext,
    check_outline,
    derive_block,
    evidence_member,
    MAX_VOTE_SETS,
    SALT_BYTES,
    counted_senders,
    judged_candidates,
    judged_group,
    parse_pledge_body,
    parse_vector_body,
    pledge_digest,
    pledge_payload,
    reveal_payload,
    scores_payload,
    update_dp,
    votes_payload,
)
from gossip.envelope import MAX_ENVELOPE_BYTES, Envelope, decode_envelope
from gossip.blob_ref import BlobRef, TransferError
from gossip.sealing import COMMIT_BYTES, SealError, SealKey, open_sealed, parse_commit, \
    parse_wraps, seal, sealed_size, wraps_size
from learning.compression import (
    decode_delta,
    delta_from_bytes,
    encode_with_feedback,
    encoded_size,
)
from learning.choice import candidate_models, judge_votes
from learning.dp_accounting import DpReport
from learning.scoring import score_updates
from learning.tensors import (
    ModelState,
    decode_state,
    encode_state,
    state_bytes,
    state_from_bytes,
    state_hash,
)

#: An update whose tensors encode to more than this travels as a blob reference (gossip carries
#: the signed digest, a stream carries the bytes): the rest of the envelope is well under 4 KiB.
INLINE_UPDATE_BYTES = MAX_ENVELOPE_BYTES - 4096


#: The timers the round core arms besides pBFT's view timer (bft.pbft.VIEW_TIMER).
COLLECT_TIMER, PROPOSE_TIMER, STALL_TIMER = "collect", "propose", "stall"
#: Pledged votes: reveal what we pledged even if some judges' pledges are still missing
REVEAL_TIMER = "reveal"
#: Our messages of which we never sign two different ones in a round, even across restarts: a
#: second one would be evidence against us (check_evidence). Written ahead under "signed-<kind>".
WRITTEN_AHEAD_KINDS = ("update", "scores", "pledge")
#: The store records the core reads back at the start of a round (`persisted`), and writes
#: through `Persist` actions ("pledge-secret": the votes and salt our pledges hash, so a
#: restarted judge reveals what it pledged).
PERSISTED_KEYS = ("pbft", *(f"signed-{kind}" for kind in WRITTEN_AHEAD_KINDS), "pledge-secret")


@dataclass(frozen=True)
class RoundTimeouts:
    """Seconds before each of the round's deadlines fires."""

    #: stop waiting for updates and score what arrived
    collect: float = 20.0
    #: after `collect`: stop waiting for every member's score vector, build from a quorum
    propose: float = 10.0
    #: the pBFT view timeout before back-off; None: collect + propose + 10 s, so an honest
    #: leader that waited out both deadlines still proposes in time. It is also the stall
    #: watch's period (a round open that long may have missed its certified block).
    view: float | None = None
    #: pledged votes: a judge reveals once every judge's pledge is in, or at the propose
    #: deadline; a pledge made after that (to repair a stuck round) is revealed at the latest
    #: this long after it. None: half of `propose`
    reveal: float | None = None

    @property
    def base_view(self) -> float:
        return self.view or self.collect + self.propose + 10.0

    @property
    def reveal_after(self) -> float:
        return self.reveal if self.reveal is not None else self.propose / 2


# inputs ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Received:
    """An admitted envelope (of any round: the core ignores other rounds')."""

    envelope: Envelope


@dataclass(frozen=True)
class Trained:
    """Local training of round `height` finished; `dp` is its DP report (None without DP)."""

    height: int
    state: ModelState
    samples: int
    dp: DpReport | None = None


@dataclass(frozen=True)
class Judged:
    """Our own data's loss on the base model and on each candidate a `Judge` asked about."""

    height: int
    base_loss: float
    losses: tuple[float, ...]
    #: pledged votes: SALT_BYTES fresh random bytes (the driver's), hidden in our pledge
    salt: bytes = b""


@dataclass(frozen=True)
class BlobArrived:
    """The bytes of an update announced by reference, fetched (hash already checked)."""

    height: int
    digest: bytes
    data: bytes


@dataclass(frozen=True)
class TimerFired:
    """The timer `name` for `view`, armed in round `height` by a SetTimer, fired."""

    height: int
    name: str
    view: int


@dataclass(frozen=True)
class ModelArrived:
    """The bytes of a certified block's new model, fetched by its hash (FetchModel; the hash
    already checked)."""

    height: int
    digest: bytes
    data: bytes


Input = Union[Received, Trained, Judged, BlobArrived, TimerFired, ModelArrived]


# actions ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Publish:
    """Sign and gossip this message; with `repeat`, again every rebroadcast interval this round
    (gossip has no replay for peers whose mesh formed late)."""

    kind: str
    payload: Any
    repeat: bool = True


@dataclass(frozen=True)
class PublishSigned:
    """Gossip this already-signed envelope unchanged (a relayed pBFT message)."""

    envelope: Envelope


@dataclass(frozen=True)
class OfferBlob:
    """Serve these bytes to peers that ask by hash (our own update, announced by reference)."""

    data: bytes


@dataclass(frozen=True)
class FetchBlob:
    """Fetch the blob `ref` (first from `provider`, who announced it) and hand it to on_blob."""

    ref: BlobRef
    provider: str


@dataclass(frozen=True)
class FetchModel:
    """Fetch the checkpoint `ref` (a certified block's new model, by its hash) from any peer
    that holds it, and hand it to on_model: a peer that cannot read a sealed round's updates
    takes the model the certificate binds instead of re-deriving it."""

    ref: BlobRef
    #: who to ask first: the certificate's signers (each committed the block, so it holds the
    #: model unless it crashed since)
    providers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Judge:
    """Judged rounds: measure our own data's loss on the base model and on each candidate
    (learning.task.Task.losses, off the event loop), then feed `Judged`."""

    height: int
    base: ModelState
    candidates: tuple[ModelState, ...]


@dataclass(frozen=True)
class SetTimer:
    """Feed back `TimerFired(height, name, view)` after `seconds` (the round's height)."""

    name: str
    view: int
    seconds: float


@dataclass(frozen=True)
class Persist:
    """Write `value` under the store record `key` durably, before the actions that follow it
    (the publish it protects: a restarted peer must not sign a conflicting message)."""

    key: str
    value: bytes


@dataclass(frozen=True)
class HintBehind:
    """The round has been open a whole view timeout: ask peers' heads, we may have missed its
    certified block (a gossip message lost, and no later round yet to hint at it)."""


@dataclass(frozen=True)
class Evidence:
    """`member` signed two conflicting messages: both signed envelopes are the proof."""

    member: str
    first: Envelope
    second: Envelope


@dataclass(frozen=True)
class Rejected:
    """A message was refused; log why. `penalty` names the misbehaviour (a
    gossip.peer_scoring.PENALTIES key) when the message proves its signer misbehaved; None when
    an honest peer that lags or leads by a round could have sent it."""

    sender: str
    kind: str
    reason: str
    penalty: str | None = None
    #: the rejection counter to count it under (default "invalid-<kind>")
    code: str = ""
    #: False for repeats the log need not show again (a flood must not flood the log)
    logged: bool = True


@dataclass(frozen=True)
class Withheld:
    """`trainer` announced an update by reference, and the round was decided without its bytes
    reaching us or the block. Evidence for its gossip score only if the trainer itself was also
    seen failing to serve them (a fetch still in flight is just a slow link): `proven`, set by
    p2p_node.round_core, which hears of the failed fetches."""

    trainer: str
    proven: bool = False


@dataclass(frozen=True)
class Commit:
    """The round is decided: store this block and continue from this model."""

    committed: CommittedBlock
    new_state: ModelState


Action = Union[Publish, PublishSigned, OfferBlob, FetchBlob, FetchModel, Judge, SetTimer,
               Persist, HintBehind, Evidence, Rejected, Withheld, Commit]


@dataclass(frozen=True)
class PendingUpdate:
    """A signed update announced by reference, whose tensors are still being fetched."""

    sender: str
    digest: bytes
    samples: int
    ref: BlobRef
    #: the announcement's "dp" entry ({} without), checked with the tensors once they arrive
    dp_entry: dict = field(default_factory=dict)
    #: on a sealed network, the key wraps the blob's ciphertext opens with (gossip.sealing)
    wraps: dict = field(default_factory=dict)
    #: and the signed commitment to the one content key they must all hold
    key_commit: bytes = b""


class RoundMachine:
    """What one peer does in one round, given what it has received so far."""

    def __init__(self, ctx: RoundContext, me: str,
                 pbft_snapshot: dict[str, Any] | None = None,
                 evidence: tuple[tuple[bytes, bytes], ...] = (),
                 joins: tuple[bytes, ...] = (),
                 timeouts: RoundTimeouts = RoundTimeouts(),
                 persisted: Mapping[str, bytes | None] | None = None,
                 residual: ModelState | None = None,
                 seal_key: SealKey | None = None,
                 ) -> None:
        self.ctx = ctx
        #: our X25519 key (gossip.sealing): opens what is sealed to us, keys what we seal
        self.seal_key = seal_key
        #: a trainer's error-feedback residual (topk: what earlier updates left unsent),
        #: carried in from the last round and replaced by this round's once we train
        self.residual = residual
        self.me = me
        self.timeouts = timeouts
        persisted = persisted or {}
        if pbft_snapshot is None and persisted.get("pbft"):
            pbft_snapshot = cbor2.loads(persisted["pbft"])
        #: payloads of our update and score vector signed this round before a restart, by kind
        self.written_ahead: dict[str, Any] = {}
        for kind in WRITTEN_AHEAD_KINDS:
            raw = persisted.get(f"signed-{kind}")
            if raw:
                held_height, held = cbor2.loads(raw)
                if held_height == ctx.height:
                    # Ed25519 signing is deterministic: the same payload signs to the same bytes.
                    self.written_ahead[kind] = (decode_envelope(held).payload
                                                if isinstance(held, bytes) else held)
        #: equivocation proofs this peer holds, recorded in the block if it proposes
        self.evidence = evidence
        #: whom they convict (checked when received): not waited for, like `ctx.excluded`
        self._proven = {evidence_member(pair[0]) for pair in evidence}
        #: join requests this peer holds (chain.membership.admissible_joins), admitted if it
        #: proposes
        self.joins = joins
        self.updates: dict[str, ReceivedUpdate] = {}
        #: the signed update held per trainer, for evidence should it sign a second one
        self._update_envelopes: dict[str, Envelope] = {}
        #: senders whose second, different update or score vector was turned into evidence
        self._convicted: set[str] = set()
        #: updates announced by blob reference, by sender, until their bytes arrive (on_blob)
        self.pending_blobs: dict[str, PendingUpdate] = {}
        self._blob_size: int | None = None
        #: digests of announced updates whose fetched bytes were refused: not fetched again
        self._refused_updates: set[bytes] = set()
        self.own_reference: ModelState | None = None
        #: DP noise variance of own_reference (0 without DP)
        self.own_noise_variance = 0.0
        self.score_vectors: dict[str, bytes] = {}
        #: judged rounds: every vote vector held, by (judge, update set it judged)
        self.vote_vectors: dict[tuple[str, tuple], bytes] = {}
        #: ... parsed, by their bytes (counted_senders asks on every input)
        self._parsed_votes: dict[bytes, Any] = {}
        #: judged rounds: the update sets we signed a vote on
        self._voted: set[tuple[tuple[str, bytes], ...]] = set()
        #: pledged votes: every pledge held, by (judge, update set), and the envelopes of
        #: others' (evidence should one sign a second on a set)
        self.pledges: dict[tuple[str, tuple], bytes] = {}
        self._pledge_envelopes: dict[tuple[str, tuple], Envelope] = {}
        #: ... our own, by update set: the votes (as sent) and salt they hash, and which we
        #: revealed
        self._pledged: dict[tuple, tuple[list[float], bytes]] = {}
        self._revealed: set[tuple] = set()
        #: ... and whose reveal deadline passed: the propose deadline, or for a pledge made
        #: after it its own `REVEAL_TIMER` (its view the pledge's number this round)
        self._reveal_due: set[tuple] = set()
        self._pledge_order: list[tuple] = []
        if persisted.get("pledge-secret"):
            held_height, secrets = cbor2.loads(persisted["pledge-secret"])
            if held_height == ctx.height:
                self._pledged = {tuple((t, d) for t, d in u): (list(v), salt)
                                 for u, v, salt in secrets}
        self.collect_expired = False
        self.propose_expired = False
        self.scored = False
        #: judged rounds: the updates our candidates were built from, until we vote
        self._judging: tuple[tuple[str, bytes], ...] | None = None
        self.candidate: Block | None = None
        self.certified: CommittedBlock | None = None
        self.validated: dict[bytes, tuple[Block, ModelState]] = {}
        self._pending_validity: dict[bytes, Block] = {}
        self.committed: Commit | None = None
        #: a non-reader's fetch of the certified block's model (FetchModel), once asked
        self._model_ref: BlobRef | None = None
        self.consensus: pbft.PbftCore | None = None
        if self.is_validator:
            args = (ctx.consensus_members, me, self._validate_value, self._verify_message)
            self.consensus = (pbft.PbftCore.from_snapshot(pbft_snapshot, *args)
                              if pbft_snapshot and pbft_snapshot.get("height") == ctx.height
                              else pbft.PbftCore(ctx.height, *args))

    # roles -------------------------------------------------------------------------------------
    @property
    def is_committee(self) -> bool:
        return self.me in self.ctx.committee

    @property
    def is_validator(self) -> bool:
        """Whether this peer runs pBFT on the block: a committee member, or every member when
        the genesis has the whole membership sign certificates."""
        return self.me in self.ctx.consensus_members

    @property
    def is_trainer(self) -> bool:
        return self.me in self.ctx.trainers

    @property
    def is_reader(self) -> bool:
        """Whether this peer reads the round's updates: every peer, unless the genesis seals
        them to the round's validators (then only those, who score or re-derive the block)."""
        return not self.ctx.sealed or self.me in self.ctx.readers

    # inputs ------------------------------------------------------------------------------------
    def start(self) -> list[Action]:
        """Begin the round: arm the collect deadline and the stall watch; committee members
        arm their view timer."""
        actions: list[Action] = [SetTimer(COLLECT_TIMER, 0, self.timeouts.collect),
                                 SetTimer(STALL_TIMER, 0, self.timeouts.base_view)]
        if self.consensus:
            actions += self._write_ahead(self._from_consensus(self.consensus.start()))
        return actions

    def feed(self, event: Input) -> list[Action]:
        """Take one input; returns what to do, `Persist` actions before what they protect."""
        match event:
            case Received(envelope):
                return self._write_ahead(self.on_envelope(envelope))
            case _ if event.height != self.ctx.height:
                return []  # a worker or timer of a round already decided
            case Trained(_, state, samples, dp):
                return self._write_ahead(self.on_own_update(state, samples, dp))
            case Judged(_, base_loss, losses, salt):
                return self._write_ahead(self.on_judged(base_loss, losses, salt))
            case BlobArrived(_, digest, data):
                return self._write_ahead(self.on_blob(digest, data))
            case ModelArrived(_, digest, data):
                return self.on_model(digest, data)
            case TimerFired(_, name, view):
                return self._write_ahead(self.on_timer(name, view))
        raise TypeError(f"not a round input: {event!r}")

    def _write_ahead(self, actions: list[Action]) -> list[Action]:
        """Put the records a restarted peer needs before the publishes that need them: the pBFT
        state before any vote (never two conflicting votes in a view), and our update and score
        vector before we sign them (never two of one kind in a round; after a restart the one
        signed before is published again instead)."""
        out: list[Action] = []
        if self.consensus is not None and any(
                isinstance(a, Publish) and a.kind in PBFT_KINDS for a in actions):
            out.append(Persist("pbft", cbor2.dumps(self.consensus.snapshot(), canonical=True)))
        for action in actions:
            if isinstance(action, Publish) and action.kind in WRITTEN_AHEAD_KINDS:
                payload = self.written_ahead.setdefault(action.kind, action.payload)
                if action.kind in ("scores", "pledge") and isinstance(payload, dict) and \
                        payload.get("judged") != action.payload.get("judged"):
                    # a judge's vote on another update set (MAX_VOTE_SETS): not a second one
                    payload = self.written_ahead[action.kind] = action.payload
                out.append(Persist(f"signed-{action.kind}", cbor2.dumps(
                    [self.ctx.height, payload], canonical=True)))
                action = Publish(action.kind, payload)
            out.append(action)
        return out

    def on_own_update(self, state: ModelState, samples: int,
                      dp: DpReport | None = None) -> list[Action]:
        """Local training finished: trainers gossip the update, members keep it as reference.

        `dp` is the training's DP report (learning.privacy.train_local_dp), None without DP."""
        if self.committed:
            return []
        if self.is_committee:
            self.own_reference = state
            if self.ctx.dp is not None:
                self.own_noise_variance = self.ctx.dp.noise_variance(dp, samples)
            if not self.ctx.selection.judged:
                return self._progress()
        if self.is_trainer:
            # a judge's own update comes back through gossip like any other (then it judges)
            return self._publish_update(state, samples, dp)
        return []

    def _publish_update(self, state: ModelState, samples: int,
                        dp: DpReport | None) -> list[Action]:
        """Our update, as the genesis codec and sealing say it travels."""
        common: dict[str, Any] = {"samples": samples, "base": self.ctx.base_hash}
        if dp is not None:
            common["dp"] = dp.to_dict()
        # The genesis codec: the trained state itself, or a compressed delta over the base.
        key, tensors = "model", encode_state(state)
        if self.ctx.codec.compresses:
            key = "delta"
            tensors, self.residual = encode_with_feedback(
                self.ctx.base_state, state, self.ctx.codec, self.residual)
        data = cbor2.dumps(tensors, canonical=True)
        if self.ctx.sealed:
            return self._sealed_update(data, common)
        if len(data) <= INLINE_UPDATE_BYTES:
            return [Publish("update", {key: tensors, **common})]
        # Too large for one gossip message: gossip the signed reference, serve the bytes.
        return [OfferBlob(data),
                Publish("update", {"blob": BlobRef.of(data).to_obj(), **common})]

    def _sealed_update(self, data: bytes, common: dict[str, Any]) -> list[Action]:
        """Our update's bytes sealed to the round's readers (docs/protocol.md, "Sealed
        updates"): inline if it fits a gossip message, else the ciphertext as a blob."""
        if self.seal_key is None:
            raise ValueError("a sealed network's trainer needs its seal key")
        key, nonce = self.seal_key.content_key(self._seal_context(), data)
        sealed = seal(data, self.ctx.readers, key, nonce)
        keys = {"keys": sealed.wraps_obj(), "commit": sealed.key_commit}
        # the ciphertext, the wraps and the commit (its bytes, key and CBOR headers) inline
        if len(sealed.ciphertext) + wraps_size(self.ctx.readers) + COMMIT_BYTES + 8 <= \
                INLINE_UPDATE_BYTES:
            return [Publish("update", {"sealed": sealed.ciphertext, **keys, **common})]
        return [OfferBlob(sealed.ciphertext),
                Publish("update", {"blob": BlobRef.of(sealed.ciphertext).to_obj(), **keys,
                                   **common})]

    def _seal_context(self) -> bytes:
        """What a content key is bound to besides the plaintext: the network and round."""
        return self.ctx.network_id + self.ctx.height.to_bytes(8, "big")

    def _open(self, ciphertext: bytes, wraps: dict[str, bytes], key_commit: bytes) -> bytes:
        """The plaintext of an update sealed to us, under the key its body commits to (so
        every reader opens the same one); SealError if it does not open."""
        if self.seal_key is None:
            raise SealError("this peer holds no seal key")
        return open_sealed(ciphertext, wraps, self.seal_key, key_commit)

    def on_blob(self, digest: bytes, data: bytes) -> list[Action]:
        """The bytes of an update announced by reference arrived (already hash-checked)."""
        pending = next((p for p in self.pending_blobs.values() if p.ref.digest == digest), None)
        if self.committed or pending is None or BlobRef.of(data) != pending.ref:
            return []
        del self.pending_blobs[pending.sender]
        try:
            if self.ctx.sealed:
                data = self._open(data, pending.wraps, pending.key_commit)
            state = self._decode_tensors(data)
        except SealError as exc:
            self._refused_updates.add(pending.digest)
            return [Rejected(pending.sender, "update", f"sealed blob: {exc}", "invalid-update")]
        except ValueError as exc:
            self._refused_updates.add(pending.digest)
            return [Rejected(pending.sender, "update", f"bad tensors: {exc}",
                             "invalid-update")]
        actions = self._accept_update(pending.sender, pending.digest, pending.samples, state,
                                      pending.dp_entry)
        if actions:
            self._refused_updates.add(pending.digest)
        return actions + self._progress()

    def on_model(self, digest: bytes, data: bytes) -> list[Action]:
        """A non-reader's fetched checkpoint of the certified block's model (hash checked)."""
        if self.committed or self.certified is None or self._model_ref is None or \
                digest != self._model_ref.digest:
            return []
        certified = self.certified
        base = self.ctx.base_state
        try:
            state = state_from_bytes(data)
            if set(state) != set(base) or any(state[k].shape != base[k].shape or
                                              state[k].dtype != base[k].dtype for k in base):
                raise ValueError("its tensors do not match the model")
            if state_hash(state) != certified.block.model_hash:
                raise ValueError("it re-encodes to another hash")
        except ValueError as exc:
            # Hash-correct bytes that are no model: a quorum certified garbage.
            self.certified = None
            return [Rejected("", "block", f"certified block {certified.block.hash().hex()[:12]}"
                                          f"'s model is invalid: {exc}")]
        self.committed = Commit(certified, state)
        return [self.committed, Publish("block", certified.to_obj(), repeat=False)]

    def on_collect_deadline(self) -> list[Action]:
        """Stop waiting for late updates: score what has arrived."""
        self.collect_expired = True
        return self._progress()

    def on_propose_deadline(self) -> list[Action]:
        """Stop waiting for every member's scores: build the candidate block from a quorum."""
        self.propose_expired = True
        self._reveal_due |= set(self._pledge_order)  # pledged votes: reveal what we pledged
        return self._progress()

    def on_timer(self, name: str, view: int) -> list[Action]:
        """A timer the core armed fired: a deadline, the stall watch or pBFT's view timer."""
        if self.committed:
            return []
        if name == COLLECT_TIMER:
            return [SetTimer(PROPOSE_TIMER, 0, self.timeouts.propose),
                    *self.on_collect_deadline()]
        if name == PROPOSE_TIMER:
            return self.on_propose_deadline()
        if name == REVEAL_TIMER:
            self._reveal_due |= {u for i, u in enumerate(self._pledge_order) if i == view}
            return self._progress()
        if name == STALL_TIMER:
            return [HintBehind(), SetTimer(STALL_TIMER, 0, self.timeouts.base_view)]
        if self.consensus is None:
            return []
        return self._from_consensus(self.consensus.on_timer(name, view)) + self._progress()

    def on_envelope(self, env: Envelope) -> list[Action]:
        """An admitted message of this round."""
        if self.committed or env.round != self.ctx.height:
            return []
        try:
            if env.kind in PBFT_KINDS:
                actions = self._on_consensus(env)
            else:
                handler = {"update": self._on_update, "scores": self._on_scores,
                           "pledge": self._on_pledge, "block": self._on_block}[env.kind]
                actions = handler(env)
        except BlockError as exc:  # a malformed score vector, or a block failing its certificate
            return [Rejected(env.sender, env.kind, str(exc), f"invalid-{env.kind}")]
        return actions + self._progress()

    # handlers ----------------------------------------------------------------------------------
    def _on_update(self, env: Envelope) -> list[Action]:
        if env.sender not in self.ctx.trainers:
            return [Rejected(env.sender, "update", "sender is not a trainer this round")]
        if not self.is_reader:
            return []  # sealed to the validators: the block comes certified, the model by hash
        digest = env.digest()
        if digest in self._refused_updates:
            return []  # refused once already (its blob did not decode): a rebroadcast
        held = self.updates.get(env.sender) or self.pending_blobs.get(env.sender)
        if held is not None:
            if held.digest == digest:
                return []  # the same update again (a rebroadcast or a replay): nothing new
            return self._second_message(self._update_envelopes[env.sender], env)
        body = env.payload
        # Exactly one of the inline tensors or a blob reference; "dp" when training used DP.
        # Inline tensors are the state itself ("model") or, under a genesis codec, a "delta";
        # on a sealed network, their ciphertext ("sealed"), its key wraps ("keys") and the
        # commitment to the one content key every wrap must hold ("commit").
        inline = "sealed" if self.ctx.sealed else "delta" if self.ctx.codec.compresses \
            else "model"
        extra = {"keys", "commit"} if self.ctx.sealed else set()
        if not isinstance(body, dict) or set(body) - {"dp"} not in (
                {inline, "samples", "base", *extra}, {"blob", "samples", "base", *extra}):
            return [Rejected(env.sender, "update", "malformed update body" + (
                self._body_hint(inline, set(body)) if isinstance(body, dict) else ""),
                "invalid-update")]
        if body["base"] != self.ctx.base_hash:
            return [Rejected(env.sender, "update", "trained from another base model")]
        samples = body["samples"]
        if not isinstance(samples, int) or isinstance(samples, bool) or not 0 < samples < 2**40:
            return [Rejected(env.sender, "update", "bad sample count", "invalid-update")]
        wraps: dict[str, bytes] = {}
        key_commit = b""
        if self.ctx.sealed:
            try:
                wraps = parse_wraps(body["keys"], self.ctx.readers)
                key_commit = parse_commit(body["commit"])
            except SealError as exc:
                return [Rejected(env.sender, "update", f"sealed update: {exc}",
                                 "invalid-update")]
        if "blob" in body:
            try:
                ref = BlobRef.from_obj(body["blob"], max_size=self._expected_blob_size())
            except TransferError as exc:
                return [Rejected(env.sender, "update", f"bad blob reference: {exc}",
                                 "invalid-update")]
            if ref.size != self._expected_blob_size():
                return [Rejected(env.sender, "update", f"blob of {ref.size} bytes cannot hold "
                                 f"this model ({self._expected_blob_size()} bytes)",
                                 "invalid-update")]
            dp_entry = {"dp": body["dp"]} if "dp" in body else {}
            self._update_envelopes[env.sender] = env
            self.pending_blobs[env.sender] = PendingUpdate(env.sender, digest, samples, ref,
                                                           dp_entry, wraps, key_commit)
            return [FetchBlob(ref, env.sender)]
        try:
            if self.ctx.sealed:
                state = self._decode_tensors(self._open(body["sealed"], wraps, key_commit))
            elif self.ctx.codec.compresses:
                state = decode_delta(self.ctx.base_state, body["delta"], self.ctx.codec)
            else:
                state = decode_state(body["model"])
        except SealError as exc:
            return [Rejected(env.sender, "update", f"sealed update: {exc}", "invalid-update")]
        except ValueError as exc:
            return [Rejected(env.sender, "update", f"bad tensors: {exc}",
                             "invalid-update")]
        actions = self._accept_update(env.sender, digest, samples, state, body)
        if env.sender in self.updates:
            self._update_envelopes[env.sender] = env
        return actions

    def _body_hint(self, inline: str, keys: set) -> str:
        """Why an update body with the wrong inline key, or a sealed one without its key wraps
        or key commitment, is refused, for the log ("" if nothing more specific to say)."""
        missing = sorted({"keys", "commit"} - keys)
        if self.ctx.sealed and {"sealed", "blob"} & keys and missing:
            return f" (a sealed update carries its key wraps and key commitment: no " \
                   f"{' or '.join(map(repr, missing))})"
        if not {"model", "delta", "sealed"} & keys:
            return ""
        if self.ctx.sealed:
            return " (this network seals updates: genesis sealing validators)"
        return (f" (this network's updates carry a {inline!r} map: genesis compression "
                f"{self.ctx.codec.name}, no sealing)")

    def _second_message(self, first: Envelope, second: Envelope) -> list[Action]:
        """A second, different update or score vector signed by one sender this round: honest
        peers write theirs ahead and never sign two, so the pair is evidence (check_evidence)
        when it fits in a block; refused (and penalised) either way."""
        if second.sender in self._convicted or first.signing_bytes() == second.signing_bytes():
            return []
        if max(len(first.encode()), len(second.encode())) > MAX_EVIDENCE_MESSAGE_BYTES:
            return [Rejected(second.sender, second.kind, f"second, different {second.kind} "
                             "this round (too large to record as evidence)",
                             f"invalid-{second.kind}")]
        self._convicted.add(second.sender)
        return [Evidence(second.sender, first, second)]

    def _expected_blob_size(self) -> int:
        """Bytes of any update's tensors: the layout is the base model's and the codec the
        genesis', so the size is fixed too."""
        if self._blob_size is None:
            size = encoded_size(self.ctx.base_state, self.ctx.codec)
            self._blob_size = sealed_size(size) if self.ctx.sealed else size
        return self._blob_size

    def _decode_tensors(self, data: bytes) -> ModelState:
        """The update a blob's bytes hold: the state, or the genesis codec's delta decoded
        against the base (what every peer scores and aggregates); ValueError if malformed."""
        if self.ctx.codec.compresses:
            return delta_from_bytes(self.ctx.base_state, data, self.ctx.codec)
        return state_from_bytes(data)

    def _accept_update(self, sender: str, digest: bytes, samples: int,
                       state: ModelState, body: dict) -> list[Action]:
        """Checks of an update's tensors (inline or fetched) and of its body's DP entry."""
        base = self.ctx.base_state
        if set(state) != set(base) or any(state[k].shape != base[k].shape or
                                          state[k].dtype != base[k].dtype for k in base):
            return [Rejected(sender, "update", "tensors do not match the model",
                             "invalid-update")]
        if not all(bool(t.isfinite().all()) for t in state.values()):
            return [Rejected(sender, "update", "non-finite values in tensors",
                             "invalid-update")]
        # The optional "dp" entry: required, and exactly the genesis', when it sets training.dp.
        try:
            dp = update_dp(self.ctx, body, samples, state)
        except ValueError as exc:
            return [Rejected(sender, "update", f"DP parameters: {exc}", "invalid-update")]
        self.updates[sender] = ReceivedUpdate(sender, digest, samples, state, dp)
        return []

    def _on_scores(self, env: Envelope) -> list[Action]:
        if env.sender not in self.ctx.committee:
            return [Rejected(env.sender, "scores", "sender is not on the committee")]
        raw = env.encode()
        if self.ctx.selection.judged:
            return self._on_votes(env, raw)
        held = self.score_vectors.get(env.sender)
        if held is not None:
            return [] if held == raw else self._second_message(decode_envelope(held), env)
        parse_vector_body(self.ctx, env)
        self.score_vectors[env.sender] = raw
        return []

    def _on_votes(self, env: Envelope, raw: bytes) -> list[Action]:
        """A judge's vote vector: one per update set it judged, MAX_VOTE_SETS at most."""
        vector = parse_vector_body(self.ctx, env)
        updates = vector.updates
        held = self.vote_vectors.get((env.sender, updates))
        if held is not None:
            return [] if held == raw else self._second_message(decode_envelope(held), env)
        if sum(j == env.sender for j, _ in self.vote_vectors) >= MAX_VOTE_SETS:
            return [Rejected(env.sender, "scores", f"more than {MAX_VOTE_SETS} vote vectors "
                             "this round", "invalid-scores")]
        self.vote_vectors[(env.sender, updates)] = raw
        self._parsed_votes[raw] = vector
        self.score_vectors.setdefault(env.sender, raw)
        return []

    def _on_pledge(self, env: Envelope) -> list[Action]:
        """A judge's pledge (pledged votes): one per update set it judged, MAX_VOTE_SETS at
        most; a second, different one on a set is evidence."""
        if env.sender not in self.ctx.committee:
            return [Rejected(env.sender, "pledge", "sender is not a judge this round")]
        updates, pledge = parse_pledge_body(self.ctx, env)
        key = (env.sender, updates)
        held = self._pledge_envelopes.get(key)
        if held is not None:
            return [] if held.signing_bytes() == env.signing_bytes() else \
                self._second_message(held, env)
        if key in self.pledges:  # our own, back through gossip
            self._pledge_envelopes[key] = env
            return []
        if sum(j == env.sender for j, _ in self.pledges) >= MAX_VOTE_SETS:
            return [Rejected(env.sender, "pledge", f"more than {MAX_VOTE_SETS} pledges this "
                             "round", "invalid-pledge")]
        self.pledges[key] = pledge
        self._pledge_envelopes[key] = env
        return []

    def _on_consensus(self, env: Envelope) -> list[Action]:
        if self.consensus is None:
            return []  # not a validator: the certified block will come as a `block`
        try:
            message = decode_message(env.kind, env.round, env.sender, env.payload, env.signature)
        except MessageError as exc:
            return [Rejected(env.sender, env.kind, str(exc), "invalid-vote")]
        return self._from_consensus(self.consensus.on_message(message))

    def _on_block(self, env: Envelope) -> list[Action]:
        committed = CommittedBlock.from_obj(env.payload)
        block = committed.block
        if block.height != self.ctx.height or block.prev_hash != self.ctx.prev_hash:
            return [Rejected(env.sender, "block", "block does not extend our head")]
        committed.certificate.verify(block, self.ctx.consensus_members)
        self.certified = self.certified or committed
        return []

    # consensus glue ----------------------------------------------------------------------------
    def _verify_message(self, message: Message) -> bool:
        """Signature check of a pBFT message embedded in another (for the core)."""
        return Envelope(message.kind, self.ctx.network_id, message.height, message.sender,
                        message.body(), message.signature).has_valid_signature()

    def _validate_value(self, value_hash: bytes, value: bytes) -> bool | None:
        """Validity of a proposed block: it must re-derive; None while updates are missing."""
        try:
            block = Block.decode(value)
            if block.height != self.ctx.height or block.prev_hash != self.ctx.prev_hash:
                return False
            derived = self._rederive(block)
        except BlockError:
            return False
        if derived is None:
            self._pending_validity[value_hash] = block
            return None
        return True

    def _from_consensus(self, outputs: list[pbft.Output]) -> list[Action]:
        """Turn the pBFT core's outputs into actions for the driver."""
        actions: list[Action] = []
        for out in outputs:
            if isinstance(out, pbft.Broadcast):
                actions.append(Publish(out.message.kind, out.message.body()))
            elif isinstance(out, pbft.Relay):
                actions += [PublishSigned(self._envelope_of(m)) for m in out.messages]
            elif isinstance(out, pbft.SetTimer):
                actions.append(SetTimer(out.name, out.view,
                                        self.timeouts.base_view * out.duration_factor))
            elif isinstance(out, pbft.Decided):
                certificate = CommitCertificate(out.view, out.certificate)
                self.certified = CommittedBlock(Block.decode(out.value), certificate)
            elif isinstance(out, pbft.Equivocation):
                actions.append(Evidence(out.member, self._envelope_of(out.first),
                                        self._envelope_of(out.second)))
            elif isinstance(out, pbft.Rejected):
                actions.append(Rejected(out.sender, out.kind, out.reason))
            # ProposalNeeded: the candidate is handed over as soon as it can be derived.
        return actions

    def _envelope_of(self, message: Message) -> Envelope:
        return Envelope(message.kind, self.ctx.network_id, message.height, message.sender,
                        message.body(), message.signature)

    # progress ----------------------------------------------------------------------------------
    def _progress(self) -> list[Action]:
        """Take every step the inputs so far allow, in protocol order."""
        if self.committed:
            return []
        actions = self._maybe_score() + self._maybe_repledge() + self._maybe_reveal()
        actions += self._maybe_candidate() + self._recheck_validity()
        actions += self._maybe_vote_again()
        return actions + self._maybe_commit()

    def _maybe_score(self) -> list[Action]:
        if self.scored or self.own_reference is None:
            return []
        if self.ctx.selection.judged:
            return self._maybe_judge()
        # Members with recorded or proven misbehaviour (a twin above all: two processes with one
        # key) are not waited for: their update is scored if it came, but cannot hold up the
        # round (their gossip score is already down: their messages may never come).
        awaited = set(self.ctx.trainers) - self.ctx.excluded - self._proven
        if not (self.collect_expired or set(self.updates) >= awaited):
            return []
        self.scored = True
        variances = None
        if self.ctx.dp is not None:  # every update declares its noise: debias (docs/privacy.md)
            variances = {t: self.ctx.dp.noise_variance(u.dp, u.samples)
                         for t, u in self.updates.items()}
        distances = score_updates(self.own_reference,
                                  {t: u.state for t, u in self.updates.items()},
                                  variances, self.own_noise_variance)
        return [Publish("scores", scores_payload(
            {t: (self.updates[t].digest, d) for t, d in distances.items()}))]

    def _maybe_judge(self) -> list[Action]:
        """Judged rounds: once every trainer's update is in (or the collect deadline passed),
        build the round's candidate models from the updates held and ask for our data's
        loss on each (`Judge`; `on_judged` votes)."""
        awaited = set(self.ctx.trainers) - self.ctx.excluded - self._proven
        if not (self.collect_expired or set(self.updates) >= awaited):
            return []
        self.scored = True
        return self._judge(tuple(sorted((t, u.digest) for t, u in self.updates.items())))

    def _judge(self, updates: tuple[tuple[str, bytes], ...]) -> list[Action]:
        self._judging = updates
        states = {t: self.updates[t].state for t, _ in updates}
        samples = {t: self.updates[t].samples for t, _ in updates}
        models = tuple(candidate_models(self.ctx.base_state, states, samples,
                                        judged_candidates(self.ctx, updates),
                                        self.ctx.selection.choice))
        return [Judge(self.ctx.height, self.ctx.base_state, models)]

    def _held_votes(self) -> list[tuple[str, tuple, bytes]]:
        return [(judge, updates, raw) for (judge, updates), raw in self.vote_vectors.items()]

    def _maybe_vote_again(self) -> list[Action]:
        """Judged rounds, once the propose deadline passed with no update set holding a quorum
        of votes (a late update split the judges: some judged it, some did not): vote once
        more, on the set most other judges voted on of those we hold every update of."""
        if not (self.ctx.selection.judged and self.propose_expired and self._voted) or \
                self.pledged_votes or self._judging is not None or self.candidate is not None or \
                len(self._voted) >= MAX_VOTE_SETS:
            return []
        group = judged_group(self.ctx, self._held_votes())
        if not group or self.ctx.enough_score_vectors(group, ()):
            return []
        counts: dict[tuple[tuple[str, bytes], ...], int] = {}
        for _, updates in self.vote_vectors:
            counts[updates] = counts.get(updates, 0) + 1
        for updates in sorted(counts, key=lambda u: (-counts[u], -len(u), u)):
            if updates not in self._voted and all(
                    t in self.updates and self.updates[t].digest == d for t, d in updates):
                return self._judge(updates)
        return []

    def on_judged(self, base_loss: float, losses: tuple[float, ...],
                  salt: bytes = b"") -> list[Action]:
        """Our data's losses arrived: sign our vote vector (written ahead, like a score
        vector: never two in a round), or on a pledged network our pledge to it."""
        if self._judging is None or self.committed:
            return []
        updates, self._judging = self._judging, None
        self._voted.add(updates)
        votes = list(judge_votes(base_loss, losses))
        if not self.pledged_votes:
            return [Publish("scores", votes_payload(dict(updates), votes))] + self._progress()
        if updates not in self._pledged:  # else pledged before a restart: reveal that
            if len(salt) != SALT_BYTES:
                raise ValueError(f"pledged votes need a {SALT_BYTES}-byte salt, got {len(salt)}")
            self._pledged[updates] = (votes_payload({}, votes)["votes"], salt)
        wire, salt = self._pledged[updates]
        self.pledges[(self.me, updates)] = pledge_digest(self.ctx, self.me, updates, wire, salt)
        self._pledge_order.append(updates)
        secrets = [[[[t, d] for t, d in u], v, s] for u, (v, s) in sorted(self._pledged.items())]
        actions: list[Action] = [
            Persist("pledge-secret", cbor2.dumps([self.ctx.height, secrets], canonical=True)),
            Publish("pledge", pledge_payload(updates, self.pledges[(self.me, updates)]))]
        if self.propose_expired:  # a pledge to repair a stuck round: its own reveal deadline
            actions.append(SetTimer(REVEAL_TIMER, self._pledge_order.index(updates),
                                    self.timeouts.reveal_after))
        return actions + self._progress()



    @property
    def pledged_votes(self) -> bool:
        """Whether this network's judges pledge their votes before revealing them."""
        choice = self.ctx.selection.choice
        return choice is not None and choice.pledged

    @property
    def judging(self) -> tuple[tuple[str, bytes], ...] | None:
        """The update set a `Judge` we asked for is judging (None: none asked)."""
        return self._judging

    def _maybe_reveal(self) -> list[Action]:
        """Pledged votes: reveal each update set we pledged on once every judge's pledge on
        it is in (judges the evidence we hold convicts are not waited for), or its reveal
        deadline passed (the propose deadline: honest judges that judged late, under load,
        still get listed); the reveal lists every pledge on that set we hold
        (counted_votes)."""
        actions: list[Action] = []
        awaited = set(self.ctx.committee) - self.ctx.excluded - self._proven
        for updates, (votes, salt) in sorted(self._pledged.items()):
            if updates in self._revealed or (self.me, updates) not in self.pledges:
                continue
            seen = {j: p for (j, u), p in self.pledges.items() if u == updates}
            if not (updates in self._reveal_due or set(seen) >= awaited):
                continue
            self._revealed.add(updates)
            actions.append(Publish("scores", reveal_payload(updates, votes, salt, seen)))
        return actions

    def _maybe_repledge(self) -> list[Action]:
        """Pledged votes: judges that judged different update sets (a late update reached only
        some before their collect deadline) move to one. A set is *viable* once a quorum of
        judges pledged on it or on a larger set holding it (they hold its updates); we judge
        the best viable set (the largest, then by digests) if it is better than every set we
        pledged on and we hold its updates, before its judges reveal. Once the propose
        deadline passed with no set at a quorum of counted votes (judges that lacked an update
        withheld or revealed too early), we judge the best viable set we have not judged."""
        if not self.pledged_votes or not self._voted or self._judging is not None or \
                self.candidate is not None or len(self._voted) >= MAX_VOTE_SETS:
            return []
        pledged: dict[str, list[set]] = {}
        for judge, updates in self.pledges:
            if judge not in self._proven:
                pledged.setdefault(judge, []).append(set(updates))

        def rank(updates: tuple) -> tuple:
            holders = sum(any(set(updates) <= s for s in sets) for sets in pledged.values())
            return (holders >= self.ctx.quorum, len(updates), tuple(d for _, d in updates))

        sets = sorted({u for _, u in self.pledges}, key=rank, reverse=True)
        stuck = self.propose_expired and not self.ctx.enough_score_vectors(
            counted_senders(self.ctx, judged_group(self.ctx, self._held_votes(), self._parsed_votes),
                            self._parsed_votes), self._proven)
        ours = max(rank(u) for u in self._voted)
        for updates in sets:
            if not rank(updates)[0] or (not stuck and rank(updates) <= ours):
                break
            if updates not in self._voted and all(
                    t in self.updates and self.updates[t].digest == d for t, d in updates):
                return self._judge(updates)
        return []

    def _maybe_candidate(self) -> list[Action]:
        """Derive the block our score vectors imply; the pBFT core proposes it if we lead."""
        if self.consensus is None or self.candidate is not None:
            return []
        # Every member's vector, or enough once the propose deadline passed. Members the
        # evidence we hold convicts are not waited for (the block records the proofs, which
        # lowers the quorum to the other members': chain.round_rules.enough_score_vectors).
        vectors = self.score_vectors
        if self.ctx.selection.judged:  # only votes on one update set make a block
            vectors = judged_group(self.ctx, self._held_votes(), self._parsed_votes)
        senders = counted_senders(self.ctx, vectors, self._parsed_votes) \
            if self.ctx.selection.judged else set(vectors)
        if not (set(self.score_vectors) >= set(self.ctx.committee) - self._proven
                or self.propose_expired):
            return []
        if not self.ctx.enough_score_vectors(senders, self._proven):
            return []
        try:
            block, state = derive_block(self.ctx, list(vectors.values()),
                                        self.updates, self.evidence, self.joins)
        except MissingUpdates:
            return []
        self.candidate = block
        self.validated[block.hash()] = (block, state)
        return self._from_consensus(self.consensus.propose(block.hash(), block.encode()))

    def _recheck_validity(self) -> list[Action]:
        """Answer the core's "not yet known" validity questions that new updates settle."""
        actions: list[Action] = []
        for value_hash, block in list(self._pending_validity.items()):
            try:
                if self._rederive(block) is None:
                    continue  # still missing an update it depends on
                ok = True
            except BlockError:
                ok = False
            del self._pending_validity[value_hash]
            assert self.consensus is not None
            actions += self._from_consensus(self.consensus.on_value_validated(value_hash, ok))
        return actions

    def _rederive(self, block: Block) -> tuple[Block, ModelState] | None:
        """Re-derive `block` from its own score vectors; None while updates are missing."""
        known = self.validated.get(block.hash())
        if known is not None:
            return known
        try:
            derived, state = derive_block(self.ctx, list(block.score_vectors), self.updates,
                                          block.evidence, join_requests(block))
        except MissingUpdates:
            return None
        if derived != block:
            raise BlockError("block does not re-derive from its score vectors")
        self.validated[block.hash()] = (block, state)
        return block, state

    def _maybe_commit(self) -> list[Action]:
        if self.certified is None:
            return []
        if not self.is_reader:
            return self._fetch_certified_model()
        try:
            derived = self._rederive(self.certified.block)
        except BlockError as exc:
            # A quorum certified a block we cannot re-derive: more than f members lied.
            bad, self.certified = self.certified, None
            return [Rejected("", "block", f"certified block {bad.block.hash().hex()[:12]} is "
                                          f"invalid: {exc}")]
        if derived is None:
            return []  # certified, but we lack an update it depends on: wait for it
        self.committed = Commit(self.certified, derived[1])
        recorded = {u.peer for u in self.certified.block.updates}
        withheld: list[Action] = [Withheld(p) for p in sorted(self.pending_blobs)
                                  if p not in recorded and p != self.me]
        return withheld + [self.committed,
                           Publish("block", self.certified.to_obj(), repeat=False)]

    def _fetch_certified_model(self) -> list[Action]:
        """A non-reader of a sealed round holds no update to re-derive the certified block
        from: it checks what the score vectors decide (their signatures included) and asks for
        the model the certificate binds, by its hash (then on_model commits)."""
        assert self.certified is not None
        if self._model_ref is not None:
            return []  # asked already: on_model commits
        block = self.certified.block
        try:
            check_outline(self.ctx, block)
        except BlockError as exc:
            bad, self.certified = self.certified, None
            return [Rejected("", "block", f"certified block {bad.block.hash().hex()[:12]} is "
                                          f"invalid: {exc}")]
        # Any model of this layout encodes to the base's size (learning.tensors.state_bytes).
        self._model_ref = BlobRef(block.model_hash, len(state_bytes(self.ctx.base_state)))
        signers = tuple(member for member, _ in self.certified.certificate.votes)
        return [FetchModel(self._model_ref, signers)]
