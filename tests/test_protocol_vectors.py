"""The test vectors (tests/vectors/) are what our code produces, and they verify as documented."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cbor2
import pytest

from chain.block import Block, BlockError, CommittedBlock
from gossip.cbor_profile import CborEncodeError, CborProfileError, decode_canonical, encode_canonical
from gossip.envelope import Envelope, decode_envelope
from gossip.peer_record import decode_record

VECTORS = Path(__file__).parent / "vectors"


def _generator():
    spec = importlib.util.spec_from_file_location("vector_gen", VECTORS / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def vectors() -> dict:
    return json.loads((VECTORS / "vectors.json").read_text())


def test_regenerated_vectors_match_the_committed_file():
    assert _generator().render() == (VECTORS / "vectors.json").read_text(), \
        "the protocol's bytes changed: run tests/vectors/generate.py and document the change"


def test_every_envelope_decodes_verifies_and_reencodes(vectors):
    assert len(vectors["envelopes"]) >= 10
    for v in vectors["envelopes"]:
        wire = bytes.fromhex(v["wire"])
        env = decode_envelope(wire)
        assert env.encode() == wire
        assert env.signing_bytes().hex() == v["signed_bytes"]
        assert env.has_valid_signature(), v["note"]
        assert env.digest().hex() == v["digest"]


def test_one_flipped_byte_of_the_signed_layout_fails(vectors):
    for v in vectors["envelopes"]:
        wire = bytes.fromhex(v["wire"])
        env = decode_envelope(wire)
        for i in range(0, len(wire), max(1, len(wire) // 40)):
            bad = bytearray(wire)
            bad[i] ^= 0x01
            try:
                other = decode_envelope(bytes(bad))
            except Exception:
                continue  # outside the profile or the envelope shape: refused
            if other.signature == env.signature and other.signing_bytes() != env.signing_bytes():
                assert not other.has_valid_signature()


def test_block_and_certificate(vectors):
    b = vectors["block"]
    committed = CommittedBlock.decode(bytes.fromhex(b["committed_encoded"]))
    assert committed.encode().hex() == b["committed_encoded"]
    assert committed.block.encode().hex() == b["encoded"]
    assert committed.block.hash().hex() == b["hash"]
    assert committed.certificate.view == b["certificate"]["view"] == 1
    committee = tuple(b["committee"])
    committed.certificate.verify(committed.block, committee)
    # the view is signed: the same votes written as view 0 do not verify
    from chain.block import CommitCertificate
    with pytest.raises(BlockError):
        CommitCertificate(0, committed.certificate.votes).verify(committed.block, committee)
    assert Block.decode(bytes.fromhex(b["encoded"])) == committed.block


def test_peer_record(vectors):
    rec = decode_record(bytes.fromhex(vectors["peer_record"]["wire"]))
    assert rec.signing_bytes().hex() == vectors["peer_record"]["signed_bytes"]
    assert rec.has_valid_signature()


def test_cbor_profile_examples(vectors):
    for v in vectors["cbor_canonical"]:
        data = bytes.fromhex(v["hex"])
        assert encode_canonical(decode_canonical(data)) == data, v["value"]
    for v in vectors["cbor_rejected"]:
        with pytest.raises(CborProfileError):
            decode_canonical(bytes.fromhex(v["hex"]))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {1: 2}, {"a": {1, 2}}, 2**64,
                                   -2**64 - 1, object()])
def test_encoder_refuses_values_outside_the_profile(value):
    with pytest.raises(CborEncodeError):
        encode_canonical(value)


def test_encoder_refuses_floats_where_the_protocol_has_none():
    env = Envelope("prepare", bytes(32), 1, "x", {"view": 1.0, "value_hash": bytes(32)})
    with pytest.raises(CborEncodeError):
        env.encode()
    with pytest.raises(CborEncodeError):
        env.signing_bytes()
    Envelope("scores", bytes(32), 1, "x", {"scores": [["t", bytes(32), 1.0]]}).encode()


def test_decoder_refuses_a_float_in_a_payload_that_has_none():
    import cbor2

    from gossip.envelope import EnvelopeError
    from gossip.peer_keys import Signer
    signer = Signer(b"\x07" * 32)
    payload = {"view": 1.0, "value_hash": bytes(32)}
    signed = cbor2.dumps(["cmfl-p2p/envelope/1", "prepare", bytes(32), 1, signer.peer_id,
                          payload], canonical=True)
    wire = cbor2.dumps({"k": "prepare", "n": bytes(32), "r": 1, "s": signer.peer_id,
                        "p": payload, "sig": signer.sign(signed)}, canonical=True)
    with pytest.raises(EnvelopeError) as err:
        decode_envelope(wire)
    assert err.value.code == "malformed"


def test_each_codec_vector_decodes_to_its_documented_tensors(vectors):
    import hashlib

    from learning.compression import UpdateCodec, delta_from_bytes
    from learning.tensors import state_bytes, state_from_bytes

    v = vectors["update_codecs"]
    base = state_from_bytes(bytes.fromhex(v["base"]))
    assert {c["compression"]["codec"] for c in v["codecs"]} == {"fp16", "int8", "topk"}
    for c in v["codecs"]:
        decoded = state_bytes(delta_from_bytes(base, bytes.fromhex(c["delta"]),
                                               UpdateCodec.from_settings(c["compression"])))
        assert decoded.hex() == c["decoded"]
        assert hashlib.sha256(decoded).hexdigest() == c["decoded_hash"]
        decode_canonical(bytes.fromhex(c["delta"]))  # inside the profile
    # the counters travel exactly: the decoded int64 and scalar entries are the trained ones
    trained = state_from_bytes(bytes.fromhex(v["trained"]))
    for c in v["codecs"]:
        got = state_from_bytes(bytes.fromhex(c["decoded"]))
        assert got["n"].tolist() == trained["n"].tolist() and float(got["count"]) == 6.0


def test_sealed_update_opens_for_each_reader_and_only_with_its_key(vectors):
    """docs/protocol.md, Sealed updates: the wraps are libsodium sealed boxes to the readers'
    X25519 keys, the ciphertext a secretbox of the plaintext under the wrapped key, and the
    signed commit the personalised BLAKE2b-256 of that key."""
    import nacl.bindings as sodium
    import nacl.encoding
    import nacl.hash

    from gossip.peer_keys import Signer
    from gossip.sealing import SealError, SealKey, key_commitment, open_sealed

    v = vectors["sealed_update"]
    env = decode_envelope(bytes.fromhex(v["envelope"]["wire"]))
    assert env.has_valid_signature() and env.payload["sealed"].hex() == v["ciphertext"]
    assert v["ciphertext"].startswith(v["nonce"])
    assert set(env.payload) == {"sealed", "keys", "commit", "samples", "base"}
    content_key, commit = bytes.fromhex(v["content_key"]), env.payload["commit"]
    assert commit.hex() == v["commit"] == key_commitment(content_key).hex() == nacl.hash.blake2b(
        content_key, digest_size=32, person=b"cmfl-key-commit",
        encoder=nacl.encoding.RawEncoder).hex()
    seeds = {k["peer_id"]: bytes.fromhex(k["seed"]) for k in vectors["keys"]}
    for row in v["readers"]:
        signer = Signer(seeds[row["peer_id"]])
        x_secret = sodium.crypto_sign_ed25519_sk_to_curve25519(signer.seed + signer.public_key)
        assert x_secret.hex() == row["x25519_secret"]
        assert sodium.crypto_scalarmult_base(x_secret).hex() == row["x25519_public"]
        key = SealKey(signer)
        assert key.unwrap(bytes.fromhex(row["wrap"])).hex() == v["content_key"]
        assert open_sealed(env.payload["sealed"], env.payload["keys"], key, commit).hex() == \
            v["plaintext"]
        # a commit to any other key is refused before decrypting, a malformed one as such
        wrong = key_commitment(bytes(32))
        with pytest.raises(SealError, match="holds a key other than the committed one"):
            open_sealed(env.payload["sealed"], env.payload["keys"], key, wrong)
        with pytest.raises(SealError, match="commit is not 32 bytes"):
            open_sealed(env.payload["sealed"], env.payload["keys"], key, commit[:16])
    trainer = Signer(seeds[env.sender])
    with pytest.raises(SealError, match="not sealed to us"):
        open_sealed(env.payload["sealed"], env.payload["keys"], SealKey(trainer), commit)


def test_pledged_vote_opens_its_pledge(vectors):
    """docs/protocol.md, Pledged votes: the pledge is BLAKE2b-256 (person cmfl-vote-pledge) of
    the canonical CBOR [network id, height, judge, judged, votes, salt] of the reveal."""
    from types import SimpleNamespace

    from chain.round_rules import pledge_digest

    v = vectors["pledged_vote"]
    pledge = decode_envelope(bytes.fromhex(v["pledge_envelope"]["wire"]))
    reveal = decode_envelope(bytes.fromhex(v["reveal_envelope"]["wire"]))
    assert pledge.has_valid_signature() and reveal.has_valid_signature()
    assert pledge.kind == "pledge" and pledge.payload["pledge"].hex() == v["pledge"]
    body = reveal.payload
    assert cbor2.dumps([pledge.network_id, pledge.round, reveal.sender, body["judged"],
                        body["votes"], body["salt"]], canonical=True).hex() == v["preimage"]
    ctx = SimpleNamespace(network_id=pledge.network_id, height=pledge.round)
    updates = tuple((t, d) for t, d in body["judged"])
    assert pledge_digest(ctx, reveal.sender, updates, body["votes"], body["salt"]).hex() == \
        v["pledge"]
    assert body["seen"] == [[reveal.sender, pledge.payload["pledge"]]]
