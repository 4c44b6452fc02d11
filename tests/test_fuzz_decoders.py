"""Every decoder of network input, fed random, mutated, oversize and deeply nested input.

Each must refuse bad input with its own documented error type and a reason (the text the peer
logs), never another exception. Two engines: a seeded mutation fuzzer (fast: the slow tier's
100,000 inputs per decoder take seconds to minutes) and hypothesis (structure-aware CBOR trees).
The default tier runs a short campaign of each; `-m slow` runs the long one.
"""

from __future__ import annotations

import os
import random
import types
from typing import Any, Callable

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bft.messages import MessageError, decode_message
from chain.block import Block, BlockError, CommitCertificate, CommittedBlock, UpdateRef
from chain.round_rules import parse_scores_body
from gossip.envelope import Envelope, EnvelopeError, decode_envelope
from gossip.peer_keys import Signer
from gossip.transfer import (BlobRef, ChunkRequest, TransferError, decode_chunk_header,
                             decode_chunk_request, encode_chunk_header)
from learning.compression import UpdateCodec, delta_bytes, delta_from_bytes
from learning.model import ModelSpec, initial_state
from learning.tensors import decode_state, state_bytes, state_from_bytes
from gossip.peer_record import RecordError, decode_record, sign_record
from p2p_node.discovery import DiscoveryError, decode_peer_list, encode_peer_list

SIGNER = Signer(b"\x09" * 32)
PEER = SIGNER.peer_id
NET = b"\x07" * 32
H = b"\x01" * 32
TRAINERS = (Signer(b"\x0a" * 32).peer_id, Signer(b"\x0b" * 32).peer_id)
#: parse_scores_body reads only the round's trainers from its context.
CTX = types.SimpleNamespace(trainers=TRAINERS, height=0)

SHORT = int(os.environ.get("FUZZ_SHORT", "1500"))  # mutated inputs per decoder, default tier
LONG = 100_000  # slow tier


def _block() -> CommittedBlock:
    scores = Envelope("scores", NET, 0, PEER, {"scores": [[TRAINERS[0], H, 0.5]]}
                      ).signed_by(SIGNER).encode()
    block = Block(height=3, prev_hash=H, network_id=NET, committee=(PEER,), trainers=TRAINERS,
                  updates=(UpdateRef(TRAINERS[0], H, 100),), score_vectors=(scores,),
                  selected=(TRAINERS[0],), model_hash=H, next_committee=(PEER,))
    return CommittedBlock(block, CommitCertificate(0, ((PEER, b"\x02" * 64),)))


def _pbft_body(kind: str) -> Any:
    return {"prepare": {"view": 1, "value_hash": H},
            "commit": {"view": 1, "value_hash": H},
            "pre_prepare": {"view": 0, "value_hash": H, "value": b"block"},
            "view_change": {"view": 2, "prepared": None},
            "new_view": {"view": 2, "value_hash": H, "value": b"v",
                         "view_changes": [[PEER, b"\x03" * 64, {"view": 2, "prepared": None}]]},
            }[kind]


PBFT_KINDS = ("prepare", "commit", "pre_prepare", "view_change", "new_view")


def _decode_pbft(data: bytes) -> Any:
    """A pBFT body arrives inside an envelope already CBOR-decoded; the kind picks the parser."""
    try:
        obj = cbor2.loads(data)
    except Exception:
        obj = data  # not CBOR: hand the parser the raw bytes, also hostile
    kind = PBFT_KINDS[data[0] % len(PBFT_KINDS)] if data else "prepare"
    return decode_message(kind, 0, PEER, obj, b"\x00" * 64)


def _decode_scores(data: bytes) -> Any:
    try:
        payload = cbor2.loads(data)
    except Exception:
        payload = data
    return parse_scores_body(CTX, Envelope("scores", NET, 0, PEER, payload, b"\x00" * 64))


def _decode_state_obj(data: bytes) -> Any:
    try:
        obj = cbor2.loads(data)
    except Exception:
        obj = data
    return decode_state(obj)


def _decode_blob_ref(data: bytes) -> Any:
    try:
        obj = cbor2.loads(data)
    except Exception:
        obj = data
    return BlobRef.from_obj(obj)


_STATE = state_bytes({k: v[:2] if v.dim() else v for k, v in initial_state(ModelSpec(), 0).items()})

_BASE = {k: v[:2] if v.dim() else v for k, v in initial_state(ModelSpec(), 0).items()}
_CODECS = {"fp16": UpdateCodec("fp16"), "int8": UpdateCodec("int8"),
           "topk": UpdateCodec("topk", 0.25)}


def _delta_decoder(codec: UpdateCodec) -> Callable[[bytes], Any]:
    return lambda data: delta_from_bytes(_BASE, data, codec)


_RECORD = sign_record(SIGNER, NET, 7, ["/ip4/10.0.0.1/tcp/4001", "/ip6/::1/tcp/4001"]).encode()

#: name -> (decoder, its documented error, valid seed inputs to mutate)
DECODERS: dict[str, tuple[Callable[[bytes], Any], type[Exception], list[bytes]]] = {
    "envelope": (decode_envelope, EnvelopeError,
                 [Envelope("update", NET, 1, PEER, {"x": 1}).signed_by(SIGNER).encode()]),
    "committed_block": (CommittedBlock.decode, BlockError, [_block().encode()]),
    "block": (Block.decode, BlockError, [_block().block.encode()]),
    "state_bytes": (state_from_bytes, ValueError, [_STATE]),
    "state_obj": (_decode_state_obj, ValueError, [_STATE]),
    "pbft": (_decode_pbft, MessageError,
             [cbor2.dumps(_pbft_body(k)) for k in PBFT_KINDS]),
    "scores_body": (_decode_scores, BlockError,
                    [cbor2.dumps({"scores": [[TRAINERS[0], H, 0.5], [TRAINERS[1], H, 1.0]]})]),
    "chunk_request": (decode_chunk_request, TransferError, [ChunkRequest(H, 0, 4096).encode()]),
    "chunk_header": (lambda d: decode_chunk_header(d, 4096), TransferError,
                     [encode_chunk_header(4096), encode_chunk_header(None, "not-found")]),
    "blob_ref": (_decode_blob_ref, TransferError, [cbor2.dumps(BlobRef(H, 10).to_obj())]),
    "peer_list": (decode_peer_list, DiscoveryError,
                  [encode_peer_list([_RECORD, b"\x01" * 40])]),
    "peer_record": (decode_record, RecordError, [_RECORD]),
    **{f"delta_{name}": (_delta_decoder(c), ValueError, [delta_bytes(
        _BASE, {k: v + 0.1 for k, v in _BASE.items()}, c)]) for name, c in _CODECS.items()},
}

#: Inputs every decoder meets: empty, oversize, deeply nested CBOR, huge declared lengths.
HOSTILE = [
    b"", b"\x00", b"\xff" * 8, os.urandom(2 * 1024 * 1024),
    b"\x81" * 100_000 + b"\x00",  # arrays nested 100k deep
    b"\xa1\x00" * 50_000 + b"\x00",  # maps nested 50k deep
    b"\xd8\x1e" * 10_000 + b"\x00",  # tags nested 10k deep
    b"\x9f" * 5000 + b"\xff" * 5000,  # indefinite arrays
    b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff",  # a byte string claiming 2^64 bytes
    b"\x9b\x00\x00\x00\x10\x00\x00\x00\x00",  # an array claiming 2^36 items
    b"\xbb\x00\x00\x00\x10\x00\x00\x00\x00",  # a map claiming 2^36 pairs
    b"\xc2\x5a\x00\x10\x00\x00" + b"\xff" * 16,  # bignum claiming 1 MiB, truncated
    b"\xfb\x7f\xf8\x00\x00\x00\x00\x00\x00",  # NaN
    cbor2.dumps({"k": "update", "n": NET, "r": -1, "s": PEER, "p": None, "sig": b""}),
    cbor2.dumps([[]] * 10_000),
]


def _random_cbor(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 6 or roll < 0.5:
        return rng.choice([0, -1, 2**64, 1.5, float("nan"), float("inf"), True, None, "",
                           "x" * rng.randrange(300), PEER, b"", H, os.urandom(rng.randrange(70)),
                           rng.randrange(-2**70, 2**70)])
    if roll < 0.75:
        return [_random_cbor(rng, depth + 1) for _ in range(rng.randrange(5))]
    keys = ["k", "n", "r", "s", "p", "sig", "h", "o", "z", "view", "value_hash", "scores",
            "block", "certificate", "dtype", "shape", "data", "err", 0, b"k"]
    return {rng.choice(keys): _random_cbor(rng, depth + 1) for _ in range(rng.randrange(5))}


def mutate(rng: random.Random, seed: bytes) -> bytes:
    """One random edit (or a few) of a valid input, CBOR-aware some of the time."""
    data = bytearray(seed)
    for _ in range(rng.choice((1, 1, 2, 4))):
        op = rng.randrange(9)
        if op == 0 and data:  # flip a bit
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and data:  # set a byte to an interesting value
            data[rng.randrange(len(data))] = rng.choice((0, 0x17, 0x18, 0x1b, 0x5b, 0x7f, 0x80,
                                                         0x9f, 0xbf, 0xf6, 0xff))
        elif op == 2:  # insert random bytes
            i = rng.randrange(len(data) + 1)
            data[i:i] = os.urandom(rng.randrange(1, 9))
        elif op == 3 and data:  # delete a run
            i = rng.randrange(len(data))
            del data[i:i + rng.randrange(1, 17)]
        elif op == 4 and data:  # truncate
            del data[rng.randrange(len(data)):]
        elif op == 5 and data:  # duplicate a run
            i = rng.randrange(len(data))
            data[i:i] = data[i:i + rng.randrange(1, 65)]
        elif op == 6:  # replace a subtree of the decoded value
            try:
                obj = cbor2.loads(bytes(data))
                data = bytearray(cbor2.dumps(_replace(rng, obj)))
            except Exception:
                pass
        elif op == 7:  # an unrelated random CBOR value
            data = bytearray(cbor2.dumps(_random_cbor(rng)))
        else:  # random bytes
            data = bytearray(os.urandom(rng.randrange(64)))
    return bytes(data)


def _replace(rng: random.Random, obj: Any) -> Any:
    if isinstance(obj, dict) and obj and rng.random() < 0.8:
        key = rng.choice(list(obj))
        if rng.random() < 0.2:
            return {k: v for k, v in obj.items() if k != key}
        return {**obj, key: _replace(rng, obj[key])}
    if isinstance(obj, list) and obj and rng.random() < 0.8:
        i = rng.randrange(len(obj))
        return obj[:i] + [_replace(rng, obj[i])] + obj[i + 1:]
    return _random_cbor(rng)


def check(name: str, data: bytes) -> None:
    """The decoder accepts `data` or refuses it with its own error and a reason; else fail."""
    decoder, error, _ = DECODERS[name]
    try:
        decoder(data)
    except error as exc:
        assert str(exc), f"{name}: refusal without a reason"
    except Exception as exc:  # the bug this test exists to find
        pytest.fail(f"{name} raised {type(exc).__name__}: {exc!r:.200} on input "
                    f"{data[:80].hex()} ({len(data)} bytes)")


def campaign(name: str, count: int, seed: int) -> None:
    rng = random.Random(seed)
    seeds = DECODERS[name][2]
    for s in seeds:
        check(name, s)
    for data in HOSTILE:
        check(name, data)
    for _ in range(count):
        check(name, mutate(rng, rng.choice(seeds)))


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_decoder_refuses_mutated_and_hostile_input_with_its_own_error(name):
    campaign(name, SHORT, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DECODERS))
def test_decoder_survives_a_long_mutation_campaign(name):
    campaign(name, LONG, seed=2)


cbor_trees = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.binary(max_size=80)
    | st.text(max_size=40) | st.sampled_from([PEER, H, NET, "update", "scores", "view"]),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.sampled_from(["k", "n", "r", "s", "p", "sig", "h", "o", "z", "n",
                                       "view", "value_hash", "value", "scores", "block",
                                       "certificate", "prepared", "view_changes"]) | st.text(
                                           max_size=5), children, max_size=6),
    max_leaves=40)


def _hypothesis_case(name: str, examples: int):
    @settings(max_examples=examples, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(tree=cbor_trees, raw=st.binary(max_size=300))
    def run(tree, raw):
        check(name, cbor2.dumps(tree))
        check(name, raw)
    return run


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_decoder_refuses_generated_cbor_trees(name):
    _hypothesis_case(name, 60)()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DECODERS))
def test_decoder_refuses_many_generated_cbor_trees(name):
    _hypothesis_case(name, 5000)()
