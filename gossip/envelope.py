"""The signed envelope every message travels in, and its canonical CBOR encoding.

What is signed is the canonical CBOR of (domain tag, kind, network id, round, sender, payload), so
a signature binds a message to one network and one round: it cannot be replayed elsewhere.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

from gossip.cbor_profile import (CborEncodeError, CborProfileError, check_encodable,
                                 decode_canonical, encode_canonical)
from gossip.peer_keys import Signer, verify_signature

_DOMAIN = "cmfl-p2p/envelope/1"

#: Largest envelope we publish or accept over gossip. py-libp2p drops pubsub messages over 1 MiB
#: silently, so we stay below it with room for the pubsub framing and refuse loudly instead.
MAX_ENVELOPE_BYTES = 1024 * 1024 - 16 * 1024

#: update and scores carry learning; the pBFT kinds (bft.messages.KINDS) agree on the block;
#: pledge is a judge's commitment to its vote vector before it reveals it in its scores
#: (judged rounds with pledged votes); block and evidence (an equivocation proof) concern every peer; join is a non-member's request
#: to become one (chain.membership); metrics is a peer's federated evaluation of a committed
#: block on its own held-out data (p2p_node.federated_eval).
KINDS = ("update", "scores", "pre_prepare", "prepare", "commit", "view_change", "new_view",
         "block", "evidence", "join", "metrics", "pledge")
#: The only kinds whose payload may hold floats (docs/protocol.md): score distances, DP
#: parameters of an update, a block (its update references carry those DP parameters), and
#: metrics (a peer's evaluation values).
#: Any other kind with a float in it is refused by the encoder.
FLOAT_KINDS = ("update", "scores", "block", "metrics")


class EnvelopeError(ValueError):
    """A message that is not a well-formed envelope: `code` names the class, the text the detail."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


@dataclass(frozen=True)
class Envelope:
    """One signed protocol message."""

    kind: str
    network_id: bytes
    round: int
    sender: str
    payload: Any
    signature: bytes = b""

    def signing_bytes(self) -> bytes:
        """The canonical bytes the sender signs."""
        return encode_canonical(
            [_DOMAIN, self.kind, self.network_id, self.round, self.sender, self.payload],
            floats=self.kind in FLOAT_KINDS)

    def signed_by(self, signer: Signer) -> Envelope:
        """This envelope with `signer` as sender and its signature."""
        unsigned = replace(self, sender=signer.peer_id, signature=b"")
        return replace(unsigned, signature=signer.sign(unsigned.signing_bytes()))

    def has_valid_signature(self) -> bool:
        """True when the signature is the sender's over the canonical bytes."""
        try:
            signed = self.signing_bytes()
        except CborEncodeError:
            return False  # a value outside the profile was never signed by an honest peer
        return verify_signature(self.sender, signed, self.signature)

    def encode(self) -> bytes:
        """Canonical wire bytes."""
        return encode_canonical(
            {"k": self.kind, "n": self.network_id, "r": self.round, "s": self.sender,
             "p": self.payload, "sig": self.signature},
            floats=self.kind in FLOAT_KINDS)

    def digest(self) -> bytes:
        """SHA-256 of the wire bytes: the envelope's identity for dedup and references."""
        return hashlib.sha256(self.encode()).digest()


def decode_envelope(data: bytes, max_bytes: int = MAX_ENVELOPE_BYTES) -> Envelope:
    """Parse wire bytes into an Envelope, checking shape but not signature; EnvelopeError if bad.

    The bytes must be canonical CBOR of the profile (gossip.cbor_profile): then they are
    exactly `encode()` of the result, and the signature, checked over the canonical
    re-encoding, covers every byte that arrived (no padding, no alternative encodings)."""
    if len(data) > max_bytes:
        raise EnvelopeError("oversize", f"{len(data)} bytes > {max_bytes}")
    try:
        obj = decode_canonical(data)
    except CborProfileError as exc:
        raise EnvelopeError("undecodable", f"not profile CBOR ({exc})") from None
    if not isinstance(obj, dict) or set(obj) != {"k", "n", "r", "s", "p", "sig"}:
        raise EnvelopeError("malformed", "not an envelope map")
    kind, network_id, rnd, sender, sig = obj["k"], obj["n"], obj["r"], obj["s"], obj["sig"]
    if kind not in KINDS:
        # Never the value itself: its formatting is the sender's to make expensive.
        raise EnvelopeError("malformed", f"unknown kind ({type(kind).__name__})")
    if not isinstance(network_id, bytes) or len(network_id) != 32:
        raise EnvelopeError("malformed", "bad network id")
    if not isinstance(rnd, int) or isinstance(rnd, bool) or not 0 <= rnd < 2**63:
        raise EnvelopeError("malformed", "bad round")
    if not isinstance(sender, str) or len(sender) > 128:
        raise EnvelopeError("malformed", "bad sender")
    if not isinstance(sig, bytes) or len(sig) != 64:
        raise EnvelopeError("unsigned", "no signature or a bad signature length")
    if kind not in FLOAT_KINDS:
        # The profile's floats are for score distances and DP parameters only: a float in any
        # other payload is refused here, as our encoder refuses to write one.
        try:
            check_encodable(obj["p"], floats=False)
        except CborEncodeError:
            raise EnvelopeError("malformed", f"a float in a {kind} payload") from None
    return Envelope(kind, network_id, rnd, sender, obj["p"], sig)
