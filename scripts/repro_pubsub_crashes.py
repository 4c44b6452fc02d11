"""Reproduce the py-libp2p 0.8.1 pubsub crashes: one hostile frame ends an unpatched peer.

    PYTHONPATH=. .venv/bin/python scripts/repro_pubsub_crashes.py            # upstream Pubsub
    PYTHONPATH=. .venv/bin/python scripts/repro_pubsub_crashes.py --guarded  # ours

For each frame of tests/hostile/killers.py it starts a fresh target (a host with Pubsub and
gossipsub, subscribed to one topic, a validator that accepts everything), sends the frame from a
hostile peer and reports whether the target's services died within 3 s. Each case runs in its
own trio.run, so one death does not hide the next.
"""

from __future__ import annotations

import argparse
import logging
import sys

import multiaddr
import trio
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from gossip.peer_keys import Signer
from p2p_node.host import build_transport_host, running_host
from tests.hostile.hostile_peer import hostile_peer
from tests.hostile.killers import killer_frames

TOPIC = "/cmfl/repro/updates"


async def _attack(host, pubsub, name: str) -> str:
    await pubsub.subscribe(TOPIC)
    pubsub.set_topic_validator(TOPIC, lambda peer, msg: True, False)
    addr = f"{host.get_addrs()[0]}"
    async with hostile_peer(b"\x66" * 32) as hp:
        await hp.connect(addr)
        await hp.subscribe(TOPIC)
        await hp.send_rpc_frame(killer_frames(hp, TOPIC)[name])
        await trio.sleep(3)
        return "survived" if pubsub.manager.is_running else "pubsub service DEAD"


async def _case(name: str, guarded: bool) -> str:
    try:
        if guarded:
            async with running_host(Signer(b"\x01" * 32), ["/ip4/127.0.0.1/tcp/0"]) as (
                    host, pubsub, _):
                return await _attack(host, pubsub, name)
        host = build_transport_host(Signer(b"\x01" * 32))
        router = GossipSub(protocols=[PROTOCOL_ID_V11], degree=6, degree_low=4, degree_high=12)
        pubsub = Pubsub(host, router)
        async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            async with background_trio_service(pubsub), background_trio_service(router):
                await pubsub.wait_until_ready()
                return await _attack(host, pubsub, name)
    except BaseException as exc:  # noqa: BLE001 - the point is to see what escaped
        leaves = exc.exceptions if isinstance(exc, BaseExceptionGroup) else [exc]
        return f"DEAD: {type(exc).__name__}: {', '.join(type(e).__name__ for e in leaves)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guarded", action="store_true", help="target our guarded host")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    names = ["push_msg: undecodable key", "read loop: undecodable publish field",
             "read loop: garbage frame", "read loop: wrong wire type",
             "read loop: topic not UTF-8", "handle_rpc: junk control"]
    dead = 0
    for name in names:
        result = trio.run(_case, name, args.guarded)
        dead += result != "survived"
        print(f"{name:40s} {result}", flush=True)
    return 1 if dead else 0


if __name__ == "__main__":
    sys.exit(main())
