"""Structure-aware fuzzing of every validator of network input (tests/cbor_generators.py).

Unlike tests/test_fuzz_decoders.py, which mutates valid bytes, these cases are well-formed
hostile CBOR (tags, shared references, indefinite lengths, non-canonical numbers, duplicate
keys, deep nesting, huge declared lengths) and real messages with one field replaced: spliced
in as raw bytes, or as a profile value and then re-signed with the sender's real key, so that
admission passes and the round core's payload parsing (RoundMachine.on_envelope with a real
RoundContext), block verification and the sync session are reached.

Each case must end in the validator's own error type or a refusal (a verdict, a Rejected
action, a DropPeer), never another exception, and within a generous per-case ceiling (the
decoders' work is bounded by counters - items, depth, lengths - not by the clock; the ceiling
only catches a case that escapes them). Default tier: a seeded sample of `SHORT` cases;
`-m slow`: `LONG` (>= 1,000,000) cases.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections import Counter
from typing import Any, Callable

import cbor2
import pytest

from chain.block import Block, BlockError, CommitCertificate, CommittedBlock, commit_envelope
from chain.round_rules import scores_payload
from chain.sync import (BlocksRequest, BlocksResponse, HeadRequest, HeadResponse, ModelRequest,
                        SyncError, SyncSession, decode_request, decode_response, encode_response)
from chain.verify import ChainVerifier
from gossip.cbor_profile import CborProfileError, decode_canonical
from gossip.envelope import Envelope
from gossip.transfer import BlobRef, TransferError, decode_chunk_header, decode_chunk_request
from gossip.validation import EnvelopeAdmission
from learning.tensors import encode_state, state_bytes, state_from_bytes, state_hash
from p2p_node.discovery import DiscoveryError, decode_peer_list
from p2p_node.round_machine import RoundMachine
from tests.cbor_generators import hostile_item, mutate_value, splice_raw
from tests.test_round_machine import (BASE, COMMITTEE, MEMBERS, NET, SIGNERS, TRAINERS, context,
                                      update_of)
from tests.test_sync_support import build_chain

SHORT = int(os.environ.get("FUZZ_PROFILE_SHORT", "20000"))
LONG = 1_000_000
#: Generous wall-clock ceiling per case: far above any bounded decode (milliseconds).
CEILING_SECONDS = 2.0

H = b"\x01" * 32
CHAIN = build_chain(2)
CHAIN_SIGNERS = CHAIN.signers
LEADER = COMMITTEE[0]
def admission() -> EnvelopeAdmission:
    """A fresh admission check per case: one shared would count every case's re-signed envelope
    against its signer's per-round limit (gossip.validation.DISTINCT_PER_ROUND)."""
    return EnvelopeAdmission(NET, frozenset(MEMBERS), current_round=0)


def _block_value() -> bytes:
    block = Block(height=0, prev_hash=NET, network_id=NET, committee=COMMITTEE,
                  trainers=TRAINERS, updates=(), score_vectors=(), selected=(), model_hash=H,
                  next_committee=COMMITTEE)
    return block.encode()


def _envelope_seeds() -> list[tuple[str, str, Any]]:
    """(kind, sender, payload) of valid messages of round 0 of the round-machine test network."""
    value = _block_value()
    vh = hashlib.sha256(value).digest()
    embedded_prepare = [COMMITTEE[1], b"\x03" * 64, {"view": 0, "value_hash": vh}]
    committed = CommittedBlock(Block.decode(value), CommitCertificate(0, ((LEADER, b"\x02" * 64),)))
    data = state_bytes(update_of(TRAINERS[0]))
    return [
        ("update", TRAINERS[0], {"model": encode_state(update_of(TRAINERS[0])), "samples": 10,
                                 "base": state_hash(BASE)}),
        ("update", TRAINERS[1], {"blob": BlobRef.of(data).to_obj(), "samples": 10,
                                 "base": state_hash(BASE)}),
        ("scores", COMMITTEE[1], scores_payload({t: (H, 0.5) for t in TRAINERS})),
        ("pre_prepare", LEADER, {"view": 0, "value_hash": vh, "value": value}),
        ("prepare", COMMITTEE[2], {"view": 0, "value_hash": vh}),
        ("commit", COMMITTEE[2], {"view": 0, "value_hash": vh}),
        ("view_change", COMMITTEE[2], {"view": 1, "prepared": {
            "view": 0, "value_hash": vh, "value": value, "prepares": [embedded_prepare]}}),
        ("new_view", COMMITTEE[1], {"view": 1, "value_hash": vh, "value": value, "view_changes": [
            [COMMITTEE[2], b"\x04" * 64, {"view": 1, "prepared": None}]]}),
        ("block", COMMITTEE[3], committed.to_obj()),
    ]


ENVELOPES = _envelope_seeds()


def _wire_obj(env: Envelope) -> dict[str, Any]:
    return {"k": env.kind, "n": env.network_id, "r": env.round, "s": env.sender,
            "p": env.payload, "sig": env.signature}


class Outcomes:
    """How cases ended (refusal codes, acceptances), and the slowest case."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.slowest = 0.0


def run_case(out: Outcomes, target: str, case: Callable[[], str]) -> None:
    """Run one case: it returns an outcome label or raises an allowed error (its own checks
    fail with pytest.fail); anything else fails the test with the target's name."""
    start = time.perf_counter()
    try:
        label = case()
    except pytest.fail.Exception:
        raise
    except Exception as exc:  # the bug this test exists to find
        pytest.fail(f"{target} raised {type(exc).__name__}: {str(exc)[:200]}")
    elapsed = time.perf_counter() - start
    out.slowest = max(out.slowest, elapsed)
    assert elapsed < CEILING_SECONDS, f"{target}: one case took {elapsed:.1f}s"
    out.counts[f"{target}:{label}"] += 1


def _refused(call: Callable[[], Any], error: type[Exception]) -> str:
    try:
        call()
    except error as exc:
        text = str(exc)
        assert text and len(text) < 1000, f"refusal text of {len(text)} chars"
        return getattr(exc, "code", "refused")
    return "accepted"


# targets: each takes the rng and returns one case -------------------------------------------
def profile_case(rng: random.Random) -> Callable[[], str]:
    raw = hostile_item(rng)

    def case() -> str:
        try:
            value = decode_canonical(raw)
        except CborProfileError as exc:
            return exc.code
        # What the profile accepts is exactly what cbor2 re-encodes it to: signed == received.
        if cbor2.dumps(value, canonical=True) != raw:
            pytest.fail(f"profile accepted non-canonical bytes {raw[:60].hex()}")
        return "accepted"
    return case


def _machine_for(kind: str, rng: random.Random) -> RoundMachine:
    # A committee member handles pBFT and scores; a trainer sees updates and blocks too.
    me = COMMITTEE[1] if kind not in ("update", "block") or rng.random() < 0.5 else TRAINERS[2]
    return RoundMachine(context(), me)


def _hostile_envelope(kind: str, payload: Any, signer: Any) -> bytes:
    """A signed envelope as a hostile peer makes it: our encoder refuses values outside the
    profile's use (floats in pBFT payloads), a foreign one need not, so this signs with plain
    canonical cbor2."""
    signed = cbor2.dumps(["cmfl-p2p/envelope/1", kind, NET, 0, signer.peer_id, payload],
                         canonical=True)
    return cbor2.dumps({"k": kind, "n": NET, "r": 0, "s": signer.peer_id, "p": payload,
                        "sig": signer.sign(signed)}, canonical=True)


def signed_envelope_case(rng: random.Random) -> Callable[[], str]:
    """A real message with payload fields replaced by profile values, re-signed by its sender:
    admission accepts it, so the round core's payload parsing is what is tested."""
    kind, sender, payload = rng.choice(ENVELOPES)
    for _ in range(rng.choice((1, 1, 2, 3))):
        payload = mutate_value(rng, payload)
    data = _hostile_envelope(kind, payload, SIGNERS[sender])
    machine = _machine_for(kind, rng)

    def case() -> str:
        verdict = admission().admit(data)
        if not verdict.accepted:
            return verdict.code
        assert verdict.envelope is not None
        machine.start()
        actions = machine.on_envelope(verdict.envelope)
        rejected = [a for a in actions if type(a).__name__ == "Rejected"]
        return "rejected" if rejected else "handled"
    return case


def raw_envelope_case(rng: random.Random) -> Callable[[], str]:
    """A real signed envelope with one node (anywhere, the payload included) replaced by raw
    hostile bytes."""
    kind, sender, payload = rng.choice(ENVELOPES)
    env = Envelope(kind, NET, 0, "", payload).signed_by(SIGNERS[sender])
    data = splice_raw(rng, _wire_obj(env))

    def case() -> str:
        verdict = admission().admit(data)
        if verdict.accepted:
            assert verdict.envelope is not None
            _machine_for(kind, rng).on_envelope(verdict.envelope)
            return "accepted"
        return verdict.code
    return case


def _resign(obj: Any) -> Any:
    """A committed block obj with its certificate re-signed by the committee over its
    (mutated) block, so verification gets past the signatures; unchanged if unparseable."""
    try:
        block = Block.from_obj(obj["block"])
        view = obj["certificate"]["view"]
        committee = CHAIN.blocks[0].block.committee
        votes = [[m, commit_envelope(block.network_id, block.height, view, block.hash(),
                                     ).signed_by(CHAIN_SIGNERS[m]).signature]
                 for m in committee[:3]]
    except (BlockError, TypeError, KeyError, ValueError):
        return obj
    return {**obj, "certificate": {"view": view, "commits": votes}}


def block_case(rng: random.Random) -> Callable[[], str]:
    """Block 0 of a real chain, mutated (re-signed) or spliced; decoded and verified."""
    obj = CHAIN.blocks[0].to_obj()
    if rng.random() < 0.5:
        data = splice_raw(rng, obj)
    else:
        mutated = mutate_value(rng, obj)
        if isinstance(mutated, dict) and rng.random() < 0.7:
            mutated = _resign(mutated)
        data = encode(mutated)

    def case() -> str:
        try:
            committed = CommittedBlock.decode(data)
            ChainVerifier(CHAIN.genesis).check(committed)
        except BlockError:
            return "refused"
        return "accepted"
    return case


def encode(obj: Any) -> bytes:
    return cbor2.dumps(obj, canonical=True)


SYNC_REQUESTS = [{"t": "head"}, {"t": "blocks", "start": 0, "count": 3},
                 {"t": "model", "hash": H}]
SYNC_RESPONSES = [(HeadRequest(), {"t": "head", "height": 1, "hash": H}),
                  (BlocksRequest(0, 2), {"t": "blocks", "blocks": [b.encode()
                                                                   for b in CHAIN.blocks]}),
                  (ModelRequest(H), {"t": "model", "size": 100}),
                  (HeadRequest(), {"t": "error", "reason": "busy"})]


def sync_case(rng: random.Random) -> Callable[[], str]:
    """Sync frames mutated or spliced; and a session served a mutated (re-signed) block."""
    roll = rng.random()
    if roll < 0.3:
        obj = rng.choice(SYNC_REQUESTS)
        data = splice_raw(rng, obj) if rng.random() < 0.5 else encode(mutate_value(rng, obj))
        return lambda: _refused(lambda: decode_request(data), SyncError)
    if roll < 0.6:
        request, obj = rng.choice(SYNC_RESPONSES)
        data = splice_raw(rng, obj) if rng.random() < 0.5 else encode(mutate_value(rng, obj))
        return lambda: _refused(lambda: decode_response(data, request), SyncError)
    # The session: its peer claims height 1 and serves block 0 mutated.
    raw = block_case_bytes(rng)

    def case() -> str:
        session = SyncSession(ChainVerifier(CHAIN.genesis), ["a"])
        session.start()
        ask = session.on_response("a", HeadRequest(), HeadResponse(1, H))[0]
        request = ask.request
        response = decode_response(encode_response(BlocksResponse((raw,))), request)
        actions = session.on_response("a", request, response)
        return type(actions[0]).__name__ if actions else "none"
    return case


def block_case_bytes(rng: random.Random) -> bytes:
    obj = CHAIN.blocks[0].to_obj()
    if rng.random() < 0.3:
        return splice_raw(rng, obj)
    mutated = mutate_value(rng, obj)
    return encode(_resign(mutated) if isinstance(mutated, dict) else mutated)


PEER_LIST = [[MEMBERS[0], ["/ip4/10.0.0.1/tcp/4001"]],
             [MEMBERS[1], ["/ip4/10.0.0.2/tcp/4001", "/ip6/::1/tcp/4001"]]]


def peer_list_case(rng: random.Random) -> Callable[[], str]:
    data = splice_raw(rng, PEER_LIST) if rng.random() < 0.5 else \
        encode(mutate_value(rng, PEER_LIST))
    return lambda: _refused(lambda: decode_peer_list(data), DiscoveryError)


def transfer_case(rng: random.Random) -> Callable[[], str]:
    roll = rng.randrange(3)
    obj: Any = [{"h": H, "o": 0, "n": 4096}, rng.choice(({"n": 4096}, {"err": "not-found"})),
                {"h": H, "z": 10}][roll]
    if roll == 2:  # a blob reference arrives decoded, inside an update's payload
        value = mutate_value(rng, obj)
        return lambda: _refused(lambda: BlobRef.from_obj(value), TransferError)
    data = splice_raw(rng, obj) if rng.random() < 0.5 else encode(mutate_value(rng, obj))
    if roll == 0:
        return lambda: _refused(lambda: decode_chunk_request(data), TransferError)
    return lambda: _refused(lambda: decode_chunk_header(data, 4096), TransferError)


STATE = encode_state(BASE)


def state_case(rng: random.Random) -> Callable[[], str]:
    data = splice_raw(rng, STATE) if rng.random() < 0.5 else encode(mutate_value(rng, STATE))
    return lambda: _refused(lambda: state_from_bytes(data), ValueError)


#: target -> (case maker, weight)
TARGETS: dict[str, tuple[Callable[[random.Random], Callable[[], str]], int]] = {
    "profile": (profile_case, 4),
    "signed_envelope": (signed_envelope_case, 4),
    "raw_envelope": (raw_envelope_case, 3),
    "block": (block_case, 2),
    "sync": (sync_case, 2),
    "peer_list": (peer_list_case, 1),
    "transfer": (transfer_case, 1),
    "state": (state_case, 1),
}


def campaign(count: int, seed: int) -> Outcomes:
    """`count` cases over every target, by weight; deterministic in seed."""
    rng = random.Random(seed)
    names = [n for n, (_, w) in TARGETS.items() for _ in range(w)]
    out = Outcomes()
    for _ in range(count):
        name = rng.choice(names)
        run_case(out, name, TARGETS[name][0](rng))
    return out


def _reached(out: Outcomes) -> None:
    """The campaign must reach past decoding: round-core refusals and accepted messages."""
    labels = set(out.counts)
    for needed in ("signed_envelope:rejected", "signed_envelope:handled", "profile:tag",
                   "profile:accepted", "raw_envelope:undecodable", "block:refused"):
        assert needed in labels, f"no case ended as {needed}: {sorted(labels)}"


def test_structured_fuzz_sample_ends_in_refusals_only():
    out = campaign(SHORT, seed=1)
    assert sum(out.counts.values()) == SHORT
    _reached(out)


@pytest.mark.slow
def test_structured_fuzz_long_campaign():
    start = time.perf_counter()
    out = campaign(LONG, seed=2)
    _reached(out)
    print(f"\n{sum(out.counts.values())} cases in {time.perf_counter() - start:.0f}s, slowest "
          f"{out.slowest * 1000:.1f} ms; outcomes: {dict(sorted(out.counts.items()))}")
