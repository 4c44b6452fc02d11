"""Hostile peers against a real guarded host on loopback: nothing they send ends it.

Each test runs one target (our running_host, with the node's admission check as validator and
the member-origin check) and hostile peers from tests/hostile/hostile_peer.py.
"""

from __future__ import annotations

import logging
import os
import random
import time
from contextlib import asynccontextmanager

import multiaddr
import pytest
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.pb import rpc_pb2

from gossip.envelope import Envelope
from gossip.peer_keys import Signer
from gossip.peer_scoring import GRAYLIST_THRESHOLD, report_verdict
from gossip.validation import EnvelopeAdmission
from p2p_node.host import running_host
from tests.hostile.attacker import dial_counter
from tests.hostile.hostile_peer import hostile_peer, pb_field_bytes, pb_field_varint, pb_varint
from tests.hostile.killers import killer_frames

TOPIC = "/cmfl/test/updates"
NET = b"\x07" * 32
LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
HONEST = [Signer(bytes([40 + i]) * 32) for i in range(8)]
MEMBERS = frozenset(s.peer_id for s in HONEST)
#: the libp2p paths that, reached, end the process: a service task failing
CRASH_MARKERS = ("exited with error", "Exceptions from Trio nursery")


class CrashLog(logging.Handler):
    """Collects log records that show a py-libp2p service task died."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.crashes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if any(m in text for m in CRASH_MARKERS):
            self.crashes.append(text[:300])


@pytest.fixture
def crash_log():
    handler = CrashLog()
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)


async def until(predicate, timeout: float) -> float:
    """Seconds until predicate() holds. Polls: these counters have no events."""
    start = trio.current_time()
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)
    return trio.current_time() - start


@asynccontextmanager
async def target():
    """A guarded host subscribed to TOPIC with the node's checks; yields (host, pubsub, router,
    received, address)."""
    admission = EnvelopeAdmission(NET, MEMBERS)
    async with running_host(HONEST[0], LOOPBACK) as (host, pubsub, router):
        def validate(forwarder, msg) -> bool:
            verdict = admission.admit(msg.data, origin=ID(msg.from_id).to_base58())
            report_verdict(router, forwarder, verdict)
            return verdict.accepted

        pubsub.origin_check = lambda topic, origin: (
            None if admission.origin_allowed(origin, False) else "not-member-origin")
        pubsub.set_topic_validator(TOPIC, validate, False)
        sub = await pubsub.subscribe(TOPIC)
        received: list[bytes] = []

        async def read():
            async for msg in sub:
                received.append(msg.data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            yield host, pubsub, router, received, f"{host.get_addrs()[0]}"
            nursery.cancel_scope.cancel()


async def still_serves(received: list[bytes], addr: str, value: int) -> None:
    """An honest member connects, publishes one envelope, and the target delivers it.

    A fresh member each time (`value`): py-libp2p may keep a closed pubsub stream to a peer
    that reconnects at once, a separate matter."""
    member = HONEST[1 + value % (len(HONEST) - 1)]
    async with running_host(member, LOOPBACK) as (host, pubsub, _):
        await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))
        await pubsub.subscribe(TOPIC)
        good = Envelope("block", NET, 0, member.peer_id, {"v": value}).signed_by(member)
        await until(lambda: len(pubsub.peer_topics.get(TOPIC, ())) > 0, 10)
        await pubsub.publish(TOPIC, good.encode())
        await until(lambda: good.encode() in received, 10)


def test_killer_frames_are_contained_penalised_and_the_repeat_offender_banned(crash_log):
    async def main():
        with trio.fail_after(30):
            async with target() as (host, pubsub, router, received, addr):
                frames = {}
                for n, name in enumerate(["push_msg: undecodable key",
                                          "read loop: undecodable publish field",
                                          "read loop: garbage frame",
                                          "read loop: wrong wire type",
                                          "read loop: topic not UTF-8",
                                          "handle_rpc: junk control"]):
                    async with hostile_peer(bytes([0x70 + n]) * 32) as hp:
                        await hp.connect(addr)
                        await hp.subscribe(TOPIC)
                        frames = killer_frames(hp, TOPIC)
                        before = sum(pubsub.contained.values())
                        await hp.send_rpc_frame(frames[name])
                        if "wire type" not in name and "UTF-8" not in name and \
                                "control" not in name:  # those parse: nothing to penalise
                            await until(lambda: sum(pubsub.contained.values()) > before, 5)
                            assert router.peer_score(ID.from_base58(hp.peer_id)) < 0, name
                        assert pubsub.manager.is_running, name
                await still_serves(received, addr, 1)

                # A peer that keeps sending killers passes the graylist: banned, disconnected,
                # and its next connection is closed right after the handshake.
                async with hostile_peer(b"\x7f" * 32) as hp:
                    bad = ID.from_base58(hp.peer_id)
                    await hp.connect(addr)
                    frames = killer_frames(hp, TOPIC)
                    refused = pubsub.contained["refused-connection"]
                    while router.peer_score(bad) >= GRAYLIST_THRESHOLD:
                        try:
                            await hp.send_rpc_frame(frames["read loop: garbage frame"])
                        except Exception:  # the stream was reset under us: open another
                            await hp.connect(addr)
                        await trio.sleep(0.05)
                    await hp.wait_disconnected(5)
                    assert pubsub.refuses(bad) and pubsub.contained["banned"] >= 1
                    delivered = len(received)
                    for _ in range(20):  # its new connections are closed after the handshake
                        if pubsub.contained["refused-connection"] > refused:
                            break
                        try:
                            await hp.connect(addr)
                            await hp.publish_raw(TOPIC, b"let me in")
                        except Exception:
                            pass
                        await trio.sleep(0.1)
                    assert pubsub.contained["refused-connection"] > refused
                    await hp.wait_disconnected(5)
                    assert len(received) == delivered
                await still_serves(received, addr, 2)
                assert pubsub.manager.is_running
        assert not crash_log.crashes, crash_log.crashes

    trio.run(main)


def test_non_member_flood_is_dropped_before_any_signature_check_and_the_flooder_banned(
        crash_log):
    async def main():
        with trio.fail_after(30):
            async with target() as (host, pubsub, router, received, addr):
                async with hostile_peer(b"\x66" * 32) as hp:
                    await hp.connect(addr)
                    await hp.subscribe(TOPIC)
                    await until(lambda: TOPIC in pubsub.peer_topics, 5)
                    envelope = Envelope("update", NET, 0, hp.peer_id, {"x": 1}).signed_by(
                        hp.signer).encode()
                    checks, calls = pubsub.signature_checks, pubsub.validator_calls
                    start = trio.current_time()
                    sent = await hp.flood(lambda i: hp.message_frame(TOPIC, envelope),
                                          rate=600, count=6000)
                    await hp.wait_disconnected(10)
                    took = trio.current_time() - start
                # Every flood message was dropped on its origin: no signature check, no CBOR.
                assert pubsub.signature_checks == checks and pubsub.validator_calls == calls
                assert pubsub.contained["not-member-publisher"] >= 1
                assert took < 5, f"flooder disconnected after {took:.1f}s"
                assert sent < 6000, "the flooder was never cut off"

                # Forged signatures from a member's origin: each costs one signature check, and
                # the forwarder is banned after a few.
                async with hostile_peer(b"\x67" * 32) as hp:
                    await hp.connect(addr)
                    member = ID.from_base58(HONEST[1].peer_id).to_bytes()
                    checks = pubsub.signature_checks
                    await hp.flood(lambda i: hp.message_frame(TOPIC, b"x" * 100, from_id=member,
                                                              signature=b"\x01" * 64),
                                   rate=600, count=3000)
                    await hp.wait_disconnected(10)
                    assert pubsub.signature_checks - checks <= 10
                await still_serves(received, addr, 3)
        assert not crash_log.crashes, crash_log.crashes

    trio.run(main)


# structure-aware fuzzing -----------------------------------------------------------------------
def _random_message(rng: random.Random, hp, topic: str) -> bytes:
    """A Message, valid or not: fields of the right and wrong types, unknown fields."""
    parts = []
    choices = [
        lambda: pb_field_bytes(1, rng.choice([ID.from_base58(hp.peer_id).to_bytes(),
                                              rng.randbytes(rng.randint(0, 40))])),
        lambda: pb_field_bytes(2, rng.randbytes(rng.randint(0, 300))),
        lambda: pb_field_bytes(3, rng.randbytes(rng.choice([0, 8, 20]))),
        lambda: pb_field_bytes(4, rng.choice([topic.encode(), b"\xff\xfe", rng.randbytes(5)])),
        lambda: pb_field_bytes(5, rng.randbytes(rng.choice([0, 64, 63]))),
        lambda: pb_field_bytes(6, rng.choice([b"", rng.randbytes(36),
                                              b"\x08\x01\x12\x20" + rng.randbytes(32)])),
        lambda: pb_field_varint(rng.randint(1, 40), rng.getrandbits(64)),
    ]
    for _ in range(rng.randint(0, 8)):
        parts.append(rng.choice(choices)())
    if rng.random() < 0.3:  # a well-formed, signed message now and then
        return hp.message(topic, rng.randbytes(rng.randint(0, 64))).SerializeToString()
    return b"".join(parts)


def random_rpc_frame(rng: random.Random, hp, topic: str) -> bytes:
    """One RPC frame: random structure, then maybe byte-level mutation."""
    fields = []
    for _ in range(rng.randint(0, 5)):
        kind = rng.randrange(6)
        if kind == 0:
            fields.append(pb_field_bytes(2, _random_message(rng, hp, topic)))
        elif kind == 1:
            fields.append(pb_field_bytes(1, pb_field_varint(1, rng.randint(0, 2)) +
                                         pb_field_bytes(2, rng.choice([topic.encode(),
                                                                       rng.randbytes(4)]))))
        elif kind == 2:
            control = rpc_pb2.ControlMessage(
                ihave=[rpc_pb2.ControlIHave(topicID=topic, messageIDs=[rng.randbytes(8)])],
                iwant=[rpc_pb2.ControlIWant(messageIDs=[rng.randbytes(rng.randint(0, 50))])],
                graft=[rpc_pb2.ControlGraft(topicID=rng.choice([topic, "x"]))],
                prune=[rpc_pb2.ControlPrune(topicID=topic, backoff=rng.getrandbits(64),
                                            peers=[rpc_pb2.PeerInfo(
                                                peerID=rng.randbytes(38),
                                                signedPeerRecord=rng.randbytes(20))])],
                idontwant=[rpc_pb2.ControlIDontWant(messageIDs=[rng.randbytes(10)])])
            blob = control.SerializeToString()
            fields.append(pb_field_bytes(3, blob[:rng.randint(0, len(blob))]
                                         if rng.random() < 0.3 else blob))
        elif kind == 3:
            fields.append(pb_field_bytes(4, rng.randbytes(rng.randint(0, 80))))
        elif kind == 4:
            fields.append(pb_field_varint(rng.choice([1, 2, 3, 4, 99, 6492434]),
                                          rng.getrandbits(32)))
        else:
            fields.append(pb_varint(rng.getrandbits(16)) + rng.randbytes(rng.randint(0, 10)))
    frame = bytearray(b"".join(fields))
    if frame and rng.random() < 0.4:
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(frame))
            frame[i] = rng.getrandbits(8)
    return bytes(frame)


#: How long one fuzzing identity may take (connect, frames, close) before it is abandoned.
IDENTITY_SECONDS = 30.0


async def fuzz_campaign(seed: int, frames: int, per_identity: int = 40,
                        parallel: int = 3) -> dict:
    """Send `frames` fuzzed frames from fresh hostile identities (`parallel` at a time: each is
    banned within a few bad frames); return what the target did."""
    rng = random.Random(seed)
    counts = {"frames": 0, "identities": 0, "stuck-identities": 0}

    async def one_identity(addr: str, key: bytes, case_rng: random.Random) -> None:
        # Bounded: a write to a stream the target stopped reading (it reset or banned us) can
        # block this side forever; the target's liveness is what still_serves checks.
        with trio.move_on_after(IDENTITY_SECONDS) as scope:
            await _one_identity(addr, key, case_rng)
        if scope.cancelled_caught:
            counts["stuck-identities"] += 1

    async def _one_identity(addr: str, key: bytes, case_rng: random.Random) -> None:
        async with hostile_peer(key) as hp:
            try:
                await hp.connect(addr)
                await hp.subscribe(TOPIC)
            except Exception:  # the target refused this identity (a handshake under load, a
                return         # ban): the attacker moves on to a fresh one
            for _ in range(per_identity):
                if not hp.connected():
                    break
                try:
                    await hp.send_rpc_frame(random_rpc_frame(case_rng, hp, TOPIC))
                except Exception:  # reset: reopen the stream, as an attacker would
                    try:
                        await hp.connect(addr)
                    except Exception:
                        break
                counts["frames"] += 1
                await trio.sleep(0)

    async with target() as (host, pubsub, router, received, addr):
        while counts["frames"] < frames:
            async with trio.open_nursery() as nursery:
                for _ in range(parallel):
                    counts["identities"] += 1
                    nursery.start_soon(one_identity, addr, rng.randbytes(32),
                                       random.Random(rng.getrandbits(64)))
            assert pubsub.manager.is_running, f"pubsub died after {counts['frames']} frames"
        await still_serves(received, addr, seed)
        return {**counts, "contained": dict(pubsub.contained)}


# slow tier: the default tier must stay under 10 minutes on a loaded CI machine (25-50 s here)
@pytest.mark.slow
def test_fuzzed_rpc_frames_never_end_the_host(crash_log):
    async def main():
        with trio.fail_after(60):
            return await fuzz_campaign(seed=12, frames=2000)

    result = trio.run(main)
    assert result["frames"] >= 2000
    assert not crash_log.crashes, crash_log.crashes
    print(result)


@pytest.mark.slow
def test_fuzz_campaign_twenty_minutes(crash_log):
    minutes = float(os.environ.get("HOSTILE_FUZZ_MINUTES", "20"))
    end = time.monotonic() + minutes * 60
    total, stuck, seed = 0, 0, 1000
    while time.monotonic() < end:
        result = trio.run(fuzz_campaign, seed, 2000)
        total += result["frames"]
        stuck += result["stuck-identities"]
        seed += 1
        assert not crash_log.crashes, crash_log.crashes
        print(f"fuzz campaign seed {seed - 1}: {result['frames']} frames from "
              f"{result['identities']} identities ({result['stuck-identities']} abandoned), "
              f"target alive and delivering", flush=True)
    print(f"slow fuzz campaign: {total} frames, 0 deaths, {stuck} identities abandoned")


def test_no_peer_dials_an_address_because_its_peerstore_holds_it():
    """py-libp2p's auto-connector would dial any peer in the peerstore (which identify fills
    with whatever addresses a connected peer claims); ours never does."""
    async def main() -> int:
        async with dial_counter() as victim:
            async with running_host(Signer(b"\x51" * 32), ["/ip4/127.0.0.1/tcp/0"]) as (
                    host, _pubsub, _router):
                claimed = ID.from_base58(Signer(b"\x52" * 32).peer_id)
                host.get_peerstore().add_addrs(claimed, [multiaddr.Multiaddr(victim.addr)], 3600)
                await host.get_network().auto_connector.maybe_connect()
                await trio.sleep(1)
            return victim.dials

    assert trio.run(main) == 0
