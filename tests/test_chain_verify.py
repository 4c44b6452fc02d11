"""`verify_store` and `p2p-node chain verify`: a valid chain passes, each kind of damage is named
with its height; the store's batch append and checkpoint retention."""

import sqlite3
from dataclasses import replace

import pytest

from chain.block import BlockError, commit_envelope
from chain.store import BlockStore, ModelStore, StoreError, retain_checkpoints
from chain.verify import ChainVerifier, verify_store
from p2p_node.cli import main
from tests.test_sync_core import CHAIN, tampered


def write_chain(tmp_path, keep_models=3):
    CHAIN.write(tmp_path, keep_models=keep_models)
    CHAIN.genesis.save(tmp_path / "genesis.json")
    return tmp_path


def overwrite_block(data_dir, height, data):
    db = sqlite3.connect(data_dir / "chain.sqlite")
    db.execute("UPDATE blocks SET data = ? WHERE height = ?", (data, height))
    db.commit()
    db.close()


def test_a_valid_chain_verifies_from_the_cli(tmp_path, capsys):
    write_chain(tmp_path)
    assert main(["chain", "verify", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ok: {len(CHAIN.blocks)} blocks")
    assert "not re-derived" in out  # the honest limit of verification, said every time


@pytest.mark.parametrize("damage, height, reason", [
    ("link", 4, "hash link broken"),
    ("certificate", 6, "certificate signature"),
    ("model", 2, "certificate signature"),
    ("model-file", 11, "does not match the block's model hash"),
    ("garbage", 3, "stored bytes: undecodable block"),
    ("missing", 5, "block 5 is missing"),
])
def test_each_kind_of_damage_is_reported_with_its_height(tmp_path, capsys, damage, height,
                                                         reason):
    write_chain(tmp_path)
    if damage in ("link", "certificate", "model"):
        overwrite_block(tmp_path, height, tampered(CHAIN.blocks[height], damage))
    elif damage == "garbage":
        overwrite_block(tmp_path, height, b"\xff\x00garbage")
    elif damage == "missing":
        db = sqlite3.connect(tmp_path / "chain.sqlite")
        db.execute("DELETE FROM blocks WHERE height = 5")
        db.commit()
        db.close()
    else:
        digest = CHAIN.blocks[height].block.model_hash
        (tmp_path / "models" / f"{digest.hex()}.cbor").write_bytes(b"not the model")
    assert main(["chain", "verify", "--data-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"bad block at height {height}: ") and reason in out, out


def test_rules_are_rechecked_not_only_signatures():
    """A block re-signed by its committee but with another election is still refused."""
    verifier = ChainVerifier(CHAIN.genesis)
    first = CHAIN.blocks[0]
    others = tuple(sorted(set(CHAIN.genesis.members) - set(first.block.next_committee)))[:4]
    block = replace(first.block, next_committee=others)
    votes = tuple((m, commit_envelope(block.network_id, 0, 0, block.hash())
                   .signed_by(CHAIN.signers[m]).signature) for m in block.committee[:3])
    forged = replace(first, block=block, certificate=replace(first.certificate, votes=votes))
    with pytest.raises(BlockError, match="next committee does not follow the election rule"):
        verifier.check(forged)


def test_batch_append_is_all_or_nothing_and_retention_keeps_the_last_checkpoints(tmp_path):
    store, models = BlockStore(tmp_path / "chain.sqlite"), ModelStore(tmp_path / "models")
    with pytest.raises(StoreError):  # a gap in the middle: nothing is stored
        store.append_many([CHAIN.blocks[0], CHAIN.blocks[2]])
    assert store.head() is None
    store.append_many(CHAIN.blocks[:10])
    for raw in CHAIN.models[:10]:
        models.put(raw)
    (tmp_path / "models" / "leftover.tmp").write_bytes(b"half a write")
    gone = retain_checkpoints(store, models, keep_last=3)
    assert len(gone) == 7 and not list((tmp_path / "models").glob("*.tmp"))
    assert models.digests() == {b.block.model_hash for b in CHAIN.blocks[7:10]}
    assert verify_store(CHAIN.genesis, store, models).ok
