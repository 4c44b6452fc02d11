"""The message cache that forgets past rounds (gossip/round_gossip.py), without a network."""

import time

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2

from gossip.peer_keys import Signer
from gossip.round_gossip import RoundMessageCache, RoundScopedGossipSub
from p2p_node.host import HEARTBEAT_SECONDS

TOPIC = "/cmfl/test/committee"
FROM = ID.from_base58(Signer(b"\x01" * 32).peer_id).to_bytes()


def message(seq: int) -> rpc_pb2.Message:
    return rpc_pb2.Message(from_id=FROM, seqno=seq.to_bytes(8, "big"), data=b"x",
                           topicIDs=[TOPIC])


def mid(msg: rpc_pb2.Message) -> bytes:
    return msg.from_id + msg.seqno


def test_messages_of_a_past_round_leave_the_window_and_iwant_answers():
    cache = RoundMessageCache(3, 5)
    cache.current_round = 4
    kinds = {1: ("prepare", 4), 2: ("block", 3), 3: ("block", 4), 4: ("evidence", 0),
             5: ("update", 4)}
    msgs = {seq: message(seq) for seq in (*kinds, 6)}  # 6: never noted (no validator)
    for seq, msg in msgs.items():
        if seq in kinds:
            cache.note(mid(msg), *kinds[seq])
        cache.put(msg)
    assert set(cache.window(TOPIC)) == {mid(m) for m in msgs.values()}

    cache.current_round = 5  # the block of 4 opened round 5; the rest of round 4 is over
    kept = {mid(msgs[s]) for s in (3, 4, 6)}
    assert set(cache.window(TOPIC)) == kept
    assert {m for m in map(mid, msgs.values()) if cache.get(m) is not None} == kept

    for _ in range(5):  # the history shifts out; their round tags go with them
        cache.shift()
    assert cache.window(TOPIC) == [] and cache._rounds == {}


def test_a_note_never_put_is_dropped_after_two_shifts():
    cache = RoundMessageCache(3, 5)
    cache.note(b"lost", "prepare", 0)
    cache.shift()
    assert cache._noted_before
    cache.shift()
    assert not cache._noted and not cache._noted_before


def test_queued_messages_for_a_late_subscriber_are_flushed_only_while_current():
    router = RoundScopedGossipSub(protocols=[], degree=6, degree_low=4, degree_high=12,
                                  heartbeat_interval=HEARTBEAT_SECONDS)
    peer = ID.from_base58(Signer(b"\x02" * 32).peer_id)
    old, new = message(1), message(2)
    router.note_admitted(old, "commit", 7)
    router.note_admitted(new, "commit", 8)
    for msg in (old, new):
        router.mcache.put(msg)
        router._pending_messages[peer].append((time.time(), rpc_pb2.RPC(publish=[msg])))
    router.enter_round(8)
    trio.run(router.flush_pending_messages, peer)  # no pubsub attached: only filters
    assert [rpc.publish[0].seqno for _, rpc in router._pending_messages[peer]] == [new.seqno]
