"""The CBOR profile (gossip.cbor_profile): its rules, and each attack it was built against."""

from __future__ import annotations

import time

import cbor2
import pytest

from chain.block import Block, BlockError, CommittedBlock
from chain.sync import BlocksResponse, DropPeer, HeadRequest, HeadResponse, SyncSession
from chain.verify import ChainVerifier
from gossip.cbor_profile import CborProfileError, decode_canonical
from gossip.envelope import MAX_ENVELOPE_BYTES, Envelope, EnvelopeError, decode_envelope
from gossip.peer_keys import Signer
from learning.dp_accounting import DpReport
from tests.cbor_generators import Raw, cyclic_shared, encode_with_raw, exponential_sharing, head
from tests.test_sync_support import build_chain

SIGNER = Signer(b"\x05" * 32)
NET = b"\x07" * 32


def refused(data: bytes, **limits) -> CborProfileError:
    with pytest.raises(CborProfileError) as err:
        decode_canonical(data, **limits)
    return err.value


def envelope_with_payload(raw_payload: bytes, sig: bytes = b"\x00" * 64) -> bytes:
    """A canonical envelope map whose payload is `raw_payload` as it is."""
    return encode_with_raw({"k": "update", "n": NET, "r": 1, "s": SIGNER.peer_id,
                            "p": Raw(raw_payload), "sig": sig})


# the rules ----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [
    0, 23, 24, 255, 256, 2**32, 2**64 - 1, -1, -2**64, b"", b"x" * 1000, "", "héllo",
    [], [1, [2, [3]]], {}, {"a": 1, "bb": [True, False, None]}, 0.5, 1.0, -0.0, 1.1, 1e300,
    2.0**-24, 100000.0, {"scores": [["p", b"\x01" * 32, 0.25]]},
])
def test_canonical_values_round_trip(value):
    data = cbor2.dumps(value, canonical=True)
    assert decode_canonical(data) == value
    assert cbor2.dumps(decode_canonical(data), canonical=True) == data


@pytest.mark.parametrize("data, code", [
    (b"", "truncated"), (b"\x18", "truncated"), (b"\x42\x00", "truncated"),
    (b"\x00\x00", "trailing-bytes"),
    (b"\x18\x01", "non-canonical"), (b"\x19\x00\xff", "non-canonical"),
    (b"\x1a\x00\x00\xff\xff", "non-canonical"), (b"\x1b\x00\x00\x00\x00\xff\xff\xff\xff",
                                                  "non-canonical"),
    (b"\x58\x01a", "non-canonical"),  # a length in a longer head than it needs
    (b"\xfb\x3f\xf0\x00\x00\x00\x00\x00\x00", "non-canonical"),  # 1.0 as a double
    (b"\xfa\x3f\x80\x00\x00", "non-canonical"),  # 1.0 as a single
    (b"\xf9\x7e\x00", "non-finite-float"), (b"\xf9\x7c\x00", "non-finite-float"),
    (b"\xc2\x41\x01", "tag"), (b"\xd9\xd9\xf7\x00", "tag"),  # bignum, self-describe
    (b"\x9f\xff", "indefinite-length"), (b"\x5f\xff", "indefinite-length"),
    (b"\xff", "indefinite-length"),
    (b"\xf7", "simple-value"), (b"\xe0", "simple-value"), (b"\xf8\x20", "simple-value"),
    (b"\x1c", "reserved"),
    (b"\x62\xc3\x28", "invalid-utf8"), (b"\x63\xed\xa0\x80", "invalid-utf8"),  # surrogate
    (b"\xa1\x01\x00", "bad-key"), (b"\xa1\x41k\x00", "bad-key"),
    (b"\xa2\x61b\x00\x61a\x00", "unsorted-keys"), (b"\xa2\x62aa\x00\x61b\x00", "unsorted-keys"),
    (b"\xa2\x61a\x00\x61a\x00", "duplicate-key"),
    (b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff", "truncated"),
    (b"\x9b\x00\x00\x00\x10\x00\x00\x00\x00", "too-long"),
    (b"\xbb\x00\x00\x00\x10\x00\x00\x00\x00", "too-long"),
])
def test_everything_outside_the_profile_is_refused_with_a_stable_code(data, code):
    assert refused(data).code == code


def test_depth_and_item_count_are_bounded():
    assert decode_canonical(b"\x81" * 16 + b"\x00") is not None
    assert refused(b"\x81" * 17 + b"\x00").code == "too-deep"
    assert refused(b"\x81" * 100_000 + b"\x00").code == "too-deep"
    assert refused(cbor2.dumps([0] * 11), max_items=10).code in ("too-long", "too-many-items")
    assert refused(cbor2.dumps([[0]] * 6), max_items=10).code == "too-many-items"


# the attacks --------------------------------------------------------------------------------
def test_cyclic_shared_references_are_refused():
    data = envelope_with_payload(cyclic_shared())
    with pytest.raises(EnvelopeError) as err:
        decode_envelope(data)
    assert err.value.code == "undecodable" and "tag" in str(err.value)


@pytest.mark.parametrize("tagged", [
    head(6, 36) + head(3, 5) + b"hello",  # MIME: cbor2 builds an email message
    head(6, 1) + head(0, 1_700_000_000),  # epoch datetime
    head(6, 0) + head(3, 20) + b"2024-01-01T00:00:00Z",
    head(6, 4) + head(4, 2) + head(1, 2**63) + head(0, 5),  # decimal of huge exponent
    head(6, 35) + head(3, 2) + b"a+",  # regex
    head(6, 258) + head(4, 2) + b"\x01\x02",  # set
    head(6, 2) + head(2, 200) + b"\xff" * 200,  # a 1600-bit bignum
])
def test_rich_tags_are_refused_before_anything_is_built(tagged):
    assert refused(envelope_with_payload(tagged)).code == "tag"


def test_exponential_sharing_is_refused_in_time_linear_in_size_and_short_text():
    data = envelope_with_payload(exponential_sharing(40))  # ~2**40 leaves once resolved
    assert len(data) < 600
    start = time.perf_counter()
    with pytest.raises(EnvelopeError) as err:
        decode_envelope(data)
    # Generous: a linear scan of 600 bytes takes microseconds; the old path took 10-14 s.
    assert time.perf_counter() - start < 0.05
    assert len(str(err.value)) < 200


def test_refusal_texts_never_format_the_hostile_value():
    kind = ["x" * 10_000] * 50  # not shared, but large: the text must not carry it
    data = cbor2.dumps({"k": kind, "n": NET, "r": 1, "s": "s", "p": 0, "sig": b"\x00" * 64},
                       canonical=True)
    with pytest.raises(EnvelopeError) as err:
        decode_envelope(data)
    assert err.value.code == "malformed" and len(str(err.value)) < 100


def test_duplicate_key_padding_is_refused_though_the_signature_would_verify():
    env = Envelope("update", NET, 1, "", {"samples": 3}).signed_by(SIGNER)
    good = env.encode()
    # The same map with a padding entry: "p" twice, the first one any size (cbor2 keeps the last).
    pad = b"\x61p" + cbor2.dumps(b"\x00" * 4096)
    padded = b"\xa7" + good[1:].replace(b"\x61p", pad + b"\x61p", 1)
    old = cbor2.loads(padded)  # what the old decoder saw: the same envelope, signature valid
    assert Envelope(old["k"], old["n"], old["r"], old["s"], old["p"], old["sig"]
                    ).has_valid_signature()
    assert decode_envelope(good) == env
    with pytest.raises(EnvelopeError) as err:
        decode_envelope(padded)
    assert "duplicate-key" in str(err.value)


def test_non_canonical_numbers_are_refused():
    env = Envelope("scores", NET, 1, "", {"scores": [["t", b"\x01" * 32, 0.5]]}).signed_by(SIGNER)
    good = env.encode()
    assert decode_envelope(good) == env
    # round 1 as a 1-byte argument, and 0.5 as a double: same values, other bytes
    long_round = good.replace(b"\x61r\x01", b"\x61r\x18\x01")
    long_float = good.replace(b"\xf9\x38\x00", b"\xfb\x3f\xe0\x00\x00\x00\x00\x00\x00")
    for data in (long_round, long_float):
        assert data != good and cbor2.loads(data) == cbor2.loads(good)
        with pytest.raises(EnvelopeError, match="non-canonical"):
            decode_envelope(data)


CHAIN = build_chain(1, seed=3)


def _dp_block_bytes(noise_multiplier_raw: bytes) -> bytes:
    """Block 0 of a real chain with DP parameters whose noise_multiplier is the given item."""
    obj = CHAIN.blocks[0].to_obj()
    dp = {"accountant": "rdp", "noise_multiplier": Raw(noise_multiplier_raw),
          "max_grad_norm": 1.0, "sample_rate": 0.5, "steps": 4, "epsilon": 1.0, "delta": 1e-5}
    ref = obj["block"]["updates"][0]
    obj["block"]["updates"][0] = [*ref[:3], dp]
    return encode_with_raw(obj)


def test_out_of_range_dp_numbers_are_a_block_error_not_an_overflow():
    huge = 10**400
    bignum = head(6, 2) + head(2, 167) + huge.to_bytes(167, "big")
    for raw in (bignum, head(0, 2**64 - 1), head(1, 2**64 - 1)):
        with pytest.raises(BlockError):
            CommittedBlock.decode(_dp_block_bytes(raw))
    # Decoded by any other path, the parser of DP parameters says ValueError, not OverflowError.
    dp = {"accountant": "rdp", "noise_multiplier": huge, "max_grad_norm": 1.0,
          "sample_rate": 0.5, "steps": 4, "epsilon": 1.0, "delta": 1e-5}
    with pytest.raises(ValueError, match="must be a number"):
        DpReport.from_dict(dp, check=False)
    with pytest.raises(ValueError, match="steps"):
        DpReport.from_dict({**dp, "noise_multiplier": 1.0, "steps": 2**63}, check=False)


def test_a_sync_responder_serving_a_bad_dp_block_is_dropped_not_a_crash():
    raw = _dp_block_bytes(head(6, 2) + head(2, 167) + (10**400).to_bytes(167, "big"))
    session = SyncSession(ChainVerifier(CHAIN.genesis), ["a"])
    session.start()
    ask = session.on_response("a", HeadRequest(), HeadResponse(0, b"\x01" * 32))[0]
    actions = session.on_response("a", ask.request, BlocksResponse((raw,)))
    assert isinstance(actions[0], DropPeer) and actions[0].penalize


def test_a_megabyte_of_empty_arrays_is_refused_at_once():
    data = cbor2.dumps({"k": "update", "n": NET, "r": 1, "s": "s", "sig": b"\x00" * 64,
                        "p": [[]] * (MAX_ENVELOPE_BYTES - 200)}, canonical=True)
    assert len(data) <= MAX_ENVELOPE_BYTES
    start = time.perf_counter()
    with pytest.raises(EnvelopeError, match="too-long|too-many-items"):
        decode_envelope(data)
    assert time.perf_counter() - start < 0.5  # cbor2.loads took 1.2 s


def test_honest_blocks_and_models_decode_under_the_profile():
    chain = build_chain(2, seed=4)
    for committed in chain.blocks:
        assert CommittedBlock.decode(committed.encode()) == committed
        assert Block.decode(committed.block.encode()) == committed.block
    for raw in chain.models:
        assert decode_canonical(raw) is not None
