"""The hostile peer of the network harness: one hostile host (tests.hostile.hostile_peer) aimed
at every honest peer at once, with multi-message frames and timed floods."""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable, Sequence

import multiaddr
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.pb import rpc_pb2

from tests.hostile.hostile_peer import MESHSUB, HostilePeer, hostile_peer, pb_varint


class Attacker(HostilePeer):
    """A HostilePeer with a raw pubsub stream to each of many targets."""

    def __init__(self, host, signer) -> None:
        super().__init__(host, signer)
        self.streams: dict[ID, object] = {}

    async def connect(self, addr: str, protocol: str = MESHSUB) -> ID:  # type: ignore[override]
        """Dial one more target; its peer ID."""
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        await self.host.connect(info)
        return info.peer_id

    async def send_raw(self, peer: ID, data: bytes) -> bool:
        """Write raw bytes on our pubsub stream to `peer`; False once it closed or reset it."""
        try:
            if peer not in self.streams:
                self.streams[peer] = await self.host.new_stream(peer, [MESHSUB])
            await self.streams[peer].write(data)
            return True
        except Exception:
            self.streams.pop(peer, None)
            return False

    def publish_frame(self, topic: str, datas: list[bytes]) -> bytes:
        """One framed RPC that subscribes to `topic` and publishes each of `datas` as its own
        message, signed by us with a fresh seqno."""
        rpc = rpc_pb2.RPC(subscriptions=[rpc_pb2.RPC.SubOpts(subscribe=True, topicid=topic)],
                          publish=[self.message(topic, d) for d in datas])
        raw = rpc.SerializeToString()
        return pb_varint(len(raw)) + raw

    async def flood(self, peers: list[ID],  # type: ignore[override]
                    frames: Sequence[bytes] | Callable[[int], bytes],
                    rate: float, seconds: float) -> int:
        """Send frames to every peer, `rate` frames a second each, for `seconds` (or until a
        callable `frames(i)` returns b""); the number of frames written."""
        sent = refused = 0
        deadline = trio.current_time() + seconds
        i = 0
        # Until every peer has refused us 20 frames in a row: a banned attacker stops.
        while trio.current_time() < deadline and peers and refused < 20:
            frame = frames(i) if callable(frames) else frames[i % len(frames)]
            if not frame:
                break
            i += 1
            accepted = 0
            for peer in list(peers):
                accepted += await self.send_raw(peer, frame)
            sent += accepted
            refused = 0 if accepted else refused + 1
            await trio.sleep(1.0 / rate)
        return sent


@asynccontextmanager
async def attacker(seed: bytes | None = None) -> AsyncIterator[Attacker]:
    """A running hostile host on loopback; `seed` (32 bytes) fixes its key."""
    async with hostile_peer(seed or os.urandom(32), kind=Attacker) as hp:
        yield hp  # type: ignore[misc]


class DialCount:
    """A loopback TCP address nobody should dial, and how often somebody did."""

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self.dials = 0


@asynccontextmanager
async def dial_counter() -> AsyncIterator[DialCount]:
    """A listener on loopback that counts the connections made to it while the block runs: the
    "victim" of a reflection attack."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    counter = DialCount(f"/ip4/127.0.0.1/tcp/{listeners[0].socket.getsockname()[1]}")

    async def count(stream) -> None:
        counter.dials += 1
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, count, listeners)
        yield counter
        nursery.cancel_scope.cancel()
