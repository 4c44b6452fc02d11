"""A hostile libp2p peer for the hostile-network tests: a bare py-libp2p host (TCP, Noise,
yamux, like ours) with no pubsub router of its own, so it can write anything on a pubsub stream:
garbage frames, hand-built RPCs, and floods of well-signed messages at a chosen rate.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable, Sequence

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from gossip.peer_keys import Signer
from tests.hostile.payloads import framed


class Attacker:
    """One hostile host. `signer` is its identity (a member's key makes it a member attacker)."""

    def __init__(self, host, key_pair, signer: Signer) -> None:
        self.host = host
        self.key_pair = key_pair
        self.signer = signer
        self._seqno = int.from_bytes(os.urandom(4), "big") << 32
        self.streams: dict[ID, object] = {}

    @property
    def peer_id(self) -> str:
        return self.signer.peer_id

    async def connect(self, addr: str) -> ID:
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        await self.host.connect(info)
        return info.peer_id

    async def pubsub_stream(self, peer: ID):
        """Our own /meshsub/1.1.0 stream to `peer` (opened once, reused)."""
        if peer not in self.streams:
            self.streams[peer] = await self.host.new_stream(peer, [PROTOCOL_ID_V11])
        return self.streams[peer]

    async def send_raw(self, peer: ID, data: bytes) -> bool:
        """Write raw bytes on our pubsub stream; False once the peer has closed or reset it."""
        try:
            stream = await self.pubsub_stream(peer)
            await stream.write(data)
            return True
        except Exception:
            self.streams.pop(peer, None)
            return False

    def message(self, topic: str, data: bytes) -> rpc_pb2.Message:
        """A pubsub message with our origin, a fresh seqno and a valid libp2p signature."""
        self._seqno += 1
        msg = rpc_pb2.Message(data=data, topicIDs=[topic],
                              from_id=ID.from_pubkey(self.key_pair.public_key).to_bytes(),
                              seqno=self._seqno.to_bytes(8, "big"))
        msg.signature = self.key_pair.private_key.sign(
            PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
        msg.key = self.key_pair.public_key.serialize()
        return msg

    def publish_frame(self, topic: str, datas: list[bytes]) -> bytes:
        """One framed RPC publishing each of `datas` as its own signed message on `topic`."""
        rpc = rpc_pb2.RPC(subscriptions=[rpc_pb2.RPC.SubOpts(subscribe=True, topicid=topic)],
                          publish=[self.message(topic, d) for d in datas])
        return framed(rpc.SerializeToString())

    async def flood(self, peers: list[ID], frames: Sequence[bytes] | Callable[[int], bytes],
                    rate: float, seconds: float) -> int:
        """Send frames round-robin to every peer, `rate` frames a second each, for `seconds`
        (or until a callable `frames(i)` returns b""); the number of frames written."""
        sent = 0
        interval = 1.0 / rate
        deadline = trio.current_time() + seconds
        i = 0
        while trio.current_time() < deadline and peers:
            frame = frames(i) if callable(frames) else frames[i % len(frames)]
            if not frame:
                break
            i += 1
            for peer in list(peers):
                if await self.send_raw(peer, frame):
                    sent += 1
            await trio.sleep(interval)
        return sent


async def _discard(stream) -> None:
    """Answer honest peers' pubsub streams to us (so their dials succeed) and ignore them."""
    try:
        while await stream.read(65536):
            pass
    except Exception:
        pass


@asynccontextmanager
async def attacker(seed: bytes | None = None) -> AsyncIterator[Attacker]:
    """A running hostile host on loopback; `seed` (32 bytes) fixes its key."""
    signer = Signer(seed or os.urandom(32))
    key_pair = create_new_key_pair(signer.seed)
    noise = NoiseTransport(key_pair, noise_privkey=create_new_x25519_key_pair().private_key)
    host = new_host(key_pair=key_pair, sec_opt={NOISE_PROTOCOL_ID: noise},
                    muxer_preference="YAMUX")
    host.set_stream_handler(PROTOCOL_ID_V11, _discard)
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        yield Attacker(host, key_pair, signer)
