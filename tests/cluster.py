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
from chain.genesis import SELECTION_PRESETS

#: the scored rule (an elected committee scores) these tests exercise; judged rounds, the
#: default, are tests/test_judged_round.py and tests/test_judged_net.py
SCORED = SELECTION_PRESETS["cmfl-clip-far"]


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

    def progress(self) -> str:
        """Each peer's last committed height and last event, for a failure message."""
        last: dict[str, dict] = {}
        committed: dict[str, int] = {}
        for e in self.events:
            peer = str(e.get("peer", "?"))[-8:]
            last[peer] = e
            if e.get("event") == "committed":
                committed[peer] = max(committed.get(peer, -1), e.get("height", -1))
        return "; ".join(f"{p}: committed {committed.get(p, -1)}, last {e.get('event')} "
                         f"h{e.get('height')}" for p, e in sorted(last.items()))


@dataclass
class Cluster:
    """N member data directories and a genesis naming them."""

    root: Path
    size: int = 6
    committee_size: int = 4
    attacks: dict[int, str] = field(default_factory=dict)
    #: per-peer NodeConfig overrides (e.g. {0: {"byzantine": "equivocate"}})
    behaviours: dict[int, dict] = field(default_factory=dict)
    #: Genesis fields other than the defaults (e.g. {"model": {"layers": [...]}})
    genesis_fields: dict = field(default_factory=dict)
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
                               membership=self.membership,
                               **{"selection": SCORED, **self.genesis_fields})
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

        `await self.kill(peer)` stops one at once, as a crash would (its sockets close).
        """
        nodes = [Node(c, log) for c in self.node_configs(rounds, **overrides)]
        self._scopes: dict[str, trio.CancelScope] = {}
        self._nodes: dict[str, Node] = {}
        for node in nodes:
            nursery.start_soon(self._run_node, node)
        return nodes

    async def _run_node(self, node: Node) -> None:
        with trio.CancelScope() as scope:
            self._scopes[node.me] = scope
            self._nodes[node.me] = node
            try:
                await node.run()
            finally:
                # A process that ends has its sockets closed by the OS; an in-process node's
                # may stay open (see kill), and peers still running then block writing to a
                # socket nobody reads (seen as a rare hang of the 9-peer test).
                with trio.CancelScope(shield=True):
                    await close_sockets(node.host)

    async def kill(self, peer: str) -> None:
        """Crash `peer`: its tasks stop and its sockets close, as a dead process's do.

        Cancelling alone is not a crash: py-libp2p 0.8.1 runs its TCP listener (and the tasks of
        accepted connections) in a trio system task that outlives the cancelled host, so the
        "dead" peer kept accepting dials and streams that nobody answered, and peers' requests
        to it hung (seen as a rare stall of the killed-leader test)."""
        host = self._nodes[peer].host
        self._scopes[peer].cancel()
        await close_sockets(host)


async def close_sockets(host: object | None) -> None:
    """Close a libp2p host's listeners and every socket it still holds, as process exit would."""
    if host is None:
        return
    with trio.move_on_after(10):
        for listener in list(host.get_network().listeners.values()):  # type: ignore[attr-defined]
            await listener.close()  # cancels the system task: accepted conns close too
    await trio.sleep(0)  # let the cancelled tasks unwind before their sockets go
    for sock in _sockets_of(host):  # what is left: connections this peer dialled
        if sock.fileno() != -1:
            trio.lowlevel.notify_closing(sock)
            sock.close()


def _sockets_of(root: object) -> list:
    """The trio sockets reachable from a libp2p host's attributes (listeners, connections)."""
    found, seen, frontier = [], set(), [root]
    for _ in range(12):  # host -> swarm -> conns -> muxer -> secure session -> raw -> stream
        nxt = []
        for obj in frontier:
            if id(obj) in seen or isinstance(obj, (str, bytes, int, float, type)):
                continue
            seen.add(id(obj))
            if isinstance(obj, trio.socket.SocketType):
                found.append(obj)
                continue
            if isinstance(obj, dict):
                nxt += list(obj.values())
            elif isinstance(obj, (list, tuple, set, frozenset)):
                nxt += list(obj)
            elif hasattr(obj, "__dict__") and type(obj).__module__.split(".")[0] in (
                    "libp2p", "trio"):
                nxt += list(vars(obj).values())
        frontier = nxt
    return found


def run_with_late_peer(configs: list[NodeConfig], log: EventLog,
                       ready: Callable[[list[dict]], bool], done: Callable[[list[dict]], bool],
                       timeout: float = 170) -> Node:
    """Run every config but the last; start the last peer once `ready(events)`; stop everyone
    once `done(events)`. Returns the late peer's Node."""
    async def scenario() -> Node:
        with trio.fail_after(timeout):
            async with trio.open_nursery() as nursery:
                for config in configs[:-1]:
                    nursery.start_soon(Node(config, log).run)
                await log.wait_for(ready)
                late = Node(configs[-1], log)
                nursery.start_soon(late.run)
                await log.wait_for(done)
                nursery.cancel_scope.cancel()
        return late

    return trio.run(scenario)

