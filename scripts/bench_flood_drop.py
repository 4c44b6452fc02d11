"""CPU per dropped flood message: py-libp2p 0.8.1's push_msg path against ours.

    PYTHONPATH=. .venv/bin/python scripts/bench_flood_drop.py

A non-member floods validly signed envelopes. Upstream, each message is signature-checked, our
validator decodes the CBOR and refuses it (not a member), and py-libp2p formats the whole
message into a ValidationError and hex-encodes its data for a debug line. Ours drops it on its
origin after parsing the frame. Both are timed in-process on the same frames (no network).
"""

from __future__ import annotations

import logging
import time

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX

from gossip.envelope import Envelope
from gossip.guarded_pubsub import GuardedPubsub
from gossip.peer_keys import Signer
from gossip.peer_scoring import ScoredGossipSub
from gossip.validation import EnvelopeAdmission
from p2p_node.host import build_transport_host

TOPIC = "/cmfl/bench/updates"
NET = b"\x07" * 32


def frames(attacker: Signer, host, size: int, count: int) -> list[bytes]:
    env = Envelope("update", NET, 0, attacker.peer_id, {"x": b"\x00" * size}).signed_by(
        attacker).encode()
    out = []
    for i in range(count):
        msg = rpc_pb2.Message(data=env, topicIDs=[TOPIC], seqno=i.to_bytes(8, "big"),
                              from_id=ID.from_base58(attacker.peer_id).to_bytes())
        msg.signature = host.get_private_key().sign(
            PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
        out.append(rpc_pb2.RPC(publish=[msg]).SerializeToString())
    return out


async def bench(size: int, count: int) -> tuple[float, float]:
    attacker = Signer(b"\x66" * 32)
    attacker_host = build_transport_host(attacker)
    batch = frames(attacker, attacker_host, size, count)
    admission = EnvelopeAdmission(NET, frozenset({Signer(b"\x01" * 32).peer_id}))
    forwarder = ID.from_base58(attacker.peer_id)

    def validator(peer, msg) -> bool:
        return admission.admit(msg.data).accepted

    upstream = Pubsub(build_transport_host(Signer(b"\x01" * 32)),
                      GossipSub(protocols=[PROTOCOL_ID_V11], degree=6, degree_low=4,
                                degree_high=12))
    upstream.subscribed_topics_receive[TOPIC] = None  # subscribed, for _is_subscribed_to_msg
    upstream.set_topic_validator(TOPIC, validator, False)
    start = time.process_time()
    for frame in batch:
        rpc = rpc_pb2.RPC()
        rpc.ParseFromString(frame)
        for msg in rpc.publish:
            await upstream.push_msg(forwarder, msg)
    before = (time.process_time() - start) / count

    guarded = GuardedPubsub(build_transport_host(Signer(b"\x02" * 32)),
                            ScoredGossipSub(protocols=[PROTOCOL_ID_V11], degree=6, degree_low=4,
                                            degree_high=12))
    guarded.subscribed_topics_receive[TOPIC] = None
    guarded.set_topic_validator(TOPIC, validator, False)
    guarded.origin_check = lambda topic, origin: (
        None if admission.origin_allowed(origin, False) else "not-member-origin")
    guarded._note = lambda *args, **kw: None  # the drop itself, not its (throttled) log line
    start = time.process_time()
    for frame in batch:
        guarded.budgets.charge_bytes("x", len(frame), 0.0)
        rpc = rpc_pb2.RPC()
        rpc.ParseFromString(frame)
        for msg in rpc.publish:
            assert guarded._precheck(forwarder, msg) is not None
    after = (time.process_time() - start) / count
    return before, after


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    for size, count in ((1024, 2000), (1000 * 1024, 40)):
        before, after = trio.run(bench, size, count)
        print(f"{size // 1024:5d} KiB messages: upstream {before * 1e6:9.1f} us/message, "
              f"guarded {after * 1e6:7.1f} us/message ({before / after:.0f}x less)")


if __name__ == "__main__":
    main()
