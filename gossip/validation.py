"""The admission check every gossip message passes before any other code reads it.

Pure: the caller supplies the current round and the member set; the check returns a verdict with
the reason, so the driver can log it, count it and tell gossipsub to reject the message.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field

from gossip.envelope import MAX_ENVELOPE_BYTES, Envelope, EnvelopeError, decode_envelope

#: How far ahead of our own round a message may be and still be kept for later: a peer a little
#: ahead of us is normal (it committed first); one far ahead is either lying or we need to sync.
FUTURE_ROUND_WINDOW = 2
#: Distinct signed messages one member may have admitted (and so relayed) per round, per kind:
#: an honest member signs one update and one score vector a round, and a few pBFT messages per
#: view; two different updates or score vectors are let through so the round core holds the
#: pair as evidence (equivocation); a third is a flood. Copies (rebroadcasts) do not count.
#: Without this a member's well-signed, all-different updates for the next rounds were admitted,
#: relayed by every peer and held: commits fell to a quarter while it lasted.
DISTINCT_PER_ROUND = {"update": 2, "scores": 2, "pledge": 2}
#: ... and of all round-scoped kinds together: pBFT sends up to 5 per view (pre-prepare, prepare,
#: commit, view change, new view), so this leaves room for 25 views, far past what the view
#: timer's doubling back-off reaches in a round; our own messages pass this check too, and a
#: limit an honest member could reach would silence its view changes when they matter most.
DISTINCT_PER_ROUND_ALL = 128
#: The kinds those limits apply to: a block, an equivocation proof or a join request may be
#: forwarded after their round, and are bounded elsewhere.
_UNLIMITED_KINDS = ("block", "evidence", "join")
#: Kinds valid rounds after they were signed: an equivocation proof (until a block records it)
#: and a join request (chain.membership.JOIN_WINDOW decides for how long).
_LASTING_KINDS = ("evidence", "join")
#: Kinds that open the next round: the block of height h is what starts round h + 1 (a peer
#: still in round h commits from it), and a member's metrics report on it is sent after it.
_OPENING_KINDS = ("block", "metrics")


def is_past(kind: str, round_: int, current_round: int) -> bool:
    """Whether a message belongs to a round a peer in `current_round` has moved past: it is
    then neither relayed nor replayed nor gossiped (docs/network.md, "A peer grafted
    mid-training"). A round-scoped message is past once its round is over; a block or a
    metrics report once the round it opened is over too; evidence and join requests never."""
    if kind in _LASTING_KINDS:
        return False
    if kind in _OPENING_KINDS:
        return round_ < current_round - 1
    return round_ < current_round


@dataclass(frozen=True)
class Verdict:
    """Outcome of admitting one message: the envelope if accepted, else why not.

    `code` is a short stable class for counters and metrics (forged-signature, stale-round, ...);
    `reason` is the human-readable detail for the log.
    """

    envelope: Envelope | None
    code: str = ""
    reason: str = ""
    #: True for messages that are merely late or early (normal in gossip), not misbehaviour.
    benign: bool = False

    @property
    def accepted(self) -> bool:
        return self.envelope is not None


@dataclass
class EnvelopeAdmission:
    """Checks decoding, size, signature, network, sender membership and round window.

    `members` is the member set of the current round (the driver updates it as blocks admit
    and drop members); a non-member may send only a `join`, and only if it is in `joiners`
    (None: anyone, the open admission policy).
    """

    network_id: bytes
    members: frozenset[str]
    current_round: int = 0
    max_bytes: int = MAX_ENVELOPE_BYTES
    joiners: frozenset[str] | None = frozenset()
    #: (round, sender) -> kind -> digests of the distinct messages admitted (rounds still open)
    _distinct: dict[tuple[int, str], dict[str, set[bytes]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(set)))
    _pruned_at: int = -1

    def origin_allowed(self, origin: str, may_join: bool) -> bool:
        """Whether a message from `origin` is worth decoding: a member, or, where `may_join`
        (the membership topic), a peer the admission policy could let join."""
        if origin in self.members:
            return True
        return may_join and (self.joiners is None or origin in self.joiners)

    def admit(self, data: bytes, expected_kinds: tuple[str, ...] | None = None,
              origin: str | None = None) -> Verdict:
        """Decide whether wire bytes are an acceptable envelope right now.

        `origin` is the pubsub message's origin (its from_id, whose signature pubsub checked):
        we always publish our own envelopes, so the signer must be the origin. It is checked
        right after decoding, before the signature, since it is a string comparison.
        """
        try:
            env = decode_envelope(data, self.max_bytes)
        except EnvelopeError as exc:
            return Verdict(None, exc.code, str(exc))
        if origin is not None and env.sender != origin:
            return Verdict(None, "origin-mismatch",
                           f"envelope of {env.sender[-8:]} published by {origin[-8:]}")
        if expected_kinds is not None and env.kind not in expected_kinds:
            return Verdict(None, "wrong-topic", f"kind {env.kind} not allowed on this topic")
        if env.network_id != self.network_id:
            return Verdict(None, "wrong-network", "message of another network")
        if env.kind == "join":
            if env.sender not in self.members and self.joiners is not None and \
                    env.sender not in self.joiners:
                return Verdict(None, "not-admissible",
                               f"the admission policy does not let {env.sender[-8:]} join")
        elif env.sender not in self.members:
            # Membership changes at block boundaries: a message of another round may come from a
            # peer admitted (or departed) in a block we have not reached (or have passed).
            return Verdict(None, "not-member", f"sender {env.sender[-8:]} is not a member",
                           benign=env.round != self.current_round)
        # A stale message is dropped before its signature is checked: nothing is done with it
        # either way, and a flood of well-signed old messages would otherwise cost one Ed25519
        # check each. A metrics report is admitted for the federated evaluation's window
        # (p2p_node/federated_eval.py: an evaluation may finish rounds late), but the message
        # cache does not replay it once is_past (gossip/round_gossip.py).
        if env.kind != "metrics" and is_past(env.kind, env.round, self.current_round):
            return Verdict(None, "stale-round", f"round {env.round} < {self.current_round}",
                           benign=True)
        if not env.has_valid_signature():
            return Verdict(None, "forged-signature",
                           f"signature does not verify (claims sender {env.sender[-8:]})")
        if env.round > self.current_round + FUTURE_ROUND_WINDOW:
            return Verdict(None, "future-round",
                           f"round {env.round} too far ahead of {self.current_round}", benign=True)
        if env.kind not in _UNLIMITED_KINDS and not self._count_distinct(env, data):
            return Verdict(None, "envelope-flood",
                           f"more distinct {env.kind} messages of {env.sender[-8:]} for round "
                           f"{env.round} than a member signs")
        return Verdict(env)

    def _count_distinct(self, env: Envelope, data: bytes) -> bool:
        """Count `env` among its sender's distinct messages of its round; False over a limit."""
        if self._pruned_at != self.current_round:  # decided rounds: refused as stale now
            for key in [k for k in self._distinct if k[0] < self.current_round]:
                del self._distinct[key]
            self._pruned_at = self.current_round
        kinds = self._distinct[(env.round, env.sender)]
        digest = hashlib.sha256(data).digest()
        if digest in kinds[env.kind]:
            return True  # a copy (a rebroadcast): costs nothing more downstream
        if len(kinds[env.kind]) >= DISTINCT_PER_ROUND.get(env.kind, DISTINCT_PER_ROUND_ALL) or \
                sum(len(d) for d in kinds.values()) >= DISTINCT_PER_ROUND_ALL:
            return False
        kinds[env.kind].add(digest)
        return True
