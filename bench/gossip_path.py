"""Delivered throughput and latency: our signed update path against bare py-libp2p gossipsub.

Two real hosts on loopback TCP (Noise, yamux), in one run, for payloads of 0.1, 1 and 8 MiB:

* bare: `pubsub.publish(topic, payload)` on a topic with no validator; delivered when the
  subscriber's iterator yields it. py-libp2p drops pubsub messages over 1 MiB without an error,
  so above that bare gossip delivers nothing (shown as "dropped").
* ours: what a trainer's update costs end to end. Up to the envelope limit: a signed envelope
  over gossip, admitted (CBOR shape, membership, Ed25519 signature, round) by the receiver.
  Above it: a signed envelope carrying the blob's SHA-256 and size, then a chunked fetch over
  `/cmfl/blob/1` and a hash check (gossip/transfer.py). Delivered when the receiver holds
  verified bytes.

    python bench/gossip_path.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import multiaddr  # noqa: E402
import trio  # noqa: E402
from libp2p.peer.peerinfo import info_from_p2p_addr  # noqa: E402

from gossip.envelope import MAX_ENVELOPE_BYTES, Envelope, decode_envelope  # noqa: E402
from gossip.peer_keys import Signer  # noqa: E402
from gossip.transfer import BlobRef, BlobServer, BlobStore, fetch_blob  # noqa: E402
from gossip.validation import EnvelopeAdmission  # noqa: E402
from p2p_node.host import running_host  # noqa: E402

MIB = 1024 * 1024
SIZES = (0.1, 1, 8)
NET = b"\x0b" * 32
DROP_WAIT = 5.0  # seconds without delivery after which a message counts as dropped


async def bench(repeats: int) -> list[dict]:
    sender, receiver = Signer(b"\x21" * 32), Signer(b"\x22" * 32)
    admission = EnvelopeAdmission(NET, frozenset({sender.peer_id, receiver.peer_id}))
    rows = []
    async with AsyncExitStack() as stack:
        a, a_pub, _ = await stack.enter_async_context(
            running_host(sender, ["/ip4/127.0.0.1/tcp/0"]))
        b, b_pub, _ = await stack.enter_async_context(
            running_host(receiver, ["/ip4/127.0.0.1/tcp/0"]))
        store = BlobStore()
        BlobServer(store).install(a)
        await b.connect(info_from_p2p_addr(multiaddr.Multiaddr(str(a.get_addrs()[0]))))
        b_pub.set_topic_validator("ours", lambda fwd, msg: admission.admit(msg.data).accepted,
                                  False)
        bare_sub, ours_sub = await b_pub.subscribe("bare"), await b_pub.subscribe("ours")
        await a_pub.subscribe("bare")
        await a_pub.subscribe("ours")
        while len(a_pub.peer_topics.get("ours", ())) < 1 or \
                len(a_pub.peer_topics.get("bare", ())) < 1:
            await trio.sleep(0.05)  # poll: py-libp2p has no event for remote subscriptions
        await trio.sleep(2)  # two heartbeats: the mesh is grafted

        async def receive_one(sub) -> bytes | None:
            with trio.move_on_after(DROP_WAIT):
                return (await sub.get()).data
            return None

        for mib in SIZES:
            payload = os.urandom(int(mib * MIB))
            for mode in ("bare", "ours"):
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    if mode == "bare":
                        async with trio.open_nursery() as n:
                            got: list = []
                            n.start_soon(_into, got, receive_one(bare_sub))
                            await a_pub.publish("bare", payload)
                        ok = got[0] == payload
                    else:
                        ok = await ours_once(a_pub, b, a.get_id(), store, sender, payload,
                                             lambda: receive_one(ours_sub))
                    if not ok:
                        times = []
                        break
                    times.append(time.perf_counter() - start)
                rows.append({"mib": mib, "mode": mode,
                             "latency": statistics.median(times) if times else None})
                print(_row(rows[-1]), flush=True)
    return rows


async def _into(out: list, coro) -> None:
    out.append(await coro)


async def ours_once(a_pub, b, provider, store, signer, payload, receive) -> bool:
    """Sign and send one update as a peer does; True when the receiver holds verified bytes."""
    inline = len(payload) + 2048 < MAX_ENVELOPE_BYTES
    body = {"update": payload} if inline else {"blob": store.put(payload).to_obj()}
    data = Envelope("update", NET, 0, signer.peer_id, body).signed_by(signer).encode()
    async with trio.open_nursery() as n:
        got: list = []
        n.start_soon(_into, got, receive())
        await a_pub.publish("ours", data)
    if got[0] is None:
        return False
    p = decode_envelope(got[0]).payload  # the receiver's validator already admitted it
    if inline:
        return p["update"] == payload
    ref = BlobRef.from_obj(p["blob"])
    return await fetch_blob(b, [provider], ref) == payload


def _row(r: dict) -> str:
    if r["latency"] is None:
        return f"{r['mib']:>5} MiB  {r['mode']:<5} dropped (nothing delivered in {DROP_WAIT:.0f}s)"
    return (f"{r['mib']:>5} MiB  {r['mode']:<5} latency {r['latency'] * 1000:8.1f} ms  "
            f"throughput {r['mib'] / r['latency']:8.1f} MiB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = trio.run(bench, args.repeats)
    print("\nsize      bare ms   ours ms   ours/bare latency   ours MiB/s")
    for mib in SIZES:
        bare, ours = (next(r["latency"] for r in rows if r["mib"] == mib and r["mode"] == m)
                      for m in ("bare", "ours"))
        ratio = f"{ours / bare:8.2f}x" if bare and ours else "   n/a (bare dropped)"
        print(f"{mib:>4} MiB  {_ms(bare)}  {_ms(ours)}  {ratio:>20}   "
              f"{(mib / ours) if ours else 0:8.1f}")


def _ms(v: float | None) -> str:
    return f"{v * 1000:8.1f}" if v else " dropped"


if __name__ == "__main__":
    main()
