"""Signed address records: a member's own word for where it listens, and what two of them prove.

Peer exchange passes these records on instead of bare address lists, so a peer only dials an
address its owner signed: a hostile peer can no longer make the network dial a victim by
naming a member "at" the victim's address.

A record is the canonical CBOR of (domain tag, network id, peer id, sequence number, listen
addresses), signed with the peer's Ed25519 identity key (the one its peer ID inlines). The
sequence number is persisted before each signing and strictly increases across restarts, so
an honest process never signs two records with one number: two different records of one peer
with one number prove that two processes hold its key (a twin), and are evidence
(`twin_records`, recorded in a block like pBFT equivocation).

Wire: canonical CBOR {"v": 1, "n": network id, "p": peer id, "q": seq, "a": [multiaddr, ...],
"sig": 64 bytes}, at most MAX_RECORD_BYTES.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import cbor2
import multiaddr

from gossip.cbor_profile import CborProfileError, decode_canonical
from gossip.peer_keys import Signer, verify_signature

_DOMAIN = "cmfl-p2p/peer-record/1"
VERSION = 1
#: Bounds on one record, checked before and while decoding it.
MAX_RECORD_BYTES = 4096
MAX_RECORD_ADDRS = 8
MAX_ADDR_CHARS = 256
#: Records kept per peer besides the newest: enough to catch a twin's record with a number
#: the other process signed a little earlier, bounded whatever peers send.
RECORD_HISTORY = 8


class RecordError(ValueError):
    """A refused record: `code` names the class (undecodable, malformed, forged, foreign,
    not-member), the text the detail."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


@dataclass(frozen=True)
class PeerRecord:
    """One peer's signed statement of its listen addresses, at sequence number `seq`."""

    network_id: bytes
    peer_id: str
    seq: int
    addrs: tuple[str, ...]
    signature: bytes = b""

    def signing_bytes(self) -> bytes:
        """The canonical bytes the peer signs (domain-separated from envelopes)."""
        return cbor2.dumps([_DOMAIN, self.network_id, self.peer_id, self.seq,
                            list(self.addrs)], canonical=True)

    def has_valid_signature(self) -> bool:
        """True when the signature is `peer_id`'s own over the canonical bytes."""
        return verify_signature(self.peer_id, self.signing_bytes(), self.signature)

    def encode(self) -> bytes:
        """Canonical wire bytes."""
        return cbor2.dumps({"v": VERSION, "n": self.network_id, "p": self.peer_id,
                            "q": self.seq, "a": list(self.addrs), "sig": self.signature},
                           canonical=True)


def sign_record(signer: Signer, network_id: bytes, seq: int, addrs: Iterable[str]) -> PeerRecord:
    """Our own record. The caller must have persisted `seq` as used (never sign one twice)."""
    kept = tuple(dict.fromkeys(a for a in addrs if len(a) <= MAX_ADDR_CHARS))[:MAX_RECORD_ADDRS]
    unsigned = PeerRecord(network_id, signer.peer_id, seq, kept)
    return PeerRecord(network_id, signer.peer_id, seq, kept,
                      signer.sign(unsigned.signing_bytes()))


def decode_record(data: bytes) -> PeerRecord:
    """Parse untrusted wire bytes, checking shape and bounds but not the signature."""
    if not isinstance(data, bytes) or len(data) > MAX_RECORD_BYTES:
        raise RecordError("malformed", f"not bytes of at most {MAX_RECORD_BYTES}")
    try:
        obj = decode_canonical(data, max_depth=2, max_items=64)
    except CborProfileError as exc:
        raise RecordError("undecodable", f"not profile CBOR ({exc})") from None
    if not isinstance(obj, dict) or set(obj) != {"v", "n", "p", "q", "a", "sig"}:
        raise RecordError("malformed", "not a peer record map")
    if obj["v"] != VERSION or isinstance(obj["v"], bool):
        raise RecordError("malformed", "unknown record version")
    network_id, peer_id, seq, addrs, sig = obj["n"], obj["p"], obj["q"], obj["a"], obj["sig"]
    if not isinstance(network_id, bytes) or len(network_id) != 32:
        raise RecordError("malformed", "bad network id")
    if not isinstance(peer_id, str) or not 0 < len(peer_id) <= 128:
        raise RecordError("malformed", "bad peer id")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**63:
        raise RecordError("malformed", "bad sequence number")
    if not isinstance(addrs, list) or len(addrs) > MAX_RECORD_ADDRS:
        raise RecordError("malformed", f"not a list of at most {MAX_RECORD_ADDRS} addresses")
    for a in addrs:
        if not isinstance(a, str) or len(a) > MAX_ADDR_CHARS:
            raise RecordError("malformed", "an address is not a short string")
        try:
            multiaddr.Multiaddr(a)
        except Exception:  # py-multiaddr raises several types on bad input
            raise RecordError("malformed", f"not a multiaddr: {a[:40]!r}") from None
    if not isinstance(sig, bytes) or len(sig) != 64:
        raise RecordError("malformed", "bad signature length")
    record = PeerRecord(network_id, peer_id, seq, tuple(addrs), sig)
    if record.encode() != data:
        # One canonical form only: the bytes we keep and pass on are the bytes that were signed.
        raise RecordError("malformed", "not canonical CBOR")
    return record


def check_record(data: bytes, network_id: bytes, allowed: frozenset[str] | None) -> PeerRecord:
    """A record worth keeping: well-formed, of this network, of an allowed peer (None: any),
    signed by the peer it names. RecordError otherwise."""
    record = decode_record(data)
    if record.network_id != network_id:
        raise RecordError("foreign", "record of another network")
    if allowed is not None and record.peer_id not in allowed:
        raise RecordError("not-member", f"record of non-member {record.peer_id[-8:]}")
    if not record.has_valid_signature():
        raise RecordError("forged", f"record of {record.peer_id[-8:]} not signed by it")
    return record


def twin_records(network_id: bytes, pair: tuple[bytes, bytes]) -> str:
    """The peer two records prove has a twin; RecordError unless the proof holds.

    A proof is two different records of this network, one peer and one sequence number, both
    validly signed by that peer: an honest process persists the number before signing, so it
    never signs two."""
    a, b = (check_record(raw, network_id, None) for raw in pair)
    if (a.peer_id, a.seq) != (b.peer_id, b.seq):
        raise RecordError("malformed", "records are not of one peer and sequence number")
    if a.signing_bytes() == b.signing_bytes():
        raise RecordError("malformed", "records do not conflict")
    return a.peer_id


@dataclass
class Offered:
    """What offering one record did: `newest` if it is now the peer's newest record (its
    addresses may be dialled), `twin` the proof if it conflicts with one held."""

    record: PeerRecord
    newest: bool = False
    twin: tuple[bytes, bytes] | None = None


@dataclass
class RecordBook:
    """The valid records held, per allowed peer: the newest and a few before it. Pure.

    Bounded: only `allowed` peers (members), at most MAX_RECORD_ADDRS addresses per record and
    RECORD_HISTORY + 1 records per peer."""

    network_id: bytes
    allowed: frozenset[str] | None = None
    records: dict[str, dict[int, bytes]] = field(default_factory=dict)
    #: peers proven to have a twin, with the proof (their addresses are no longer dialled)
    twins: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)

    def newest(self, peer_id: str) -> PeerRecord | None:
        held = self.records.get(peer_id)
        return decode_record(held[max(held)]) if held else None

    def wire(self) -> list[bytes]:
        """The newest record of every peer held, as wire bytes (what the exchange serves)."""
        return [held[max(held)] for _, held in sorted(self.records.items()) if held]

    def offer(self, data: bytes) -> Offered:
        """Check and keep one record; RecordError if it is refused (malformed, forged, ...)."""
        record = check_record(data, self.network_id, self.allowed)
        held = self.records.setdefault(record.peer_id, {})
        same = held.get(record.seq)
        if same is not None:
            if same == data:
                return Offered(record)
            # Canonical encodings: different bytes are different signed contents.
            pair = (same, data)
            self.twins.setdefault(record.peer_id, pair)
            return Offered(record, twin=pair)
        if held and record.seq < min(held) and len(held) > RECORD_HISTORY:
            return Offered(record)  # older than anything we keep: nothing to learn
        held[record.seq] = data
        for seq in sorted(held)[:-RECORD_HISTORY - 1]:
            del held[seq]
        return Offered(record, newest=record.seq == max(held))

    def newest_wire(self) -> list[tuple[str, bytes]]:
        """(peer, wire bytes of its newest record) for every peer held, in peer order."""
        return [(peer, held[max(held)]) for peer, held in sorted(self.records.items()) if held]


class RecordSigner:
    """Signs our own records with sequence numbers that never repeat, across restarts too.

    The number is `max(last + 1, slot)`, with `slot` the current wall-clock slot
    (`slot_seconds` long), and is saved (`save`, durably) before anything is signed with it:
    an honest process never signs two records with one number, whatever its clock does. The
    slot is what makes twins collide: two processes with one key (started from one data
    directory) both sign the number of each new slot, with their own addresses, and the pair
    is a proof. Re-signing once a slot (`due`) keeps records fresh at one small write each."""

    def __init__(self, signer: Signer, network_id: bytes, load: Callable[[], int | None],
                 save: Callable[[int], None], slot_seconds: float = 10.0) -> None:
        self.signer = signer
        self.network_id = network_id
        self._save = save
        self.slot_seconds = slot_seconds
        self.last = load()
        self._signed_slot: int | None = None

    def due(self, now: float) -> bool:
        """True when no record was signed in this slot yet (by this process)."""
        return self._signed_slot != int(now // self.slot_seconds)

    def sign(self, addrs: Iterable[str], now: float) -> PeerRecord:
        slot = int(now // self.slot_seconds)
        seq = slot if self.last is None else max(self.last + 1, slot)
        self._save(seq)  # write-ahead: a crash after this never reuses seq
        self.last, self._signed_slot = seq, slot
        return sign_record(self.signer, self.network_id, seq, addrs)


def is_peer_record(data: bytes) -> bool:
    """True when `data` decodes as a record (cheap shape test, no signature check): how
    evidence tells a twin proof from a pair of envelopes."""
    try:
        decode_record(data)
    except RecordError:
        return False
    return True
