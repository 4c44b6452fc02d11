"""Blocks, certificates and the SQLite block store."""

import sqlite3

import pytest

from chain.block import (
    Block,
    BlockError,
    CommitCertificate,
    CommittedBlock,
    UpdateRef,
    commit_envelope,
)
from chain.genesis import Genesis, GenesisError
from chain.store import BlockStore, ModelStore, StoreError
from gossip.peer_keys import Signer
from chain.genesis import SELECTION_PRESETS

#: the scored rule (an elected committee scores) these tests exercise; judged rounds, the
#: default, are tests/test_judged_round.py and tests/test_judged_net.py
SCORED = SELECTION_PRESETS["cmfl-clip-far"]

MEMBERS = [Signer(bytes([i + 1]) * 32) for i in range(6)]
COMMITTEE = tuple(s.peer_id for s in MEMBERS[:4])
NET = bytes([7]) * 32


def make_block(height=0, prev=NET, model=b"\x01" * 32):
    return Block(height=height, prev_hash=prev, network_id=NET, committee=COMMITTEE,
                 trainers=tuple(s.peer_id for s in MEMBERS[4:]),
                 updates=(UpdateRef(MEMBERS[4].peer_id, b"\x02" * 32, 10),),
                 score_vectors=(b"sv",), selected=(MEMBERS[4].peer_id,), model_hash=model,
                 next_committee=COMMITTEE)


def certify(block, signers=MEMBERS[:3], view=0):
    votes = []
    for s in signers:
        commit = commit_envelope(NET, block.height, view, block.hash()).signed_by(s)
        votes.append((s.peer_id, commit.signature))
    return CommittedBlock(block, CommitCertificate(view, tuple(votes)))


def test_block_roundtrip_and_hash_excludes_certificate():
    committed = certify(make_block())
    back = CommittedBlock.decode(committed.encode())
    assert back == committed and back.block.hash() == committed.block.hash()
    assert make_block(model=b"\x09" * 32).hash() != make_block().hash()


def test_certificate_needs_a_quorum_of_distinct_committee_signatures():
    block = make_block()
    certify(block).certificate.verify(block, COMMITTEE)  # 3 of 4 = 2f+1
    with pytest.raises(BlockError, match="needs 3"):
        certify(block, MEMBERS[:2]).certificate.verify(block, COMMITTEE)
    with pytest.raises(BlockError, match="not on the committee"):
        certify(block, [MEMBERS[0], MEMBERS[1], MEMBERS[5]]).certificate.verify(block, COMMITTEE)
    doubled = certify(block, [MEMBERS[0], MEMBERS[0], MEMBERS[1]])
    with pytest.raises(BlockError, match="twice"):
        doubled.certificate.verify(block, COMMITTEE)
    other = make_block(model=b"\x03" * 32)  # signatures for one block do not certify another
    with pytest.raises(BlockError, match="invalid"):
        certify(block).certificate.verify(other, COMMITTEE)
    moved = certify(block, view=1)  # nor do commits of one view stand for another
    with pytest.raises(BlockError, match="invalid"):
        CommitCertificate(0, moved.certificate.votes).verify(block, COMMITTEE)


@pytest.mark.parametrize("obj", [None, [], {"block": {}, "certificate": []},
                                 {"block": make_block().to_obj(), "certificate": []},
                                 {"block": {**make_block().to_obj(), "height": -1},
                                  "certificate": {"view": 0, "commits": []}},
                                 {"block": {**make_block().to_obj(), "prev_hash": b"short"},
                                  "certificate": {"view": 0, "commits": []}}])
def test_malformed_blocks_are_rejected(obj):
    with pytest.raises(BlockError):
        CommittedBlock.from_obj(obj)


def test_store_appends_in_order_and_survives_reopen(tmp_path):
    store = BlockStore(tmp_path / "chain.sqlite")
    b0 = certify(make_block())
    b1 = certify(make_block(1, b0.block.hash()))
    store.append(b0)
    with pytest.raises(StoreError, match="height"):
        store.append(certify(make_block(2, b0.block.hash())))
    with pytest.raises(StoreError, match="link"):
        store.append(certify(make_block(1, b"\x05" * 32)))
    store.append(b1)
    store.close()
    reopened = BlockStore(tmp_path / "chain.sqlite")
    assert reopened.head() == (1, b1.block.hash())
    assert reopened.get(0) == b0 and reopened.heights() == [0, 1]
    assert sqlite3.connect(tmp_path / "chain.sqlite").execute(
        "PRAGMA journal_mode").fetchone()[0] == "wal"


def test_corrupt_store_is_a_clear_error(tmp_path):
    path = tmp_path / "chain.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="corrupt"):
        BlockStore(path)


def test_model_store_is_content_addressed(tmp_path):
    models = ModelStore(tmp_path / "models")
    digest = models.put(b"weights")
    assert models.get(digest) == b"weights" and models.get(b"\x00" * 32) is None
    (tmp_path / "models" / f"{digest.hex()}.cbor").write_bytes(b"tampered")
    assert models.get(digest) is None


def test_genesis_hash_is_the_network_id_and_bad_genesis_is_refused(tmp_path):
    ids = tuple(s.peer_id for s in MEMBERS)
    g = Genesis(name="t", members=ids, committee=ids[:4], selection=SCORED)
    g.save(tmp_path / "g.json")
    assert Genesis.load(tmp_path / "g.json").network_id == g.network_id
    other = Genesis(name="t2", members=ids, committee=ids[:4], selection=SCORED)
    assert other.network_id != g.network_id
    with pytest.raises(GenesisError, match="subset"):
        Genesis.from_dict({**g.to_dict(), "committee": ["12D3KooWnotamember"]})
    with pytest.raises(GenesisError, match="not found"):
        Genesis.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(GenesisError, match="JSON"):
        Genesis.load(tmp_path / "bad.json")
