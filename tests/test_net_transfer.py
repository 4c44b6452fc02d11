"""Large blobs over `/cmfl/blob/1` between real libp2p hosts on loopback TCP."""

import hashlib
import os

import multiaddr
import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr

from gossip.peer_keys import Signer
from gossip.transfer import (MAX_CHUNK_BYTES, PROTOCOL_ID, BlobRef, BlobServer, BlobStore,
                             TransferError, encode_chunk_header, frame, fetch_blob)
from p2p_node.host import running_host

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


async def connect(a, b) -> None:
    await a.connect(info_from_p2p_addr(multiaddr.Multiaddr(str(b.get_addrs()[0]))))


def test_ten_mib_blob_moves_in_checked_chunks_between_real_hosts():
    blob = os.urandom(10 * 1024 * 1024 + 12345)  # not a multiple of the chunk size
    store = BlobStore()
    ref = store.put(blob)
    server = BlobServer(store)

    async def main():
        with trio.fail_after(60):
            async with running_host(Signer(b"\x01" * 32), LOOPBACK) as (a, _, _), \
                    running_host(Signer(b"\x02" * 32), LOOPBACK) as (b, _, _):
                server.install(a)
                await connect(b, a)
                got = await fetch_blob(b, [a.get_id()], ref)
                assert hashlib.sha256(got).digest() == ref.digest and len(got) == len(blob)
                # Missing blob: a clean refusal, not a hang or a crash.
                with pytest.raises(TransferError) as err:
                    await fetch_blob(b, [a.get_id()], BlobRef(b"\x00" * 32, 10))
                assert err.value.code == "unavailable" and "not-found" in str(err.value)
                # Over our own limit: refused before any byte moves.
                with pytest.raises(TransferError) as err:
                    await fetch_blob(b, [a.get_id()], ref, max_bytes=1024)
                assert err.value.code == "oversize"

    trio.run(main)
    assert server.served_bytes == len(blob)


def test_lying_provider_is_reported_and_an_honest_one_used():
    blob = os.urandom(MAX_CHUNK_BYTES + 1000)
    ref = BlobRef.of(blob)
    honest = BlobServer(BlobStore())
    honest.store.put(blob)
    blamed: list = []

    async def lie(stream) -> None:
        # Answers every request with the right length of wrong bytes.
        head = await stream.read(4)
        n = int.from_bytes(head, "big")
        import cbor2
        req = cbor2.loads(await stream.read(n))
        await stream.write(frame(encode_chunk_header(req["n"])) + b"\x00" * req["n"])
        await stream.close()

    async def main():
        with trio.fail_after(60):
            async with running_host(Signer(b"\x03" * 32), LOOPBACK) as (liar, _, _), \
                    running_host(Signer(b"\x04" * 32), LOOPBACK) as (good, _, _), \
                    running_host(Signer(b"\x05" * 32), LOOPBACK) as (me, _, _):
                liar.set_stream_handler(TProtocol(PROTOCOL_ID), lie)
                honest.install(good)
                await connect(me, liar)
                await connect(me, good)
                got = await fetch_blob(me, [liar.get_id(), good.get_id()], ref,
                                       on_bad_provider=lambda p, why: blamed.append((p, why)))
                assert got == blob
                return liar.get_id()

    liar_id = trio.run(main)
    assert blamed == [(liar_id, "blob-hash-mismatch")]
