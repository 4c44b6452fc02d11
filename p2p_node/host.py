"""Building the libp2p host and gossipsub router, with every traffic limit set on purpose.

py-libp2p's defaults lose traffic silently (DEVELOPERS.md, verified on loopback), so each one
that matters to us is set here, in one place, with the reason.
"""

from __future__ import annotations

import logging
import sys
from contextlib import asynccontextmanager
from typing import AsyncIterator

import multiaddr
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.pubsub import rpc_queue
from libp2p.pubsub import pubsub as libp2p_pubsub
from libp2p.rcmgr import new_resource_manager
from libp2p.rcmgr.connection_limits import new_connection_limits_with_defaults
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.tools.anyio_service import background_trio_service
from libp2p.tools.anyio_service.exceptions import LifecycleError

from gossip.envelope import MAX_ENVELOPE_BYTES
from gossip.guarded_pubsub import GuardedPubsub, guard_host
from gossip.peer_keys import Signer
from gossip.round_gossip import RoundScopedGossipSub

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

log = logging.getLogger(__name__)

#: Heartbeat: py-libp2p's default is 120 s, far too slow to form and repair meshes.
HEARTBEAT_SECONDS = 1
#: gossipsub mesh degree D and its bounds (see running_host for why not py-libp2p's 6, 4-12)
MESH_DEGREE, MESH_DEGREE_LOW, MESH_DEGREE_HIGH = 4, 3, 6
#: Spam protection counts messages per topic per *forwarding* peer: a committee member forwards
#: one update per trainer within a second, so the default 10/s would drop honest traffic. Our own
#: signature checks, not a rate, are what keep junk out.
MAX_MESSAGES_PER_TOPIC_PER_SECOND = 1000.0
#: Per-peer outbound queue: 32 by default; a round's burst (updates, scores, votes, blocks,
#: rebroadcasts) to one slow peer can pass that. The queue's size is a constructor default bound
#: at import time, so it is raised here on the class itself.
OUTBOUND_QUEUE_MESSAGES = 1024
#: Messages py-libp2p holds for one of our topic subscriptions until we read them: 32 by
#: default, and beyond that it drops them with only a "fail to deliver message to subscription"
#: warning. A busy peer (a judged round's pledges, votes and pBFT messages at once, on a loaded
#: machine) fell 32 behind and lost the other members' pBFT commits for good: the round stalled
#: with a prepare from everyone and no commit but its own (docs/learning.md, eighth pass). It
#: is a module constant read when we subscribe, so it is raised here on the module.
SUBSCRIPTION_QUEUE_MESSAGES = 4096
#: Inbound RPC limit: above our own envelope cap, so our cap (a logged refusal) is the one hit.
MAX_INBOUND_RPC_BYTES = 2 * 1024 * 1024
#: Connections one peer may hold to us at once (libp2p.rcmgr enforces it in 0.8.1; its default
#: is 8). Two peers dialling each other at once make two; more is waste or abuse.
MAX_CONNECTIONS_PER_PEER = 4

assert MAX_ENVELOPE_BYTES < rpc_queue.DefaultMaxMessageSize  # outbound split limit (1 MiB)
rpc_queue.RpcQueue.__init__.__defaults__ = (OUTBOUND_QUEUE_MESSAGES,
                                            rpc_queue.DefaultMaxMessageSize)
libp2p_pubsub.SUBSCRIPTION_CHANNEL_SIZE = SUBSCRIPTION_QUEUE_MESSAGES


def build_transport_host(signer: Signer, mdns: bool = False) -> IHost:
    """A TCP host with Noise pinned (no plaintext, no secio) and yamux, nothing on top."""
    key_pair = create_new_key_pair(signer.seed)
    noise = NoiseTransport(key_pair, noise_privkey=create_new_x25519_key_pair().private_key)
    limits = new_connection_limits_with_defaults().with_max_established_per_peer(
        MAX_CONNECTIONS_PER_PEER)
    host = new_host(key_pair=key_pair, sec_opt={NOISE_PROTOCOL_ID: noise},
                    muxer_preference="YAMUX", enable_mDNS=mdns,
                    resource_manager=new_resource_manager(connection_limits=limits))
    # py-libp2p 0.8.1's auto-connector dials every peer in the peerstore to keep 50-200
    # connections, and the peerstore takes the listen addresses any connected peer claims for
    # itself (identify): a hostile peer could name a victim's address and have every peer dial
    # it. Who is dialled is p2p_node/discovery.py's decision alone (members' signed records,
    # bootstrap, mDNS), so the auto-connector never dials.
    host.get_network().auto_connector.maybe_connect = _never_dial  # type: ignore[attr-defined]
    return host


async def _never_dial() -> None:
    """Stands in for AutoConnector.maybe_connect (see build_transport_host)."""


def build_host(signer: Signer, mdns: bool = False) -> tuple[IHost, GuardedPubsub,
                                                             RoundScopedGossipSub]:
    """A TCP host with Noise pinned (no plaintext, no secio) and yamux, plus gossipsub v1.1.

    The router scores peers (gossip/peer_scoring.py): negative-score peers leave the mesh.
    It forgets past rounds (gossip/round_gossip.py): what a peer moved past is not replayed,
    gossiped or served on IWANT, once the validator notes each message's round (`note_admitted`)
    and the driver the peer's (`enter_round`).
    Pubsub is guarded (gossip/guarded_pubsub.py): no peer input can end the process, each
    forwarder has a budget, and graylisted peers are disconnected and refused.
    With `mdns`, the host answers and sends mDNS queries on the LAN; that only fills the
    peerstore, so p2p_node.discovery is what dials the peers found.
    """
    host = build_transport_host(signer, mdns)
    router = RoundScopedGossipSub(
        # Mesh degree 4 (3-6), not py-libp2p's 6 (4-12): on 10 peer processes sharing 2 cores a
        # round's CPU is mostly py-libp2p handling duplicate wire copies (each peer receives
        # about D copies of every message); D = 4 cut CPU per round 4.8 -> 2.6 s and a round
        # 2.5 -> 1.3 s (bench/vs_flower.py --systems ours, docs/results/cost.md).
        protocols=[PROTOCOL_ID_V11], degree=MESH_DEGREE, degree_low=MESH_DEGREE_LOW,
        degree_high=MESH_DEGREE_HIGH,
        heartbeat_interval=HEARTBEAT_SECONDS, heartbeat_initial_delay=0.1,
        spam_protection_enabled=True,
        max_messages_per_topic_per_second=MAX_MESSAGES_PER_TOPIC_PER_SECOND,
        # Peers on one LAN (or loopback) share an address: IP diversity would shrink the mesh.
        eclipse_protection_enabled=False,
        # py-libp2p 0.8.1's "adaptive gossip" rates the network's health every 30 s (mesh
        # degree against D = 6, among others) and below 0.7 sets the heartbeat to 30-60 s
        # (its comment says "more frequent"; the code does max(30, ...)). A network of fewer
        # than 7 peers is always "unhealthy": meshes were repaired, negative-score peers pruned
        # and the message cache shifted once every 30-60 s (a PRUNE took 25 s; issue #17).
        # Off, the heartbeat stays HEARTBEAT_SECONDS and the degree bounds the ones set here.
        adaptive_gossip_enabled=False,
    )
    pubsub = GuardedPubsub(host, router, max_inbound_rpc_size=MAX_INBOUND_RPC_BYTES)
    guard_host(host, pubsub)
    return host, pubsub, router


def _is_shutdown_race(exc: BaseException) -> bool:
    """py-libp2p 0.8.1 services may still start tasks while they stop: harmless at shutdown."""
    return isinstance(exc, LifecycleError) or (
        isinstance(exc, RuntimeError) and "closed to new arrivals" in str(exc))


@asynccontextmanager
async def running_host(signer: Signer, listen: list[str], mdns: bool = False) -> AsyncIterator[
        tuple[IHost, GuardedPubsub, RoundScopedGossipSub]]:
    """Build, start and listen; everything stops when the block exits."""
    host, pubsub, router = build_host(signer, mdns)
    stopping = False
    try:
        async with host.run([multiaddr.Multiaddr(a) for a in listen]):
            async with background_trio_service(pubsub), background_trio_service(router):
                await pubsub.wait_until_ready()
                try:
                    yield host, pubsub, router
                finally:
                    stopping = True
    except BaseExceptionGroup as group:
        if not stopping:
            raise
        # False for a nested group makes subgroup() look inside it, down to the leaves.
        real = group.subgroup(lambda e: not isinstance(e, BaseExceptionGroup) and
                              not _is_shutdown_race(e))
        if real is not None:
            raise real from None
        log.debug("ignored libp2p shutdown races: %s", group)
