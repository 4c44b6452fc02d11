"""What a committed block costs in consensus alone: latency, messages and bytes against C.

Issue #3's benchmark. Real libp2p hosts (`p2p_node.host.running_host`: TCP, Noise, yamux,
gossipsub with our limits) in one process and one `trio.run`, on loopback; no training, no
scoring. For each committee size C (and optionally with extra non-committee peers that only
subscribe to the committee topic and relay, as every peer does in `p2p_node.node`), the hosts
connect (each dials a few earlier ones, in a shuffled order so members and observers mix), wait
until their gossipsub meshes form, and then run `--heights` heights of pBFT. At each height every
member's `PbftCore` gets the same valid value (a 2 KB blob; `validate` returns True), the leader
(rotating with the height) proposes, and the driver does what `p2p_node.node` does with the
core's outputs: Broadcast -> sign an Envelope(kind, network_id, round=height, sender,
payload=message.body()) and publish it on the committee topic, the signed copy coming back
through the subscription into `on_message` after `decode_message`; Relay -> publish the signed
envelopes unchanged; SetTimer -> base view timeout * factor. Every peer runs the same admission
check as a peer (decode, membership, Ed25519 signature, round window) as its topic validator.

Measured per height (all counts are attributed by the envelope's round, after the height has
drained, so late copies land on the right height):

* latency: from the start of the height (all cores started) to the moment the LAST member
  decides; the median over heights is reported, with the phase split (last member to receive
  the pre-prepare, last member to be prepared = broadcast its commit, last member to decide);
* published: envelopes the members publish (pBFT broadcasts and relays) and their bytes;
* delivered to the committee: envelopes members receive from other peers through their
  subscription (after pubsub's de-duplication: one per member per message), and their bytes;
* wire copies: every copy of a committee-topic message that reaches a peer's pubsub from another
  peer, duplicates included (counted at `Pubsub.push_msg`, before the seen-cache), for the
  committee and for all peers: what gossip's redundancy costs on top of the deliveries.

    python bench/consensus.py [--sizes 4,7,10,16,31] [--heights 5] [--observers 0,10]
        [--observer-sizes 4,7] [--dials 3] [--out docs/results/consensus]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import os
import random
import statistics
import sys
import time
from collections import Counter, defaultdict
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# `python bench/consensus.py` puts bench/ first on sys.path, where a module named like one of our
# packages would shadow it: look the packages up from the project root instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import cbor2  # noqa: E402
import multiaddr  # noqa: E402
import trio  # noqa: E402
from libp2p.peer.peerinfo import info_from_p2p_addr  # noqa: E402

import bft.pbft as pbft  # noqa: E402
from bft.messages import Message, decode_message  # noqa: E402
from bft.quorum import quorum_size  # noqa: E402
from gossip.envelope import Envelope, decode_envelope  # noqa: E402
from gossip.peer_keys import Signer  # noqa: E402
from gossip.validation import EnvelopeAdmission  # noqa: E402
from p2p_node.host import HEARTBEAT_SECONDS, running_host  # noqa: E402

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
NETWORK_ID = hashlib.sha256(b"cmfl-p2p/bench/consensus").digest()
TOPIC = f"/cmfl/{NETWORK_ID.hex()[:16]}/committee"
VALUE_BYTES = 2048
libp2p_log = logging.getLogger("libp2p")


@dataclass
class Peer:
    """One libp2p host of the run: a committee member or an observer that only relays."""

    signer: Signer
    host: Any
    pubsub: Any
    router: Any
    member: bool
    admission: EnvelopeAdmission
    #: by height: messages from other peers that came out of our subscription, and their bytes
    delivered: Counter = field(default_factory=Counter)
    delivered_bytes: Counter = field(default_factory=Counter)
    #: by height: every copy pubsub received from another peer, duplicates included
    wire: Counter = field(default_factory=Counter)
    wire_bytes: Counter = field(default_factory=Counter)

    @property
    def me(self) -> str:
        return self.signer.peer_id


@dataclass
class Height:
    """One height's cores, clocks and outcome."""

    height: int
    cores: dict[str, pbft.PbftCore]
    t0: float
    nursery: trio.Nursery
    done: trio.Event = field(default_factory=trio.Event)
    got_proposal: dict[str, float] = field(default_factory=dict)
    prepared: dict[str, float] = field(default_factory=dict)
    decided: dict[str, float] = field(default_factory=dict)
    views: set[int] = field(default_factory=set)
    value_hash: bytes = b""


@dataclass
class Config:
    committee: int
    observers: int
    heights: int
    dials: int
    view_timeout: float
    height_timeout: float


@dataclass
class Result:
    """Per-height measurements of one (committee size, observers) configuration."""

    committee: int
    observers: int
    heights_run: int = 0
    heights_decided: int = 0
    latency: list[float] = field(default_factory=list)
    phase_proposal: list[float] = field(default_factory=list)
    phase_prepared: list[float] = field(default_factory=list)
    cpu_share: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    #: publish -> delivery at another member, every delivery of every height
    hop_delays: list[float] = field(default_factory=list)
    views: list[int] = field(default_factory=list)
    published: list[int] = field(default_factory=list)
    published_bytes: list[int] = field(default_factory=list)
    published_by_kind: Counter = field(default_factory=Counter)
    relayed: list[int] = field(default_factory=list)
    delivered_committee: list[int] = field(default_factory=list)
    delivered_committee_bytes: list[int] = field(default_factory=list)
    delivered_observers: list[int] = field(default_factory=list)
    wire_committee: list[int] = field(default_factory=list)
    wire_committee_bytes: list[int] = field(default_factory=list)
    wire_all: list[int] = field(default_factory=list)
    mesh_degree: float = 0.0
    connections: float = 0.0
    setup_seconds: float = 0.0
    rejected: Counter = field(default_factory=Counter)

    @property
    def peers(self) -> int:
        return self.committee + self.observers


class Bench:
    """One configuration: its hosts, the committee's cores, and the counters."""

    def __init__(self, cfg: Config, peers: list[Peer]) -> None:
        self.cfg = cfg
        self.peers = peers
        self.members = [p for p in peers if p.member]
        self.committee = tuple(p.me for p in self.members)
        self.current: Height | None = None
        self.published: Counter = Counter()
        self.published_bytes: Counter = Counter()
        self.published_kind: dict[int, Counter] = defaultdict(Counter)
        self.relayed: Counter = Counter()
        self.own_published: dict[str, Counter] = defaultdict(Counter)
        self.rejected: Counter = Counter()
        #: when each envelope was published, and how long each delivery to a member took
        self.sent_at: dict[bytes, float] = {}
        self.hop_delays: dict[int, list[float]] = defaultdict(list)

    # gossip ------------------------------------------------------------------------------------
    def install(self, peer: Peer) -> None:
        """Admission as the topic validator, and a counter of every copy off the wire."""
        def validate(forwarder: Any, msg: Any) -> bool:
            verdict = peer.admission.admit(msg.data, None)
            if not verdict.accepted:
                self.rejected[verdict.code] += 1
            return verdict.accepted

        peer.pubsub.set_topic_validator(TOPIC, validate, False)
        push_msg = peer.pubsub.push_msg
        my_id = peer.host.get_id()

        async def counting_push_msg(forwarder: Any, msg: Any) -> None:
            # Instrumentation only: pubsub calls this for every received copy, before dedup.
            if forwarder != my_id and TOPIC in msg.topicIDs:
                height = _round_of(msg.data)
                peer.wire[height] += 1
                peer.wire_bytes[height] += msg.ByteSize()
            await push_msg(forwarder, msg)

        peer.pubsub.push_msg = counting_push_msg

    async def read(self, peer: Peer, subscription: Any) -> None:
        my_id = peer.host.get_id().to_bytes()
        async for msg in subscription:
            env = decode_envelope(msg.data)  # admitted by the validator already
            if msg.from_id != my_id:
                peer.delivered[env.round] += 1
                peer.delivered_bytes[env.round] += len(msg.data)
                sent = self.sent_at.get(msg.data)
                if peer.member and sent is not None:
                    self.hop_delays[env.round].append(time.perf_counter() - sent)
            state = self.current
            if not peer.member or state is None or env.round != state.height:
                continue  # late copies of a finished height: counted, not needed
            core = state.cores[peer.me]
            message = decode_message(env.kind, env.round, env.sender, env.payload, env.signature)
            if message.kind in ("pre_prepare", "new_view"):
                state.got_proposal.setdefault(peer.me, time.perf_counter() - state.t0)
            await self.carry_out(peer, state, core.on_message(message))

    async def publish(self, peer: Peer, height: int, kind: str, data: bytes,
                      relay: bool = False) -> None:
        self.published[height] += 1
        self.own_published[peer.me][height] += 1
        self.published_bytes[height] += len(data)
        self.published_kind[height][kind + (" (relay)" if relay else "")] += 1
        if relay:
            self.relayed[height] += 1
        self.sent_at.setdefault(data, time.perf_counter())
        await peer.pubsub.publish(TOPIC, data)

    async def carry_out(self, peer: Peer, state: Height, outputs: list[pbft.Output]) -> None:
        """What p2p_node.node does with the core's outputs, minus the disk."""
        for out in outputs:
            if isinstance(out, pbft.Broadcast):
                m = out.message
                env = Envelope(m.kind, NETWORK_ID, m.height, peer.me, m.body()).signed_by(
                    peer.signer)
                if m.kind == "commit":
                    state.prepared.setdefault(peer.me, time.perf_counter() - state.t0)
                await self.publish(peer, m.height, m.kind, env.encode())
            elif isinstance(out, pbft.Relay):
                for m in out.messages:
                    env = _envelope_of(m)
                    await self.publish(peer, m.height, m.kind, env.encode(), relay=True)
            elif isinstance(out, pbft.SetTimer):
                state.nursery.start_soon(self.timer, peer, state, out)
            elif isinstance(out, pbft.Decided):
                state.decided[peer.me] = time.perf_counter() - state.t0
                state.views.add(out.view)
                assert out.value_hash == state.value_hash, "decided another value"
                if len(state.decided) == len(self.members):
                    state.done.set()
            elif isinstance(out, pbft.Rejected):
                self.rejected[f"core:{out.kind}:{out.reason}"] += 1
            elif isinstance(out, pbft.Equivocation):
                self.rejected[f"equivocation:{out.member[-8:]}"] += 1
            # ProposalNeeded: cannot happen, every core holds the value before it starts.

    async def timer(self, peer: Peer, state: Height, out: pbft.SetTimer) -> None:
        await trio.sleep(self.cfg.view_timeout * out.duration_factor)
        core = state.cores[peer.me]
        await self.carry_out(peer, state, core.on_timer(out.name, out.view))

    # one height --------------------------------------------------------------------------------
    async def run_height(self, height: int) -> Height:
        value = random.Random(height).randbytes(VALUE_BYTES)
        value_hash = pbft.sha256(value)
        for p in self.peers:
            p.admission.current_round = height
        async with trio.open_nursery() as nursery:
            cores = {p.me: pbft.PbftCore(height, self.committee, p.me, _always_valid, _verify)
                     for p in self.members}
            state = Height(height, cores, time.perf_counter(), nursery, value_hash=value_hash)
            self.current = state
            for p in self.members:
                cores[p.me].propose(value_hash, value)
            for p in self.members:
                await self.carry_out(p, state, cores[p.me].start())
            with trio.move_on_after(self.cfg.height_timeout):
                await state.done.wait()
            nursery.cancel_scope.cancel()  # the view timers
        return state

    async def drain(self, height: int, timeout: float = 10.0) -> None:
        """Until every member and observer holds every message of `height` from the others."""
        def complete() -> bool:
            want = self.published[height]
            return all(p.delivered[height] >= want - self.own_published[p.me][height]
                       for p in self.peers)

        with trio.move_on_after(timeout):
            while not complete():
                await trio.sleep(0.05)
        await trio.sleep(0.3)  # the last duplicate copies on the wire


def _round_of(data: bytes) -> int:
    try:
        return int(cbor2.loads(data)["r"])
    except Exception:
        return -1


def _envelope_of(m: Message) -> Envelope:
    return Envelope(m.kind, NETWORK_ID, m.height, m.sender, m.body(), m.signature)


def _always_valid(value_hash: bytes, value: bytes) -> bool:
    return True


def _verify(m: Message) -> bool:
    return _envelope_of(m).has_valid_signature()


# set-up ----------------------------------------------------------------------------------------
async def until(predicate: Any, timeout: float) -> bool:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.1)
        return True
    return False


def meshes_formed(peers: list[Peer]) -> bool:
    """Every peer sees its connected peers on the topic, and its mesh is as full as it can be."""
    for p in peers:
        connected = set(p.host.get_connected_peers())
        on_topic = set(p.pubsub.peer_topics.get(TOPIC, ()))
        mesh = p.router.mesh.get(TOPIC, set())
        if not connected or not connected <= on_topic:
            return False
        if len(mesh) < min(len(connected), p.router.degree_low):
            return False
    return True


async def run_config(cfg: Config) -> Result:
    result = Result(cfg.committee, cfg.observers)
    n = cfg.committee + cfg.observers
    signers = [Signer(hashlib.sha256(f"bench/{cfg.committee}/{cfg.observers}/{i}".encode())
                      .digest()) for i in range(n)]
    ids = frozenset(s.peer_id for s in signers)
    started = time.perf_counter()
    async with AsyncExitStack() as stack:
        peers = []
        for i, s in enumerate(signers):
            host, pubsub, router = await stack.enter_async_context(running_host(s, LOOPBACK))
            # The committee is the first C peers; everyone accepts envelopes from every peer.
            peers.append(Peer(s, host, pubsub, router, i < cfg.committee,
                              EnvelopeAdmission(NETWORK_ID, ids)))
        bench = Bench(cfg, peers)
        async with trio.open_nursery() as nursery:
            for p in peers:
                bench.install(p)
                nursery.start_soon(bench.read, p, await p.pubsub.subscribe(TOPIC))
            # Each peer dials up to `dials` earlier ones, in an order that mixes members and
            # observers, so members do not form a clique of their own.
            order = list(range(n))
            rng = random.Random(n * 1000 + cfg.committee)
            rng.shuffle(order)
            for k, i in enumerate(order):
                for j in rng.sample(order[:k], min(k, cfg.dials)):
                    addr = str(peers[j].host.get_addrs()[0])
                    await peers[i].host.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))
            formed = await until(lambda: meshes_formed(peers), 60)
            await trio.sleep(2 * HEARTBEAT_SECONDS)  # grafts settle
            result.mesh_degree = statistics.fmean(len(p.router.mesh.get(TOPIC, ()))
                                                  for p in peers)
            result.connections = statistics.fmean(len(p.host.get_connected_peers())
                                                  for p in peers)
            result.setup_seconds = time.perf_counter() - started
            print(f"  C={cfg.committee} peers={n}: up in {result.setup_seconds:.1f}s, meshes "
                  f"{'formed' if formed else 'NOT fully formed'} (mean degree "
                  f"{result.mesh_degree:.1f}, {result.connections:.1f} connections per peer)",
                  flush=True)
            for h in range(cfg.heights):
                cpu0, wall0 = time.process_time(), time.perf_counter()
                state = await bench.run_height(h)
                wall = time.perf_counter() - wall0
                result.heights_run += 1
                decided = len(state.decided) == cfg.committee
                if decided:
                    result.heights_decided += 1
                    result.latency.append(max(state.decided.values()))
                    result.phase_proposal.append(max(state.got_proposal.values()))
                    result.phase_prepared.append(max(state.prepared.values()))
                    result.views.append(max(state.views))
                result.cpu_seconds.append(time.process_time() - cpu0)
                result.cpu_share.append(result.cpu_seconds[-1] / wall)
                print(f"    height {h}: " + (
                    f"all {cfg.committee} decided in {1000 * result.latency[-1]:.0f} ms "
                    f"(view {result.views[-1]})" if decided else
                    f"only {len(state.decided)}/{cfg.committee} decided within "
                    f"{cfg.height_timeout:.0f}s"), flush=True)
                await bench.drain(h)
            bench.current = None
            for h in range(result.heights_run):
                members = [p for p in peers if p.member]
                observers = [p for p in peers if not p.member]
                result.published.append(bench.published[h])
                result.published_bytes.append(bench.published_bytes[h])
                result.relayed.append(bench.relayed[h])
                result.published_by_kind.update(bench.published_kind[h])
                result.delivered_committee.append(sum(p.delivered[h] for p in members))
                result.delivered_committee_bytes.append(
                    sum(p.delivered_bytes[h] for p in members))
                result.delivered_observers.append(sum(p.delivered[h] for p in observers))
                result.wire_committee.append(sum(p.wire[h] for p in members))
                result.wire_committee_bytes.append(sum(p.wire_bytes[h] for p in members))
                result.wire_all.append(sum(p.wire[h] for p in peers))
                result.hop_delays += bench.hop_delays[h]
            result.rejected = bench.rejected
            # py-libp2p logs its own shutdown races (tasks scheduled on stopped services) as
            # errors; measurements are done, so keep them off the report.
            libp2p_log.setLevel(logging.CRITICAL)
            nursery.cancel_scope.cancel()
    libp2p_log.setLevel(logging.NOTSET)
    return result


# report ----------------------------------------------------------------------------------------
def _mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _quantile(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def rows(results: list[Result]) -> list[dict[str, Any]]:
    base = next((r for r in results if r.committee == 4 and r.observers == 0), results[0])
    base_delivered = _mean(base.delivered_committee)
    out = []
    for r in results:
        c2 = r.committee ** 2
        delivered = _mean(r.delivered_committee)
        out.append({
            "C": r.committee, "peers": r.peers, "f": (r.committee - 1) // 3,
            "quorum": quorum_size(r.committee),
            "heights": f"{r.heights_decided}/{r.heights_run}",
            "latency_ms": 1000 * _median(r.latency),
            "latency_min_ms": 1000 * min(r.latency) if r.latency else float("nan"),
            "latency_max_ms": 1000 * max(r.latency) if r.latency else float("nan"),
            "msgs_published": _mean(r.published),
            "bytes_published": _mean(r.published_bytes),
            "relays": _mean(r.relayed),
            "msgs_delivered_committee": delivered,
            "bytes_delivered_committee": _mean(r.delivered_committee_bytes),
            "ratio_to_C4": delivered / base_delivered,
            "C2_ratio": c2 / base.committee ** 2,
            "msgs_per_C2": delivered / c2,
            "delivered_observers": _mean(r.delivered_observers),
            "wire_committee": _mean(r.wire_committee),
            "wire_committee_bytes": _mean(r.wire_committee_bytes),
            "wire_all": _mean(r.wire_all),
            "wire_per_delivery": _mean(r.wire_committee) / delivered if delivered else 0.0,
            "proposal_ms": 1000 * _median(r.phase_proposal),
            "prepared_ms": 1000 * _median(r.phase_prepared),
            "hop_median_ms": 1000 * _median(r.hop_delays),
            "hop_p90_ms": 1000 * _quantile(r.hop_delays, 0.9),
            "cpu_ms": 1000 * _median(r.cpu_seconds),
            "cpu_share": _mean(r.cpu_share),
            "mesh_degree": r.mesh_degree,
            "connections": r.connections,
            "max_view": max(r.views) if r.views else -1,
            "setup_s": r.setup_seconds,
            "rejected": sum(r.rejected.values()),
        })
    return out


def markdown(table: list[dict[str, Any]], command: str, seconds: float, load: str) -> str:
    lines = [
        "| C | peers | latency_ms (median) | msgs_published/block | bytes_published/block | "
        "msgs_delivered_to_committee/block | ratio to C=4 | (C/4)^2 | msgs/C^2 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        lines.append(
            f"| {r['C']} | {r['peers']} | {r['latency_ms']:.0f} | {r['msgs_published']:.1f} | "
            f"{r['bytes_published']:,.0f} | {r['msgs_delivered_committee']:.1f} | "
            f"{r['ratio_to_C4']:.2f} | {r['C2_ratio']:.2f} | {r['msgs_per_C2']:.2f} |")
    lines += [
        "",
        "Gossip detail (per block; phases are medians of the time the last member reached "
        "them; wire copies include pubsub duplicates; CPU ms per block = process CPU time of "
        "the height, all hosts together in one trio thread; cpu share = that / wall time, "
        "well below 1 when other processes hold the cores):",
        "",
        "| C | peers | heights decided | latency min-max ms | pre-prepare at all ms | "
        "all prepared ms | one gossip delivery ms (median / p90) | "
        "bytes delivered to committee | deliveries to observers | "
        "wire copies to committee | wire copies per delivery | wire copies, all peers | "
        "mesh degree | CPU ms per block | cpu share |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        lines.append(
            f"| {r['C']} | {r['peers']} | {r['heights']} | {r['latency_min_ms']:.0f}-"
            f"{r['latency_max_ms']:.0f} | {r['proposal_ms']:.0f} | {r['prepared_ms']:.0f} | "
            f"{r['hop_median_ms']:.0f} / {r['hop_p90_ms']:.0f} | "
            f"{r['bytes_delivered_committee']:,.0f} | {r['delivered_observers']:.0f} | "
            f"{r['wire_committee']:.0f} | {r['wire_per_delivery']:.2f} | {r['wire_all']:.0f} | "
            f"{r['mesh_degree']:.1f} | {r['cpu_ms']:.0f} | {r['cpu_share']:.2f} |")
    lines += ["", f"`{command}`: {seconds:.0f} s wall clock; load average {load}."]
    return "\n".join(lines) + "\n"


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=parse_ints, default=[4, 7, 10, 16, 31],
                        help="committee sizes, run without observers (default 4,7,10,16,31)")
    parser.add_argument("--heights", type=int, default=5, help="heights per configuration")
    parser.add_argument("--large-heights", type=int, default=None,
                        help="heights for C > 16 (default: --heights)")
    parser.add_argument("--observers", type=parse_ints, default=[0, 10],
                        help="extra non-committee peers on the topic (default 0,10)")
    parser.add_argument("--observer-sizes", type=parse_ints, default=[4, 7],
                        help="committee sizes also run with each non-zero --observers")
    parser.add_argument("--dials", type=int, default=3, help="earlier peers each peer dials")
    parser.add_argument("--view-timeout", type=float, default=90.0,
                        help="base pBFT view timeout, seconds")
    parser.add_argument("--height-timeout", type=float, default=150.0,
                        help="give up on a height after this many seconds")
    parser.add_argument("--out", type=Path, default=None,
                        help="write OUT.md and OUT.csv (e.g. docs/results/consensus)")
    args = parser.parse_args()

    configs = [(c, 0) for c in args.sizes]
    configs += [(c, o) for o in args.observers if o for c in args.observer_sizes]
    configs.sort(key=lambda co: (co[0], co[1]))
    command = " ".join(["python bench/consensus.py", *sys.argv[1:]])

    async def all_configs() -> list[Result]:
        results = []
        for c, o in configs:
            heights = args.heights if c <= 16 or args.large_heights is None else \
                args.large_heights
            results.append(await run_config(Config(c, o, heights, args.dials,
                                                   args.view_timeout, args.height_timeout)))
        return results

    load_before = _loadavg()
    started = time.perf_counter()
    print(f"consensus bench: {len(configs)} configurations, {args.heights} heights each, "
          f"{VALUE_BYTES}-byte value, loopback, one process", flush=True)
    results = trio.run(all_configs)
    seconds = time.perf_counter() - started
    table = rows(results)
    load = f"{load_before} before, {_loadavg()} after (1-min, {os.cpu_count()} cores)"
    text = markdown(table, command.strip(), seconds, load)
    print()
    print(text)
    kinds: Counter = Counter()
    for r in results:
        kinds.update({f"C={r.committee}/{r.peers} {k}": v / max(1, r.heights_run)
                      for k, v in r.published_by_kind.items()})
    print("published per block by kind: " + ", ".join(
        f"{k}: {v:.1f}" for k, v in sorted(kinds.items())))
    rejected = {f"C={r.committee}/{r.peers}": dict(r.rejected) for r in results if r.rejected}
    print(f"rejections: {rejected or 'none'}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text)
        with args.out.with_suffix(".csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(table[0]))
            writer.writeheader()
            for r in table:
                writer.writerow({k: round(v, 4) if isinstance(v, float) else v
                                 for k, v in r.items()})
        print(f"wrote {args.out.with_suffix('.md')} and {args.out.with_suffix('.csv')}")
    return 0 if all(r.heights_decided == r.heights_run for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
