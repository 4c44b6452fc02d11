"""A hostile py-libp2p peer: our transport (TCP, Noise, yamux), no pubsub, raw gossipsub frames.

It speaks to a target exactly as an outside attacker would: it connects, opens a
`/meshsub/1.1.0` stream and writes whatever bytes it likes, framed or not. Nothing it sends is
checked on its side. Usage::

    async with hostile_peer(b"\\x66" * 32) as hp:
        await hp.connect(target_multiaddr_with_p2p)        # "/ip4/.../tcp/N/p2p/Qm..."
        await hp.subscribe(topic)                           # SubOpts RPC
        await hp.graft(topic)                               # control GRAFT
        await hp.send_rpc_frame(b"\\x12\\x02\\x0a\\xff")   # any bytes, varint-framed
        await hp.publish_raw(topic, data)                   # signed by hp, from_id = hp
        await hp.publish_raw(topic, data, from_id=b"..", signature=b"..", key=b"..")
        sent = await hp.flood(lambda i: hp.message_frame(topic, b"%d" % i), rate=600, count=3000)
        await hp.wait_disconnected(10)                      # the target closed on us

Frame builders (no I/O): `message(...)` returns an `rpc_pb2.Message`, `message_frame(...)` the
serialised RPC carrying it, and `pb_varint`, `pb_field_bytes`, `pb_field_varint` build
protobuf by hand (wrong types, unknown fields, invalid UTF-8, bad lengths).
"""

from __future__ import annotations

import itertools
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

import multiaddr
import trio
from libp2p.abc import INetStream
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX

from gossip.peer_keys import Signer
from p2p_node.host import build_transport_host

MESHSUB = "/meshsub/1.1.0"


def pb_varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pb_field_bytes(number: int, value: bytes) -> bytes:
    """A length-delimited field (wire type 2) with any bytes: strings need not be UTF-8."""
    return pb_varint(number << 3 | 2) + pb_varint(len(value)) + value


def pb_field_varint(number: int, value: int) -> bytes:
    """A varint field (wire type 0): put one where a message is expected for a wrong type."""
    return pb_varint(number << 3) + pb_varint(value)


class HostilePeer:
    """One hostile host with at most one target and one raw pubsub stream to it."""

    def __init__(self, host, signer: Signer) -> None:
        self.host = host
        self.signer = signer
        self.peer_id = signer.peer_id
        self.target: ID | None = None
        self.stream: INetStream | None = None
        self._seqno = itertools.count(1)
        #: bytes the target wrote on its own pubsub streams to us (we read and drop them)
        self.received_bytes = 0

    async def _drain(self, stream: INetStream) -> None:
        # Accept the target's own pubsub stream, so it registers us as a pubsub peer (and
        # grafts us, forwards to us) as it would any honest peer.
        try:
            while chunk := await stream.read(65536):
                self.received_bytes += len(chunk)
        except Exception:
            pass

    async def connect(self, addr: str, protocol: str = MESHSUB) -> None:
        """Dial `addr` (with /p2p/ID) and open a raw pubsub stream on `protocol`."""
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        network = self.host.get_network()
        if self.target == info.peer_id and not self.connected():
            # The target closed on us: forget the dead connection and py-libp2p's 60 s
            # "failed dial" cache, so this really dials again.
            await network.close_peer(info.peer_id)
            cache = getattr(network, "_negative_peer_cache", None)
            if cache is not None:
                cache.evict(str(info.peer_id))
        await self.host.connect(info)
        self.target = info.peer_id
        self.stream = await self.host.new_stream(info.peer_id, [protocol])

    # what goes on the wire -----------------------------------------------------------------
    async def send_bytes(self, raw: bytes) -> None:
        """Write `raw` to the pubsub stream as is (no length prefix)."""
        assert self.stream is not None, "connect() first"
        await self.stream.write(raw)

    async def send_rpc_frame(self, raw: bytes) -> None:
        """Write `raw` with a varint length prefix: one pubsub RPC frame, valid or not."""
        await self.send_bytes(pb_varint(len(raw)) + raw)

    async def send_rpc(self, rpc: rpc_pb2.RPC) -> None:
        await self.send_rpc_frame(rpc.SerializeToString())

    async def subscribe(self, topic: str, subscribe: bool = True) -> None:
        await self.send_rpc(rpc_pb2.RPC(subscriptions=[
            rpc_pb2.RPC.SubOpts(subscribe=subscribe, topicid=topic)]))

    async def graft(self, topic: str) -> None:
        await self.send_rpc(rpc_pb2.RPC(control=rpc_pb2.ControlMessage(
            graft=[rpc_pb2.ControlGraft(topicID=topic)])))

    def message(self, topic: str, data: bytes, *, from_id: bytes | None = None,
                seqno: bytes | None = None, signature: bytes | None = None,
                key: bytes | None = None, signed: bool = True) -> rpc_pb2.Message:
        """A pubsub Message; by default from us, with a fresh seqno and our valid signature.

        Pass `from_id`, `seqno`, `signature` or `key` to forge any of them (a given signature is
        used as is; `signed=False` leaves it empty).
        """
        msg = rpc_pb2.Message(
            data=data, topicIDs=[topic],
            from_id=from_id if from_id is not None else ID.from_base58(self.peer_id).to_bytes(),
            seqno=seqno if seqno is not None else next(self._seqno).to_bytes(8, "big"))
        if signature is not None:
            msg.signature = signature
        elif signed:
            msg.signature = self.host.get_private_key().sign(
                PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
        if key is not None:
            msg.key = key
        return msg

    def message_frame(self, topic: str, data: bytes, **forge) -> bytes:
        """The serialised RPC publishing one `message(topic, data, **forge)` (not framed)."""
        return rpc_pb2.RPC(publish=[self.message(topic, data, **forge)]).SerializeToString()

    async def publish_raw(self, topic: str, data: bytes, **forge) -> None:
        """Publish `data` on `topic` in one RPC (see `message` for what can be forged)."""
        await self.send_rpc_frame(self.message_frame(topic, data, **forge))

    async def flood(self, frame: Callable[[int], bytes], rate: float, count: int) -> int:
        """Send `count` frames `frame(i)` at about `rate` per second; returns how many were
        written before the target closed the stream (writes stop at the first failure)."""
        start = trio.current_time()
        for i in range(count):
            try:
                await self.send_rpc_frame(frame(i))
            except Exception:
                return i
            ahead = start + (i + 1) / rate - trio.current_time()
            if ahead > 0:
                await trio.sleep(ahead)
            elif i % 64 == 0:
                await trio.sleep(0)
        return count

    # what the target did to us ---------------------------------------------------------------
    def connected(self) -> bool:
        """True while we hold an open connection to the target."""
        if self.target is None:
            return False
        conns = self.host.get_network().get_connections(self.target)
        return any(not getattr(getattr(c, "muxed_conn", None), "is_closed", False)
                   for c in conns)

    async def wait_disconnected(self, timeout: float) -> float:
        """Seconds until the target has closed our connection; trio.TooSlowError if it did not.

        Polls: py-libp2p's disconnect notifee is not an event we can wait on here.
        """
        start = trio.current_time()
        with trio.fail_after(timeout):
            while self.connected():
                await trio.sleep(0.05)
        return trio.current_time() - start


@asynccontextmanager
async def hostile_peer(key_seed: bytes, listen: str = "/ip4/127.0.0.1/tcp/0",
                       kind: type[HostilePeer] | None = None) -> AsyncIterator[HostilePeer]:
    """Run one hostile host (Ed25519 key from the 32-byte `key_seed`) for the block's duration;
    `kind` is a HostilePeer subclass to run instead (tests.hostile.attacker.Attacker)."""
    signer = Signer(key_seed)
    host = build_transport_host(signer)
    peer = (kind or HostilePeer)(host, signer)
    host.set_stream_handler(MESHSUB, peer._drain)
    async with host.run([multiaddr.Multiaddr(listen)]):
        yield peer
