"""The pure sync core: wire messages refuse garbage; a session trusts no single responder."""

from dataclasses import replace

import cbor2
import pytest

from chain.block import CommitCertificate, CommittedBlock
from chain.store import BlockStore, ModelStore
from chain.sync import (
    MAX_BLOCKS_PER_RESPONSE,
    Ask,
    BlocksRequest,
    BlocksResponse,
    DropPeer,
    FetchModel,
    Finished,
    HeadRequest,
    HeadResponse,
    ModelRequest,
    ModelResponse,
    SyncError,
    SyncSession,
    answer,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from chain.verify import ChainVerifier
from tests.test_sync_support import build_chain

CHAIN = build_chain(12)


@pytest.mark.parametrize("data, code", [
    (b"\xff\xfe", "undecodable"),
    (b"\x00" * 300, "oversize"),
    (cbor2.dumps({"t": "blocks", "start": -1, "count": 3}, canonical=True), "malformed"),
    (cbor2.dumps({"t": "blocks", "start": 0, "count": MAX_BLOCKS_PER_RESPONSE + 1},
                 canonical=True), "malformed"),
    (cbor2.dumps({"t": "blocks", "start": 0, "count": 1, "x": 1}, canonical=True), "malformed"),
    (cbor2.dumps({"t": "model", "hash": b"short"}, canonical=True), "malformed"),
    (cbor2.dumps(["head"]), "malformed"),
])
def test_requests_that_are_garbage_are_refused_with_a_code(data, code):
    with pytest.raises(SyncError) as err:
        decode_request(data)
    assert err.value.code == code


def test_messages_round_trip_and_responses_must_answer_the_request():
    for request in (HeadRequest(), BlocksRequest(3, 10), ModelRequest(b"\x01" * 32)):
        assert decode_request(encode_request(request)) == request
    head = HeadResponse(4, b"\x02" * 32)
    assert decode_response(encode_response(head), HeadRequest()) == head
    with pytest.raises(SyncError, match="not an answer"):
        decode_response(encode_response(head), BlocksRequest(0, 1))
    too_many = BlocksResponse((b"a", b"b", b"c"))
    with pytest.raises(SyncError, match="3 blocks for a request of 2"):
        decode_response(encode_response(too_many), BlocksRequest(0, 2))
    with pytest.raises(SyncError, match="not a list of byte"):
        decode_response(cbor2.dumps({"t": "blocks", "blocks": [1]}, canonical=True),
                        BlocksRequest(0, 2))


def test_serving_answers_from_the_store(tmp_path):
    CHAIN.write(tmp_path)
    store, models = BlockStore(tmp_path / "chain.sqlite"), ModelStore(tmp_path / "models")
    assert answer(HeadRequest(), store, models) == HeadResponse(11, CHAIN.blocks[-1].block.hash())
    got = answer(BlocksRequest(10, 64), store, models)
    assert [CommittedBlock.decode(b) for b in got.blocks] == CHAIN.blocks[10:]
    head_model = CHAIN.blocks[-1].block.model_hash
    assert answer(ModelRequest(head_model), store, models) == ModelResponse(len(CHAIN.models[-1]))
    assert answer(ModelRequest(b"\x00" * 32), store, models) == ModelResponse(None)


def tampered(committed: CommittedBlock, how: str) -> bytes:
    block = committed.block
    if how == "link":
        committed = replace(committed, block=replace(block, prev_hash=b"\x66" * 32))
    elif how == "certificate":
        votes = list(committed.certificate.votes)
        votes[0] = (votes[0][0], bytes(64))
        committed = replace(committed, certificate=CommitCertificate(0, tuple(votes)))
    elif how == "model":
        committed = replace(committed, block=replace(block, model_hash=b"\x77" * 32))
    return committed.encode()


def run_session(session, serve, model_bytes):
    """Drive a session with `serve(peer, request) -> response`; the actions it took."""
    log, actions = [], session.start()
    while actions:
        action, actions = actions[0], actions[1:]
        log.append(action)
        if isinstance(action, Ask):
            actions += session.on_response(action.peer, action.request,
                                           serve(action.peer, action.request))
        elif isinstance(action, FetchModel):
            actions += session.on_model(model_bytes)
    return log


@pytest.mark.parametrize("how, reason", [
    ("link", "hash link broken"),
    ("certificate", "certificate signature"),
    ("model", "certificate signature"),  # the model hash is inside what the committee signed
])
def test_a_liar_serving_a_tampered_block_is_dropped_and_an_honest_peer_used(how, reason):
    good = [b.encode() for b in CHAIN.blocks]
    bad = good[:7] + [tampered(CHAIN.blocks[7], how)] + good[8:]

    def serve(peer, request):
        blocks = bad if peer == "liar" else good
        if isinstance(request, HeadRequest):  # the liar claims the longer chain: asked first
            return HeadResponse(13 if peer == "liar" else 11, b"\x00" * 32)
        if isinstance(request, BlocksRequest):
            return BlocksResponse(tuple(blocks[request.start:request.start + request.count]))
        return ModelResponse(len(CHAIN.models[-1]))

    verifier = ChainVerifier(CHAIN.genesis)
    for committed in CHAIN.blocks[:3]:  # we hold the first three blocks already
        verifier.advance(committed)
    session = SyncSession(verifier, ["honest", "liar"], batch=4)
    log = run_session(session, serve, CHAIN.models[-1])
    drops = [a for a in log if isinstance(a, DropPeer)]
    assert [(d.peer, d.penalize) for d in drops] == [("liar", True)]
    assert reason in drops[0].reason and "block 7" in drops[0].reason
    done = log[-1]
    assert isinstance(done, Finished) and done.model == CHAIN.models[-1]
    assert list(done.blocks) == CHAIN.blocks[3:]


def test_no_peer_ahead_a_silent_claim_and_a_wrong_checkpoint_end_cleanly():
    verifier = ChainVerifier(CHAIN.genesis)
    for committed in CHAIN.blocks:
        verifier.advance(committed)
    log = run_session(SyncSession(verifier, ["a"]), lambda p, r: HeadResponse(11, b"\x00" * 32),
                      b"")
    assert log[-1] == Finished((), None, "no peer is ahead")

    def empty(peer, request):  # claims a head it then does not serve
        return HeadResponse(20, b"\x00" * 32) if isinstance(request, HeadRequest) \
            else BlocksResponse(())
    log = run_session(SyncSession(ChainVerifier(CHAIN.genesis), ["a"]), empty, b"")
    assert isinstance(log[-2], DropPeer) and not log[-2].penalize
    assert log[-1].blocks == () and log[-1].model is None

    def honest(peer, request):
        if isinstance(request, HeadRequest):
            return HeadResponse(11, b"\x00" * 32)
        if isinstance(request, BlocksRequest):
            return BlocksResponse(tuple(b.encode() for b in CHAIN.blocks))
        return ModelResponse(5)
    log = run_session(SyncSession(ChainVerifier(CHAIN.genesis), ["a"]), honest, b"wrong")
    assert log[-1].model is None and "does not match" in log[-1].outcome
