"""Signed address records (gossip/peer_record.py) and the misbehaviour proofs built on them and
on the round's signed messages (chain.round_rules.check_evidence). Pure: no network."""

import pytest

from chain.block import Block, BlockError
from chain.round_rules import check_evidence, recorded_misbehaviour
from gossip.envelope import Envelope
from gossip.peer_keys import Signer
from gossip.peer_record import (
    MAX_RECORD_ADDRS,
    RECORD_HISTORY,
    PeerRecord,
    RecordBook,
    RecordError,
    RecordSigner,
    check_record,
    decode_record,
    sign_record,
    twin_records,
)
from learning.cmfl import RoundConfig

NET = bytes([5]) * 32
OTHER_NET = bytes([6]) * 32
ALICE, BOB, MALLORY = (Signer(bytes([i]) * 32) for i in (11, 12, 13))
MEMBERS = frozenset({ALICE.peer_id, BOB.peer_id})
A1, A2 = "/ip4/10.0.0.1/tcp/4001", "/ip4/10.0.0.2/tcp/4001"


def record(signer=ALICE, seq=1, addrs=(A1,), net=NET) -> bytes:
    return sign_record(signer, net, seq, list(addrs)).encode()


def test_a_record_round_trips_and_verifies():
    data = record()
    rec = check_record(data, NET, MEMBERS)
    assert (rec.peer_id, rec.seq, rec.addrs) == (ALICE.peer_id, 1, (A1,))
    assert decode_record(data).encode() == data


def test_forged_foreign_non_member_and_malformed_records_are_refused():
    good = decode_record(record())
    forged = PeerRecord(NET, BOB.peer_id, 1, (A1,), good.signature).encode()  # Alice's sig
    by_mallory = sign_record(MALLORY, NET, 1, [A1])
    named_bob = PeerRecord(NET, BOB.peer_id, 1, (A1,), by_mallory.signature).encode()
    cases = {forged: "forged", named_bob: "forged", record(net=OTHER_NET): "foreign",
             record(MALLORY): "not-member", b"\xff": "undecodable", b"\xa0": "malformed",
             good.encode()[:-1]: "undecodable"}
    for data, code in cases.items():
        with pytest.raises(RecordError) as err:
            check_record(data, NET, MEMBERS)
        assert err.value.code == code, (code, err.value)


def test_records_are_bounded():
    too_many = PeerRecord(NET, ALICE.peer_id, 1, tuple(f"/ip4/10.0.0.{i}/tcp/1" for i in
                                                       range(MAX_RECORD_ADDRS + 1)))
    with pytest.raises(RecordError):
        decode_record(too_many.encode())  # unsigned, but refused for its length first
    signed = sign_record(ALICE, NET, 1, [f"/ip4/10.0.0.{i}/tcp/1" for i in range(20)])
    assert len(signed.addrs) == MAX_RECORD_ADDRS
    with pytest.raises(RecordError):
        decode_record(b"\x00" * 5000)


def test_the_newest_record_wins_and_older_ones_do_not_replace_it():
    book = RecordBook(NET, MEMBERS)
    assert book.offer(record(seq=5, addrs=(A1,))).newest
    assert not book.offer(record(seq=3, addrs=(A2,))).newest
    assert book.newest(ALICE.peer_id).addrs == (A1,)
    assert book.offer(record(seq=9, addrs=(A2,))).newest
    assert book.newest(ALICE.peer_id).addrs == (A2,)
    assert book.offer(record(seq=9, addrs=(A2,))).twin is None  # the same record again
    for seq in range(10, 40):
        book.offer(record(seq=seq))
    assert len(book.records[ALICE.peer_id]) == RECORD_HISTORY + 1
    with pytest.raises(RecordError):
        book.offer(record(MALLORY))
    assert set(book.records) == {ALICE.peer_id}


def test_two_records_with_one_sequence_number_prove_a_twin():
    book = RecordBook(NET, MEMBERS)
    first, second = record(seq=7, addrs=(A1,)), record(seq=7, addrs=(A2,))
    book.offer(first)
    offered = book.offer(second)
    assert offered.twin == (first, second) and book.twins[ALICE.peer_id] == (first, second)
    assert twin_records(NET, offered.twin) == ALICE.peer_id
    assert check_evidence(NET, offered.twin) == ALICE.peer_id


def test_record_pairs_that_prove_nothing_convict_nobody():
    forged = PeerRecord(NET, ALICE.peer_id, 7, (A2,), decode_record(record(BOB, 7)).signature)
    for pair in [(record(seq=7), record(seq=7)),                     # identical
                 (record(seq=7), record(seq=8, addrs=(A2,))),        # different numbers
                 (record(seq=7), record(BOB, seq=7, addrs=(A2,))),   # different peers
                 (record(seq=7), forged.encode()),                   # forged signature
                 (record(seq=7, net=OTHER_NET), record(seq=7, addrs=(A2,), net=OTHER_NET))]:
        with pytest.raises(BlockError):
            check_evidence(NET, pair)


def test_the_signer_never_reuses_a_sequence_number_across_restarts():
    saved: list[int] = []

    def signer_from_disk() -> RecordSigner:
        return RecordSigner(ALICE, NET, lambda: saved[-1] if saved else None, saved.append,
                            slot_seconds=10)

    first = signer_from_disk()
    assert first.due(100.0)
    a = first.sign([A1], 100.0)
    assert not first.due(105.0) and first.due(110.0)
    restarted = signer_from_disk()  # same slot: the next number, never the same one
    b = restarted.sign([A2], 101.0)
    assert b.seq == a.seq + 1 and saved == [a.seq, b.seq]
    # A clock gone backwards still gives a larger number.
    assert signer_from_disk().sign([A1], 0.0).seq == b.seq + 1
    # Twins from one data directory sign the number of the next slot both.
    copy = list(saved)
    twin = RecordSigner(ALICE, NET, lambda: copy[-1], copy.append, slot_seconds=10)
    now = 1000.0
    assert twin.sign([A2], now).seq == signer_from_disk().sign([A1], now).seq


def _env(signer, kind, rnd, payload, net=NET) -> bytes:
    return Envelope(kind, net, rnd, "", payload).signed_by(signer).encode()


@pytest.mark.parametrize("kind", ["update", "scores"])
def test_two_different_updates_or_score_vectors_of_one_round_convict_their_signer(kind):
    one, two = {"x": 1}, {"x": 2}
    assert check_evidence(NET, (_env(ALICE, kind, 4, one), _env(ALICE, kind, 4, two))) == \
        ALICE.peer_id
    good = Envelope(kind, NET, 4, ALICE.peer_id, two, Envelope(kind, NET, 4, "", one)
                    .signed_by(ALICE).signature)  # Alice's signature of `one` over `two`
    for pair in [(_env(ALICE, kind, 4, one), _env(ALICE, kind, 4, one)),   # identical
                 (_env(ALICE, kind, 4, one), _env(ALICE, kind, 5, two)),   # other rounds
                 (_env(ALICE, kind, 4, one), _env(BOB, kind, 4, two)),     # other signers
                 (_env(ALICE, kind, 4, one), good.encode()),               # forged
                 (_env(ALICE, kind, 4, one, OTHER_NET), _env(ALICE, kind, 4, two, OTHER_NET)),
                 (_env(ALICE, "join", 4, one), _env(ALICE, "join", 4, two)),  # not evidence
                 (_env(ALICE, kind, 4, {"x": b"\0" * 70000}), _env(ALICE, kind, 4, two))]:
        with pytest.raises(BlockError):
            check_evidence(NET, pair)


def test_a_block_recording_a_twin_proof_convicts_it():
    block = Block(height=1, prev_hash=NET, network_id=NET, committee=(BOB.peer_id,),
                  trainers=(ALICE.peer_id,), updates=(), score_vectors=(), selected=(),
                  model_hash=NET, next_committee=(BOB.peer_id,),
                  evidence=((record(seq=7), record(seq=7, addrs=(A2,))),))
    assert Block.decode(block.encode()) == block
    assert recorded_misbehaviour(block, RoundConfig()) == {ALICE.peer_id}
