"""Writes tests/vectors/vectors.json: fixed keys, envelopes, a block and its certificate as bytes,
with their hashes and signatures (docs/protocol.md). Deterministic: Ed25519 signing is, and every
input here is fixed. `python tests/vectors/generate.py` rewrites the file; the tests regenerate
it in memory and compare (tests/test_protocol_vectors.py).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import cbor2

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from chain.block import Block, CommitCertificate, CommittedBlock, UpdateRef, commit_envelope  # noqa: E402
from gossip.envelope import Envelope  # noqa: E402
from gossip.peer_keys import Signer  # noqa: E402
from gossip.peer_record import sign_record  # noqa: E402
from learning.compression import UpdateCodec, delta_bytes, delta_from_bytes, encode_delta  # noqa: E402
from learning.tensors import encode_state, state_bytes  # noqa: E402

OUT = Path(__file__).with_name("vectors.json")
NETWORK_ID = hashlib.sha256(b"cmfl test vectors network").digest()


def signers() -> list[Signer]:
    return [Signer(bytes([i + 1]) * 32) for i in range(5)]


def _env(e: Envelope, note: str) -> dict[str, Any]:
    return {"note": note, "kind": e.kind, "network_id": e.network_id.hex(), "round": e.round,
            "sender": e.sender, "payload_cbor": cbor2.dumps(e.payload, canonical=True).hex(),
            "signed_bytes": e.signing_bytes().hex(), "signature": e.signature.hex(),
            "wire": e.encode().hex(), "digest": e.digest().hex()}


def codec_vectors() -> dict[str, Any]:
    """A tiny model, a trained state, and each codec's delta map and decoded state."""
    import torch

    base = {"w": torch.tensor([[1.0, 2.0], [-0.5, 0.25]]), "n": torch.tensor([3]),
            "count": torch.tensor(4.0)}
    trained = {"w": base["w"] + torch.tensor([[0.254, -0.127], [0.0, 0.01]]),
               "n": torch.tensor([5]), "count": torch.tensor(6.0)}
    out: dict[str, Any] = {
        "note": "a delta map per genesis compression codec (docs/protocol.md, update); "
                "decoded = the tensor map every peer must derive from it against base",
        "base": cbor2.dumps(encode_state(base), canonical=True).hex(),
        "trained": cbor2.dumps(encode_state(trained), canonical=True).hex(), "codecs": []}
    for codec in (UpdateCodec("fp16"), UpdateCodec("int8"), UpdateCodec("topk", 0.5)):
        data = delta_bytes(base, trained, codec)
        decoded = state_bytes(delta_from_bytes(base, data, codec))
        out["codecs"].append({"compression": codec.to_settings(), "delta": data.hex(),
                              "decoded": decoded.hex(),
                              "decoded_hash": hashlib.sha256(decoded).hexdigest()})
    return out


def int8_update(trainer: Signer, base_hash: bytes) -> Envelope:
    """An inline update on a network whose genesis sets compression int8."""
    import torch

    base = {"w": torch.tensor([1.0, 2.0])}
    trained = {"w": torch.tensor([1.5, 1.75])}
    delta = encode_delta(base, trained, UpdateCodec("int8"))
    return Envelope("update", NETWORK_ID, 1, "", {"delta": delta, "samples": 10,
                                                  "base": base_hash}).signed_by(trainer)


def sealed_update(trainer: Signer, readers: list[Signer], base_hash: bytes) -> dict[str, Any]:
    """An inline update on a network whose genesis sets sealing validators: the content key,
    nonce and ciphertext as a sender derives them, and each key wrap built with a fixed
    ephemeral key (crypto_box_seal's own layout, which otherwise draws that key at random)."""
    import nacl.bindings as sodium
    import nacl.encoding
    import nacl.hash

    from gossip.sealing import SealKey, key_commitment, seal

    plaintext = cbor2.dumps({"w": {"dtype": "float32", "shape": [2],
                                   "data": bytes.fromhex("0000803f00000040")}}, canonical=True)
    context = NETWORK_ID + (1).to_bytes(8, "big")
    key, nonce = SealKey(trainer).content_key(context, plaintext)
    sealed = seal(plaintext, [], key, nonce)
    ciphertext, commit = sealed.ciphertext, sealed.key_commit
    assert commit == key_commitment(key)
    wraps, rows = {}, []
    for i, reader in enumerate(sorted(readers, key=lambda r: r.peer_id)):
        x_public = sodium.crypto_sign_ed25519_pk_to_curve25519(reader.public_key)
        x_secret = sodium.crypto_sign_ed25519_sk_to_curve25519(reader.seed + reader.public_key)
        eph_secret = hashlib.sha256(b"cmfl test vectors ephemeral %d" % i).digest()
        eph_public = sodium.crypto_scalarmult_base(eph_secret)
        box_nonce = nacl.hash.blake2b(eph_public + x_public, digest_size=24,
                                      encoder=nacl.encoding.RawEncoder)
        wrap = eph_public + sodium.crypto_box(key, box_nonce, x_public, eph_secret)
        wraps[reader.peer_id] = wrap
        rows.append({"peer_id": reader.peer_id, "x25519_public": x_public.hex(),
                     "x25519_secret": x_secret.hex(), "ephemeral_secret": eph_secret.hex(),
                     "wrap": wrap.hex()})
    env = Envelope("update", NETWORK_ID, 1, "", {"sealed": ciphertext, "keys": wraps,
                                                 "commit": commit, "samples": 10,
                                                 "base": base_hash}
                   ).signed_by(trainer)
    return {"note": "an inline update sealed to the committee (genesis sealing validators; "
                    "docs/protocol.md, Sealed updates): ciphertext = nonce | "
                    "crypto_secretbox_easy(plaintext, nonce, content_key); each wrap = "
                    "crypto_box_seal(content_key, reader's X25519 key), here with a fixed "
                    "ephemeral key; commit = BLAKE2b-256(content_key, personalisation "
                    "'cmfl-key-commit'), which a reader checks its unwrapped key against",
            "plaintext": plaintext.hex(), "content_key": key.hex(), "nonce": nonce.hex(),
            "commit": commit.hex(),
            "ciphertext": ciphertext.hex(), "readers": rows,
            "envelope": _env(env, "sealed inline update")}


def pledged_vote(judge: Signer, trainer: Signer, update: Envelope) -> dict[str, Any]:
    """A pledged judge's pledge and reveal (docs/protocol.md, Pledged votes): the pledge is
    the personalised BLAKE2b-256 of the canonical CBOR preimage below."""
    judged = [[trainer.peer_id, update.digest()]]
    votes, salt = [0.0, 0.25, -0.5, 0.125], bytes(range(16))
    preimage = cbor2.dumps([NETWORK_ID, 1, judge.peer_id, judged, votes, salt], canonical=True)
    pledge = hashlib.blake2b(preimage, digest_size=32, person=b"cmfl-vote-pledge").digest()
    pledge_env = Envelope("pledge", NETWORK_ID, 1, "", {"judged": judged, "pledge": pledge}
                          ).signed_by(judge)
    reveal = Envelope("scores", NETWORK_ID, 1, "", {
        "judged": judged, "votes": votes, "salt": salt,
        "seen": [[judge.peer_id, pledge]]}).signed_by(judge)
    return {"preimage": preimage.hex(), "pledge": pledge.hex(),
            "pledge_envelope": _env(pledge_env, "a judge's pledge"),
            "reveal_envelope": _env(reveal, "its reveal: the votes pledged, the salt, the "
                                    "pledges it held")}


def build() -> dict[str, Any]:
    keys = signers()
    committee = sorted(k.peer_id for k in keys[:4])
    by_id = {k.peer_id: k for k in keys}
    trainer = keys[4]
    model = {"w": {"dtype": "float32", "shape": [2], "data": bytes.fromhex("0000803f00000040")}}
    base = hashlib.sha256(b"model at height 0").digest()
    update = Envelope("update", NETWORK_ID, 1, "", {"model": model, "samples": 10,
                                                    "base": base}).signed_by(trainer)
    scores = [Envelope("scores", NETWORK_ID, 1, "", {"scores": [
        [trainer.peer_id, update.digest(), 0.0 if i == 0 else 1.5 * i]]}).signed_by(by_id[m])
        for i, m in enumerate(committee)]
    block = Block(height=1, prev_hash=hashlib.sha256(b"block 0").digest(), network_id=NETWORK_ID,
                  committee=tuple(committee), trainers=(trainer.peer_id,),
                  updates=(UpdateRef(trainer.peer_id, update.digest(), 10),),
                  score_vectors=tuple(s.encode() for s in scores),
                  selected=(trainer.peer_id,), model_hash=hashlib.sha256(b"model 1").digest(),
                  next_committee=tuple(committee))
    view = 1  # a certificate of view 1: the view is signed, so it must be written as 1
    votes = []
    commits = []
    for m in committee[:3]:  # a quorum of 4 is 3
        c = commit_envelope(NETWORK_ID, block.height, view, block.hash()).signed_by(by_id[m])
        commits.append(c)
        votes.append((m, c.signature))
    cert = CommitCertificate(view, tuple(votes))
    cert.verify(block, tuple(committee))
    committed = CommittedBlock(block, cert)
    block_env = Envelope("block", NETWORK_ID, 1, "", committed.to_obj()).signed_by(keys[0])
    prepare = Envelope("prepare", NETWORK_ID, 1, "", {"view": 0, "value_hash": block.hash()}
                       ).signed_by(keys[1])
    pre_prepare = Envelope("pre_prepare", NETWORK_ID, 1, "", {
        "view": 0, "value_hash": block.hash(), "value": block.encode()}).signed_by(keys[1])
    join = Envelope("join", NETWORK_ID, 2, "", {"addrs": ["/ip4/127.0.0.1/tcp/4001"]}
                    ).signed_by(Signer(bytes([9]) * 32))
    record = sign_record(keys[0], NETWORK_ID, 7, ["/ip4/127.0.0.1/tcp/4001"])
    return {
        "protocol": "cmfl wire protocol 1 (docs/protocol.md)",
        "envelope_domain": "cmfl-p2p/envelope/1",
        "network_id": NETWORK_ID.hex(),
        "topic_prefix": f"/cmfl/{NETWORK_ID.hex()[:16]}/",
        "keys": [{"seed": k.seed.hex(), "public_key": k.public_key.hex(), "peer_id": k.peer_id}
                 for k in keys],
        "envelopes": [_env(update, "inline update, tensor little-endian float32 [1.0, 2.0]"),
                      *[_env(s, "score vector (distance always a CBOR float)") for s in scores],
                      _env(pre_prepare, "pBFT pre-prepare of the block"),
                      _env(prepare, "pBFT prepare"),
                      *[_env(c, f"commit of view {view}: a certificate signature")
                        for c in commits],
                      _env(block_env, "a committed block on the blocks topic"),
                      _env(join, "a non-member's join request"),
                      _env(int8_update(trainer, base), "inline int8 delta update (genesis "
                           "compression int8): q [127, -64], float32 scale 0.5/127")],
        "update_codecs": codec_vectors(),
        "sealed_update": sealed_update(trainer, [by_id[m] for m in committee], base),
        "pledged_vote": pledged_vote(by_id[committee[0]], trainer, update),
        "block": {"committee": committee, "encoded": block.encode().hex(),
                  "hash": block.hash().hex(), "prev_hash": block.prev_hash.hex(),
                  "certificate": {"view": view, "commits": [[m, s.hex()] for m, s in votes]},
                  "committed_encoded": committed.encode().hex(), "quorum": 3},
        "peer_record": {"wire": record.encode().hex(), "signed_bytes": record.signing_bytes().hex(),
                        "peer_id": record.peer_id},
        "cbor_canonical": [
            {"value": "1.0 (float)", "hex": cbor2.dumps(1.0, canonical=True).hex()},
            {"value": "1.5 (float)", "hex": cbor2.dumps(1.5, canonical=True).hex()},
            {"value": "0.1 (float)", "hex": cbor2.dumps(0.1, canonical=True).hex()},
            {"value": "100000.0 (float)", "hex": cbor2.dumps(100000.0, canonical=True).hex()},
            {"value": "{p, sig, height}: length-first key order",
             "hex": cbor2.dumps({"height": 1, "sig": 2, "p": 3}, canonical=True).hex()},
            {"value": "500 (int)", "hex": cbor2.dumps(500, canonical=True).hex()},
        ],
        "cbor_rejected": [
            {"why": "non-canonical: 1-byte argument that fits the initial byte", "hex": "1801"},
            {"why": "non-canonical: double that fits a half", "hex": "fb3ff0000000000000"},
            {"why": "tag", "hex": "c11a514b67b0"},
            {"why": "indefinite-length array", "hex": "9f01ff"},
            {"why": "unsorted map keys", "hex": "a263736967016170 02".replace(" ", "")},
            {"why": "duplicate map key", "hex": "a2617001617002"},
            {"why": "NaN", "hex": "f97e00"},
            {"why": "undefined", "hex": "f7"},
            {"why": "trailing bytes", "hex": "0101"},
            {"why": "map key not text", "hex": "a10102"},
        ],
    }


def render() -> str:
    return json.dumps(build(), indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
