"""Blocks, commit certificates and their one canonical CBOR encoding.

A block's hash covers everything but its certificate; the certificate is 2f+1 committee members'
signed votes for that hash, checkable by any peer against the committee the parent block named.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import cbor2

from bft.messages import MAX_VIEW
from bft.quorum import quorum_size
from gossip.cbor_profile import CborProfileError, decode_canonical
from gossip.envelope import Envelope
from learning.dp_accounting import DpReport


class BlockError(ValueError):
    """A block or certificate that is malformed or does not verify; the text says why."""


#: Largest height, sample count or other count a block may carry: 63 bits, like rounds.
MAX_BLOCK_INT = 2**63
#: A block (committed or not) arrives in a block envelope or a sync response (4 MiB), never
#: larger; its decoded item count is bounded like any network input.
MAX_BLOCK_BYTES = 4 * 1024 * 1024
MAX_BLOCK_ITEMS = 200_000


def _decode_profile(data: bytes) -> Any:
    """Canonical profile CBOR of a block; BlockError if not (gossip.cbor_profile)."""
    if isinstance(data, (bytes, bytearray)) and len(data) > MAX_BLOCK_BYTES:
        raise BlockError(f"undecodable block: {len(data)} bytes > {MAX_BLOCK_BYTES}")
    try:
        return decode_canonical(data, max_items=MAX_BLOCK_ITEMS)
    except CborProfileError as exc:
        raise BlockError(f"undecodable block: {exc}") from None


@dataclass(frozen=True)
class UpdateRef:
    """An aggregated update as the block records it: trainer, update envelope digest, samples,
    and the DP parameters the update declared (None on a network without DP)."""

    peer: str
    digest: bytes
    samples: int
    dp: DpReport | None = None

    def to_obj(self) -> list[Any]:
        # Three elements without DP, as before DP existed: old chains keep their hashes.
        head = [self.peer, self.digest, self.samples]
        return head if self.dp is None else [*head, self.dp.to_dict()]

    @classmethod
    def from_obj(cls, o: Any) -> UpdateRef:
        """Parse an untrusted [peer, digest, samples(, dp)] list; BlockError if malformed."""
        if not isinstance(o, list) or len(o) not in (3, 4):
            raise BlockError("update reference is not [peer, digest, samples(, dp)]")
        dp = _dp(o[3]) if len(o) == 4 else None
        return cls(_id(o[0]), _hash(o[1]), _int(o[2]), dp)


@dataclass(frozen=True)
class MembershipChange:
    """A change to the member set that a block records, effective from the next round.

    `join`: `request` is the joiner's signed join envelope (wire bytes), so any peer can check
    the admission; `leave`: a trainer silent for the genesis' `leave_after` blocks (no proof:
    the chain itself shows the silence), `request` is empty.
    """

    kind: str
    peer: str
    request: bytes = b""

    def to_obj(self) -> list[Any]:
        return [self.kind, self.peer, self.request]


@dataclass(frozen=True)
class Block:
    """The outcome of one round, agreed by the round's committee."""

    height: int
    prev_hash: bytes
    network_id: bytes
    committee: tuple[str, ...]
    trainers: tuple[str, ...]
    updates: tuple[UpdateRef, ...]
    #: wire bytes of the committee members' signed `scores` envelopes the outcome derives from
    score_vectors: tuple[bytes, ...]
    selected: tuple[str, ...]
    model_hash: bytes
    next_committee: tuple[str, ...]
    #: admissions and departures (chain.membership), sorted by (kind, peer)
    membership: tuple[MembershipChange, ...] = ()
    #: equivocation proofs: pairs of conflicting signed envelopes (wire bytes) by one member
    evidence: tuple[tuple[bytes, bytes], ...] = ()

    def to_obj(self) -> dict[str, Any]:
        return {
            "height": self.height, "prev_hash": self.prev_hash, "network_id": self.network_id,
            "committee": list(self.committee), "trainers": list(self.trainers),
            "updates": [u.to_obj() for u in self.updates],
            "score_vectors": list(self.score_vectors), "selected": list(self.selected),
            "model_hash": self.model_hash, "next_committee": list(self.next_committee),
            "membership": [c.to_obj() for c in self.membership], "evidence": [list(e) for e in self.evidence],
        }

    @classmethod
    def from_obj(cls, o: Any) -> Block:
        """Parse untrusted decoded CBOR; BlockError if any field has the wrong shape."""
        try:
            if not isinstance(o, dict) or set(o) != _BLOCK_FIELDS:
                raise BlockError("not a block map")
            block = cls(
                height=_int(o["height"]), prev_hash=_hash(o["prev_hash"]),
                network_id=_hash(o["network_id"]), committee=_ids(o["committee"]),
                trainers=_ids(o["trainers"]),
                updates=tuple(UpdateRef.from_obj(u) for u in _list(o["updates"])),
                score_vectors=tuple(_bytes(v) for v in _list(o["score_vectors"])),
                selected=_ids(o["selected"]), model_hash=_hash(o["model_hash"]),
                next_committee=_ids(o["next_committee"]),
                membership=_changes(o["membership"]),
                evidence=tuple(_pair(e) for e in _list(o["evidence"])))
        except BlockError:
            raise
        except (TypeError, ValueError, ArithmeticError) as exc:
            # A shape check missed above; the type only, never the text (it may quote values).
            raise BlockError(f"malformed block ({type(exc).__name__})") from None
        return block

    def encode(self) -> bytes:
        """Canonical CBOR of the block without certificate: what the committee agrees on."""
        return cbor2.dumps(self.to_obj(), canonical=True)

    @classmethod
    def decode(cls, data: bytes) -> Block:
        """Parse untrusted canonical bytes (what `encode` gives); BlockError if they are not."""
        return cls.from_obj(_decode_profile(data))

    def hash(self) -> bytes:
        """SHA-256 of `encode()`: the block's identity and the value pBFT decides on."""
        return hashlib.sha256(self.encode()).digest()


_BLOCK_FIELDS = {"height", "prev_hash", "network_id", "committee", "trainers", "updates",
                 "score_vectors", "selected", "model_hash", "next_committee", "membership",
                 "evidence"}


def commit_envelope(network_id: bytes, height: int, view: int, block_hash: bytes,
                    sender: str = "", signature: bytes = b"") -> Envelope:
    """The pBFT commit a committee member signs for `block_hash` at (`height`, `view`).

    Its payload is exactly `bft.messages.Commit.body()`, so the commits the committee gossips
    are the certificate's signatures, re-checkable by anyone.
    """
    return Envelope("commit", network_id, height, sender,
                    {"view": view, "value_hash": block_hash}, signature)


@dataclass(frozen=True)
class CommitCertificate:
    """A quorum of committee members' signed commits for one block in one view."""

    view: int
    votes: tuple[tuple[str, bytes], ...]

    def verify(self, block: Block, committee: tuple[str, ...]) -> None:
        """Raise BlockError unless a quorum of distinct `committee` members signed this block."""
        block_hash = block.hash()
        signers: set[str] = set()
        for member, signature in self.votes:
            if member not in committee:
                raise BlockError(f"certificate signer {member[-8:]} is not on the committee")
            if member in signers:
                raise BlockError(f"certificate counts {member[-8:]} twice")
            commit = commit_envelope(block.network_id, block.height, self.view, block_hash,
                                     member, signature)
            if not commit.has_valid_signature():
                raise BlockError(f"certificate signature of {member[-8:]} is invalid")
            signers.add(member)
        need = quorum_size(len(committee))
        if len(signers) < need:
            raise BlockError(f"certificate has {len(signers)} votes, needs {need}")


@dataclass(frozen=True)
class CommittedBlock:
    """A block with the certificate that makes it final."""

    block: Block
    certificate: CommitCertificate

    def to_obj(self) -> dict[str, Any]:
        return {"block": self.block.to_obj(),
                "certificate": {"view": self.certificate.view,
                                "commits": [[m, s] for m, s in self.certificate.votes]}}

    def encode(self) -> bytes:
        return cbor2.dumps(self.to_obj(), canonical=True)

    @classmethod
    def from_obj(cls, o: Any) -> CommittedBlock:
        """Parse untrusted decoded CBOR; BlockError if malformed (signatures are not checked)."""
        if not isinstance(o, dict) or set(o) != {"block", "certificate"}:
            raise BlockError("not a committed block map")
        cert = o["certificate"]
        if not isinstance(cert, dict) or set(cert) != {"view", "commits"}:
            raise BlockError("certificate is not {view, commits}")
        votes = tuple(_vote(v) for v in _list(cert["commits"]))
        view = _int(cert["view"])
        if view >= MAX_VIEW:
            raise BlockError("certificate view number out of range")
        return cls(Block.from_obj(o["block"]), CommitCertificate(view, votes))

    @classmethod
    def decode(cls, data: bytes) -> CommittedBlock:
        """Parse untrusted canonical bytes (what `encode` gives); BlockError if they are not."""
        return cls.from_obj(_decode_profile(data))


def _vote(v: Any) -> tuple[str, bytes]:
    if not isinstance(v, list) or len(v) != 2:
        raise BlockError("certificate commit is not [member, signature]")
    return _id(v[0]), _bytes(v[1])


def _changes(v: Any) -> tuple[MembershipChange, ...]:
    # Only the shape is checked here; whether a change is allowed is chain.membership's to say.
    if not isinstance(v, list):
        raise BlockError("membership is not a list")
    out = []
    for entry in v:
        if not (isinstance(entry, list) and len(entry) == 3 and entry[0] in ("join", "leave")):
            raise BlockError("membership entry is not [join|leave, peer, request]")
        out.append(MembershipChange(entry[0], _id(entry[1]), _bytes(entry[2])))
    return tuple(out)


def _pair(v: Any) -> tuple[bytes, bytes]:
    if not isinstance(v, list) or len(v) != 2:
        raise BlockError("evidence entry is not a pair of messages")
    return _bytes(v[0]), _bytes(v[1])


def _dp(v: Any) -> DpReport:
    # The epsilon is not re-derived here (that needs the accountant; chain.verify does it):
    # only the shape, and exact types, so that the block re-encodes to the bytes it came as.
    if isinstance(v, dict) and any(type(x) is not float for k, x in v.items()
                                   if k not in ("accountant", "steps")):
        raise BlockError("update reference DP parameters must be floats")
    try:
        report = DpReport.from_dict(v, check=False)
    except ValueError as exc:
        raise BlockError(f"update reference DP parameters: {exc}") from None
    return report


def _list(v: Any) -> list[Any]:
    if not isinstance(v, list):
        raise BlockError(f"expected a list, got {type(v).__name__}")
    return v


def _int(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < MAX_BLOCK_INT:
        raise BlockError(f"expected a non-negative 63-bit integer, got {type(v).__name__}")
    return v


def _bytes(v: Any) -> bytes:
    if not isinstance(v, bytes):
        raise BlockError(f"expected bytes, got {type(v).__name__}")
    return v


def _hash(v: Any) -> bytes:
    if not isinstance(v, bytes) or len(v) != 32:
        raise BlockError("expected a 32-byte hash")
    return v


def _id(v: Any) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= 128:
        raise BlockError("expected a peer id string")
    return v


def _ids(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list):
        raise BlockError("expected a list of peer ids")
    return tuple(_id(x) for x in v)
