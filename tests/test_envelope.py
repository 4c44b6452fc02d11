"""Envelopes: signing, canonical encoding, and the admission check every gossip message passes."""

import cbor2
import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from gossip.envelope import MAX_ENVELOPE_BYTES, Envelope, EnvelopeError, decode_envelope
from gossip.peer_keys import Signer, peer_id_from_public_key, public_key_from_peer_id
from gossip.validation import DISTINCT_PER_ROUND_ALL, EnvelopeAdmission, is_past

NET = bytes(range(32))
ALICE, BOB, MALLORY = (Signer(bytes([i]) * 32) for i in (1, 2, 3))


def admission(round_=3):
    return EnvelopeAdmission(NET, frozenset({ALICE.peer_id, BOB.peer_id}), current_round=round_)


def signed(kind="update", round_=3, payload=None, signer=ALICE, net=NET):
    return Envelope(kind, net, round_, "", payload or {"x": 1}).signed_by(signer)


def test_peer_id_is_libp2ps_and_inlines_the_key():
    libp2p_id = ID.from_pubkey(create_new_key_pair(ALICE.seed).public_key).to_base58()
    assert ALICE.peer_id == libp2p_id
    assert public_key_from_peer_id(ALICE.peer_id) == ALICE.public_key
    assert peer_id_from_public_key(ALICE.public_key) == ALICE.peer_id
    with pytest.raises(ValueError):
        public_key_from_peer_id("QmNotAnEd25519Id")


def test_roundtrip_is_canonical_and_verifies():
    env = signed(payload={"b": 2, "a": [1, b"\x00"]})
    data = env.encode()
    back = decode_envelope(data)
    assert back == env and back.encode() == data and back.has_valid_signature()
    assert admission().admit(data).envelope == env


@pytest.mark.parametrize("mutate, code", [
    (lambda e: Envelope(e.kind, e.network_id, e.round, e.sender, {"x": 2}, e.signature),
     "forged-signature"),
    (lambda e: Envelope(e.kind, e.network_id, e.round, BOB.peer_id, e.payload, e.signature),
     "forged-signature"),
    (lambda e: signed(signer=MALLORY), "not-member"),
    (lambda e: signed(net=bytes(32)), "wrong-network"),
    (lambda e: signed(round_=2), "stale-round"),
    (lambda e: signed(round_=9), "future-round"),
])
def test_admission_rejects_with_a_reason(mutate, code):
    verdict = admission().admit(mutate(signed()).encode())
    assert not verdict.accepted and verdict.code == code and verdict.reason


def test_a_committed_block_is_admissible_for_the_round_it_opens_then_stale():
    assert admission().admit(signed(kind="block", round_=2).encode()).accepted
    assert admission().admit(signed(kind="block", round_=1).encode()).code == "stale-round"
    # a metrics report is a report, admitted for the federated evaluation's window
    assert admission().admit(signed(kind="metrics", round_=1).encode()).accepted
    for kind in ("evidence", "join"):  # valid rounds after they were signed
        assert not is_past(kind, 0, 10)
    assert is_past("commit", 2, 3) and not is_past("commit", 3, 3)


def test_topic_accepts_only_its_kinds():
    verdict = admission().admit(signed(kind="commit").encode(), expected_kinds=("update",))
    assert verdict.code == "wrong-topic"


@pytest.mark.parametrize("data, code", [
    (b"\xff\x00garbage", "undecodable"),
    (b"", "undecodable"),
    (cbor2.dumps([1, 2, 3]), "malformed"),
    (cbor2.dumps({"k": "update", "n": NET, "r": -1, "s": "x", "p": 0, "sig": bytes(64)},
                 canonical=True), "malformed"),
    (cbor2.dumps({"k": "nope", "n": NET, "r": 1, "s": "x", "p": 0, "sig": bytes(64)},
                 canonical=True), "malformed"),
    (cbor2.dumps({"k": "update", "n": NET, "r": 1, "s": "x", "p": 0, "sig": b""},
                 canonical=True), "unsigned"),
    (b"\x81" * 100_000, "undecodable"),  # deeply nested arrays
    (b"\x00" * (MAX_ENVELOPE_BYTES + 1), "oversize"),
])
def test_garbage_is_rejected_not_raised(data, code):
    verdict = admission().admit(data)
    assert not verdict.accepted and verdict.code == code
    with pytest.raises(EnvelopeError):
        decode_envelope(data)


def test_a_member_gets_a_few_distinct_messages_a_round_admitted_and_copies_are_free():
    """Two different updates pass (the round core keeps them as an equivocation proof), a third
    is a flood; a copy of an admitted one is no new message; the next round starts afresh."""
    signer = Signer(b"\x07" * 32)
    admission = EnvelopeAdmission(NET, frozenset({signer.peer_id}), current_round=3)

    def update(rnd: int, n: int) -> bytes:
        return Envelope("update", NET, rnd, "", {"n": n}).signed_by(signer).encode()

    first = update(3, 0)
    assert admission.admit(first).accepted and admission.admit(update(3, 1)).accepted
    flood = admission.admit(update(3, 2))
    assert flood.code == "envelope-flood" and not flood.benign
    assert admission.admit(first).accepted  # a rebroadcast copy
    assert admission.admit(update(4, 0)).accepted  # another round, its own count
    admission.current_round = 4
    assert admission.admit(update(4, 1)).accepted and \
        admission.admit(update(4, 2)).code == "envelope-flood"
    votes = [Envelope("prepare", NET, 4, "", {"view": v}).signed_by(signer).encode()
             for v in range(DISTINCT_PER_ROUND_ALL + 8)]
    codes = [admission.admit(v).code for v in votes]
    allowed = DISTINCT_PER_ROUND_ALL - 2  # the two updates of round 4 count too
    assert codes.count("") == allowed and set(codes[allowed:]) == {"envelope-flood"}
