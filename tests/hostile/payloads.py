"""Hand-built hostile gossip payloads: each one of the classes an outside attacker used to kill
or stall a peer (issue 12), as raw bytes, since no honest encoder can produce them.

Every builder returns the exact bytes to put in a pubsub message's `data`.
"""

from __future__ import annotations

import os

import cbor2

from gossip.envelope import Envelope

_KEYS = ("k", "n", "r", "s", "p", "sig")


def _head(major: int, value: int) -> bytes:
    """A CBOR item head in its shortest form."""
    if value < 24:
        return bytes([major << 5 | value])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * size):
            return bytes([major << 5 | info]) + value.to_bytes(size, "big")
    raise ValueError(value)


def tag(number: int, inner: bytes) -> bytes:
    return _head(6, number) + inner


def array(*items: bytes) -> bytes:
    return _head(4, len(items)) + b"".join(items)


def envelope_map(fields: dict[str, bytes]) -> bytes:
    """A CBOR map of the envelope's wire keys, each value given as raw CBOR (canonical key
    order: what cbor2's canonical encoder writes for these one-letter and three-letter keys)."""
    keys = sorted(fields, key=lambda k: (len(k), k))
    return _head(5, len(keys)) + b"".join(cbor2.dumps(k) + fields[k] for k in keys)


def forged_fields(network_id: bytes, sender: str, kind: str = "update",
                  round_: int = 0) -> dict[str, bytes]:
    """Well-formed envelope fields claiming `sender`, with a random (invalid) signature: the
    attacker needs no key to reach whatever runs before the signature check."""
    return {"k": cbor2.dumps(kind), "n": cbor2.dumps(network_id), "r": cbor2.dumps(round_),
            "s": cbor2.dumps(sender), "p": cbor2.dumps({}), "sig": cbor2.dumps(os.urandom(64))}


def cyclic_payload(network_id: bytes, sender: str) -> bytes:
    """The payload is a list that contains itself (CBOR tags 28 shareable / 29 shared ref)."""
    fields = forged_fields(network_id, sender)
    fields["p"] = tag(28, array(tag(29, _head(0, 0))))
    return envelope_map(fields)


def mime_payload(network_id: bytes, sender: str) -> bytes:
    """The payload carries tag 36 (MIME), which cbor2 decodes into an email.message.Message."""
    fields = forged_fields(network_id, sender)
    fields["p"] = tag(36, cbor2.dumps("Content-Type: text/plain\n\nhello"))
    return envelope_map(fields)


def exponential_kind(network_id: bytes, sender: str, depth: int = 40) -> bytes:
    """A few hundred bytes whose decoded form is a binary tree of 2**depth leaves through shared
    references: anything that walks or prints it (a refusal text quoting it) never ends."""
    # Shareable values are numbered in decoding order, outermost first: level i (from the inside)
    # is number depth-1-i, and refers to the level inside it by that level's number.
    item = tag(28, array(cbor2.dumps("x"), cbor2.dumps("x")))
    for i in range(1, depth):
        item = tag(28, array(item, tag(29, _head(0, depth - i))))
    fields = forged_fields(network_id, sender)
    fields["k"] = item
    return envelope_map(fields)


def empty_arrays(network_id: bytes, sender: str, size: int = 1000 * 1024) -> bytes:
    """A just-under-cap envelope whose payload is ~a million empty arrays: cheap to send,
    costly to decode into Python objects."""
    fields = forged_fields(network_id, sender)
    n = size - 64
    fields["p"] = _head(4, n) + b"\x80" * n
    return envelope_map(fields)


def duplicate_key_padding(wire: bytes, pad: int = 1024) -> bytes:
    """An honest signed envelope made malleable: the same map with a duplicate "p" key first,
    carrying `pad` bytes of junk, then the real one (cbor2 keeps the last value, so the
    signature over the re-encoding still verifies)."""
    env = cbor2.loads(wire)
    fields = {k: cbor2.dumps(env[k], canonical=True) for k in _KEYS}
    keys = sorted(fields, key=lambda k: (len(k), k))
    body = b""
    for k in keys:
        if k == "p":
            body += cbor2.dumps("p") + cbor2.dumps(os.urandom(pad))
        body += cbor2.dumps(k) + fields[k]
    return _head(5, len(keys) + 1) + body


def signed_by_nonmember(signer, network_id: bytes, round_: int, payload_bytes: int) -> bytes:
    """A well-signed envelope of a key that is no member: passes every check but membership."""
    return Envelope("update", network_id, round_, "", {"junk": os.urandom(payload_bytes)}
                    ).signed_by(signer).encode()
