"""Real peers in one process: libp2p hosts on loopback TCP, each with its own data directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import trio

from chain.genesis import Genesis
from p2p_node.demo import free_ports
from p2p_node.identity import load_or_create_identity
from p2p_node.node import Node, NodeConfig


class EventLog:
    """Events the nodes report, and a way to wait for a condition on them (no sleeps)."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self._changed = trio.Event()

    def __call__(self, event: dict) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[list[dict]], bool]) -> None:
        while not predicate(self.events):
            await self._changed.wait()

    def peers_at(self, event: str, height: int) -> set[str]:
        return {e["peer"] for e in self.events if e["event"] == event and e["height"] == height}


@dataclass
class Cluster:
    """N member data directories and a genesis naming them."""

    root: Path
    size: int = 6
    committee_size: int = 4
    attacks: dict[int, str] = field(default_factory=dict)
    #: per-peer NodeConfig overrides (e.g. {0: {"byzantine": "equivocate"}})
    behaviours: dict[int, dict] = field(default_factory=dict)
    #: how many of the peers the genesis names (default all; the others can only join)
    founders: int | None = None
    #: the genesis `membership` settings (chain.membership)
    membership: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dirs = [self.root / f"peer-{i}" for i in range(self.size)]
        self.ids = [load_or_create_identity(d).peer_id for d in self.dirs]
        members = tuple(self.ids[: self.founders or self.size])
        self.genesis = Genesis(name="test", members=members,
                               committee=tuple(self.ids[: self.committee_size]), seed=1,
                               membership=self.membership)
        self.genesis.save(self.root / "genesis.json")

    def node_configs(self, rounds: int, **overrides: float) -> list[NodeConfig]:
        ports = free_ports(self.size)
        addrs = [f"/ip4/127.0.0.1/tcp/{p}/p2p/{pid}" for p, pid in zip(ports, self.ids)]
        settings = dict(rounds=rounds, collect_timeout=20.0, rebroadcast_interval=1.0,
                        start_wait=60.0, min_peers=self.size - 1, linger=2.0)
        settings.update(overrides)
        return [NodeConfig(
            data_dir=d, genesis_path=self.root / "genesis.json",
            listen=[addrs[i].split("/p2p/")[0]], bootstrap=addrs[:i],
            attack=self.attacks.get(i, "none"), **{**settings, **self.behaviours.get(i, {})})
            for i, d in enumerate(self.dirs)]

    async def run(self, rounds: int, log: EventLog, nursery: trio.Nursery,
                  **overrides: float) -> list[Node]:
        """Start every node in `nursery`; they stop by themselves after `rounds` blocks.

        `self.kill(peer)` stops one at once, as a crash would (its host goes away unannounced).
        """
        nodes = [Node(c, log) for c in self.node_configs(rounds, **overrides)]
        self._scopes: dict[str, trio.CancelScope] = {}
        for node in nodes:
            nursery.start_soon(self._run_node, node)
        return nodes

    async def _run_node(self, node: Node) -> None:
        with trio.CancelScope() as scope:
            self._scopes[node.me] = scope
            await node.run()

    def kill(self, peer: str) -> None:
        self._scopes[peer].cancel()
