"""A running network of real `p2p-node run` processes under attack, one bounded phase at a time.

`HostileNetwork.phase(attack)` runs one attack (a trio coroutine given a connected `Attacker`)
against every honest peer and returns what it did to the network: who died, the commit rate
before and during the attack, whether the peers kept committing afterwards and on one chain,
their memory, and the rejections they counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import trio

from chain.genesis import Genesis
from p2p_node.identity import load_identity
from p2p_node.node import topic_name
from tests.hostile.attacker import Attacker, attacker
from tests.process_cluster import (
    ProcessCluster,
    held_hashes,
    held_height,
    read_events,
    rss_bytes,
)

#: Refusals that are normal gossip (late or early messages), not evidence against anyone.
BENIGN = {"stale-round", "future-round"}


def commits_between(data_dir: Path, start: float, end: float) -> int:
    """Blocks a peer committed (its own rounds, not synced) with event times in [start, end)."""
    return sum(1 for e in read_events(data_dir)
               if e["event"] == "committed" and start <= e.get("time", 0) < end)


@dataclass
class PhaseReport:
    """What one attack phase did to the honest network."""

    name: str
    seconds: float
    died: dict[int, int | None]
    stalled: list[int]  # alive but not committing after the attack (killed, restarted later)
    height_before: int
    height_at_end: int
    height_after: int
    rate_before: float  # blocks/min over the window before the attack
    rate_during: float  # blocks/min while the attack ran
    rate_after: float | None = None  # blocks/min over `after_seconds` once it stopped
    rejections: dict[str, int] = field(default_factory=dict)  # summed over peers, this phase
    rss_mb: list[float] = field(default_factory=list)
    #: the largest growth of one peer's memory during the phase, from its size at the start
    rss_growth_mb: float = 0.0
    attack_result: object = None

    @property
    def misbehaviour_rejections(self) -> int:
        return sum(n for code, n in self.rejections.items() if code not in BENIGN)

    def row(self) -> str:
        return (f"{self.name:<24} {self.seconds:6.1f}s  died={sorted(self.died) or '-'}  "
                f"stalled={self.stalled or '-'}  "
                f"blocks/min before {self.rate_before:5.1f} during {self.rate_during:5.1f} "
                f"after {'-' if self.rate_after is None else f'{self.rate_after:5.1f}'}  "
                f"height {self.height_before}->{self.height_at_end}->{self.height_after}  "
                f"max rss {max(self.rss_mb, default=0):.0f} MB (+{self.rss_growth_mb:.0f} peak)  "
                f"attack {self.attack_result}  rejections {self.rejections}")


class HostileNetwork:
    """`size` member processes (committee `committee_size`) and an attacker to point at them."""

    def __init__(self, root: Path, size: int = 6, committee_size: int = 4,
                 absent: tuple[int, ...] = ()) -> None:
        # Short deadlines: absent members are trainers that never send, so every round waits
        # out the collect deadline; 2 s is still ample for an update to arrive on loopback.
        self.net = ProcessCluster(root, size=size, committee_size=committee_size, run_args=(
            "--collect-timeout", "2", "--propose-timeout", "2", "--view-timeout", "8",
            "--start-wait", "30", "--min-peers", "3"))
        self.genesis: Genesis = self.net.cluster.genesis
        self.network_id = self.genesis.network_id
        self.members = list(self.net.cluster.ids)
        #: members the genesis names that run no process: their keys are the member attacker's
        self.absent = absent
        self.running = [i for i in range(size) if i not in absent]
        self.net.bootstrap_from = set(self.running)  # nobody knows an absent member's address

    def member_seed(self, i: int) -> bytes:
        """The key seed of member `i` (an absent member's: a member attacker signs with it)."""
        return load_identity(self.net.dirs[i]).seed

    def topic(self, name: str) -> str:
        return topic_name(self.network_id, name)

    def start(self, timeout: float = 300.0) -> None:
        for i in self.running:
            self.net.start(i)
        self.net.wait_until(lambda: min(self.net.heights()) >= 1,
                            "every peer to commit block 1", timeout=timeout)

    def stop(self) -> None:
        self.net.stop_all()

    def revive(self) -> None:
        """Restart every peer a previous phase killed or left stuck, and wait until all of them
        commit again."""
        dead = list(self.net.dead())
        if not dead:
            return
        target = self.net.network_height()
        for i in dead:
            self.net.start(i)

        def back() -> bool:
            return all(any(e["event"] == "committed" and e["height"] > target
                           for e in read_events(self.net.dirs[i])) for i in dead)

        self.net.wait_until(back, f"restarted peers {dead} to commit again", timeout=300)

    def _rejections(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for i in self.running:
            status = self.net.status(i) or {}
            counts = {**status.get("rejections", {}),
                      **{f"pubsub:{c}": n for c, n in status.get("contained", {}).items()},
                      **{f"penalty:{c}": n for c, n in status.get("penalties", {}).items()}}
            for code, n in counts.items():
                total[code] = total.get(code, 0) + n
        return total

    def rate(self, start: float, end: float) -> float:
        """The network's blocks per minute in [start, end): the best peer's own commits."""
        if end <= start:
            return 0.0
        best = max(commits_between(d, start, end) for d in self.net.dirs)
        return best * 60.0 / (end - start)

    def phase(self, name: str, attack: Callable[[Attacker, list], Awaitable[object]],
              baseline_seconds: float = 20.0, timeout: float = 180.0, after_blocks: int = 2,
              recover_timeout: float = 90.0, after_seconds: float = 0.0,
              seed: bytes | None = None) -> PhaseReport:
        """Run `attack(attacker, peer_ids)` once, bounded by `timeout`, then wait until every
        peer has committed `after_blocks` more blocks (or report why not)."""
        self.revive()
        before = self._rejections()
        height_before = self.net.network_height()
        started = time.time()
        addrs = [self.net.addrs[i] for i in self.running]

        rss_start = self._rss()
        rss_peak = dict(rss_start)

        async def sample_memory() -> None:
            while True:
                for i, mb in self._rss().items():
                    rss_peak[i] = max(rss_peak.get(i, 0.0), mb)
                await trio.sleep(0.5)

        async def run() -> object:
            with trio.fail_after(timeout):
                async with attacker(seed) as hp, trio.open_nursery() as nursery:
                    nursery.start_soon(sample_memory)
                    peers = []
                    for addr in addrs:
                        try:
                            peers.append(await hp.connect(addr))
                        except Exception:
                            pass  # a peer that refuses us is fine
                    result = await attack(hp, peers)
                    await trio.sleep(2)  # what the peers still hold once the attack stops
                    nursery.cancel_scope.cancel()
                    return result

        result = trio.run(run)
        ended = time.time()
        died = self.net.dead()
        # Blocks committed *after* the attack ended: a peer whose pubsub died may keep its
        # process (a zombie that never commits again), so liveness is committing, not running.
        height_at_end = self.net.network_height()
        stalled: list[int] = []
        if not died:
            target = height_at_end + after_blocks
            try:
                self.net.wait_until(lambda: min(self.net.heights()) >= target,
                                    f"every peer to commit {after_blocks} blocks after {name}",
                                    timeout=recover_timeout, allow_sigkill=False)
            except AssertionError:
                # Stuck peers are restarted by the next phase (revive), so one failure does
                # not cascade into every later phase of a module-scoped network.
                stalled = [i for i in self.running if held_height(self.net.dirs[i]) < target]
                for i in stalled:
                    self.net.kill9(i)
            died = self.net.dead() if not stalled else died
        rate_after = None
        if after_seconds and not died and not stalled:
            time.sleep(max(0.0, ended + after_seconds - time.time()))
            rate_after = self.rate(ended, ended + after_seconds)
        after = self._rejections()
        rss = list(self._rss().values())
        return PhaseReport(
            name=name, seconds=ended - started, died=died, stalled=stalled,
            height_before=height_before,
            height_at_end=height_at_end, height_after=self.net.network_height(),
            rate_before=self.rate(started - baseline_seconds, started),
            rate_during=self.rate(started, ended), rate_after=rate_after,
            rejections={c: after.get(c, 0) - before.get(c, 0) for c in after
                        if after.get(c, 0) != before.get(c, 0)},
            rss_mb=rss, rss_growth_mb=max((rss_peak[i] - rss_start[i] for i in rss_start),
                                          default=0.0),
            attack_result=result)

    def _rss(self) -> dict[int, float]:
        """Resident MB of each live peer process."""
        out = {}
        for i, proc in self.net.procs.items():
            if proc.poll() is None:
                try:
                    out[i] = rss_bytes(proc.pid) / 2**20
                except (FileNotFoundError, ProcessLookupError):
                    pass
        return out

    def one_chain(self) -> bool:
        """Every peer that holds a height holds the same block there."""
        by_height: dict[int, set[str]] = {}
        for d in self.net.dirs:
            for h, digest in held_hashes(d).items():
                by_height.setdefault(h, set()).add(digest)
        return all(len(digests) == 1 for digests in by_height.values())
