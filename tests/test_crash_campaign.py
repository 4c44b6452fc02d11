"""kill -9 of real peer processes at seeded random points: no store is ever corrupt or short of a
block it acknowledged, and every restarted peer catches up (chain sync) and takes part again.

A block is acknowledged once its `events.jsonl` line is written ("committed" after the store
commit of a round, "synced" after a sync's store transaction): both come after the SQLite commit.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chain.genesis import Genesis
from chain.store import BlockStore, ModelStore
from chain.verify import verify_store
from p2p_node.demo import free_ports
from tests.cluster import Cluster

PEERS = 6


def read_events(data_dir: Path) -> list[dict]:
    """The events a peer wrote; a line torn by the kill is not an event."""
    try:
        lines = (data_dir / "events.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def held_height(data_dir: Path) -> int:
    return max((e["height"] for e in read_events(data_dir)
                if e["event"] in ("committed", "synced")), default=-1)


def check_store(genesis: Genesis, data_dir: Path) -> int:
    """The store opens, verifies from genesis, holds every acknowledged block (same hash) and
    the head's checkpoint; its height."""
    acked = {(e["height"], e["hash"]) for e in read_events(data_dir)
             if e["event"] in ("committed", "synced")}
    store = BlockStore(data_dir / "chain.sqlite")  # quick_check on open
    try:
        models = ModelStore(data_dir / "models")
        report = verify_store(genesis, store, models)
        assert report.ok, f"{data_dir.name}: {report.summary()}"
        for height, digest in acked:
            held = store.get(height)
            assert held is not None, f"{data_dir.name} lost acknowledged block {height}"
            assert held.block.hash().hex() == digest, f"{data_dir.name}: block {height} changed"
        head = store.head()
        if head is not None:
            assert models.get(store.get(head[0]).block.model_hash) is not None, \
                f"{data_dir.name}: head checkpoint missing"
        return -1 if head is None else head[0]
    finally:
        store.close()


class ProcessCluster:
    """`p2p-node run` processes of a Cluster's members on loopback."""

    def __init__(self, root: Path) -> None:
        self.cluster = Cluster(root, size=PEERS)
        ports = free_ports(PEERS)
        self.listen = [f"/ip4/127.0.0.1/tcp/{p}" for p in ports]
        self.addrs = [f"{a}/p2p/{pid}" for a, pid in zip(self.listen, self.cluster.ids)]
        self.procs: dict[int, subprocess.Popen] = {}

    def start(self, i: int) -> None:
        d = self.cluster.dirs[i]
        bootstrap = [x for j, a in enumerate(self.addrs) if j != i for x in ("--bootstrap", a)]
        args = [sys.executable, "-m", "p2p_node", "--log-level", "INFO", "run",
                "--data-dir", str(d), "--genesis", str(self.cluster.root / "genesis.json"),
                "--listen", self.listen[i], *bootstrap, "--collect-timeout", "3",
                "--propose-timeout", "2", "--view-timeout", "8", "--start-wait", "30",
                "--min-peers", "3"]
        with open(d / "node.log", "ab") as log:
            self.procs[i] = subprocess.Popen(["nice", *args], stdout=log,
                                             stderr=subprocess.STDOUT)

    def kill9(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def network_height(self) -> int:
        return max(held_height(d) for d in self.cluster.dirs)

    def wait_until(self, condition, what: str, timeout: float = 150.0) -> None:
        """Poll the peers' event files (the processes' only channel to us) until `condition`."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            for i, proc in self.procs.items():
                assert proc.poll() is None or proc.returncode == -signal.SIGKILL, \
                    f"peer {i} exited with {proc.returncode}: see {self.cluster.dirs[i]}/node.log"
            time.sleep(0.2)


def run_campaign(root: Path, kills: int, seed: int) -> list[tuple[int, int, int]]:
    """`kills` seeded kill -9s, each checked and followed by a restart that must catch up;
    returns (victim, height when killed, height it caught up to) per kill."""
    rng = random.Random(seed)
    net = ProcessCluster(root)
    genesis = net.cluster.genesis
    history = []
    try:
        for i in range(PEERS):
            net.start(i)
        net.wait_until(lambda: all(held_height(d) >= 0 for d in net.cluster.dirs),
                       "every peer to commit block 0", timeout=240)
        for _ in range(kills):
            victim = rng.randrange(PEERS)
            # A random point of a round: training, scoring, voting, or mid-commit.
            time.sleep(rng.uniform(0.0, 4.0))
            net.kill9(victim)
            killed_at = check_store(genesis, net.cluster.dirs[victim])
            target = net.network_height()
            net.start(victim)
            d = net.cluster.dirs[victim]

            def back() -> bool:
                # Caught up, and committed a round of its own after restarting.
                return any(e["event"] == "committed" and e["height"] > target
                           for e in read_events(d))

            net.wait_until(back, f"peer {victim} to catch up past {target}")
            history.append((victim, killed_at, held_height(d)))
    finally:
        net.stop_all()
    for d in net.cluster.dirs:
        check_store(genesis, d)
    return history


@pytest.mark.slow  # ~2 min on a loaded 2-core machine: six processes start; default tier has
# tests/test_crash_store.py (kill -9 of the store writer) and test_sync_late_joiner (catch-up)
def test_a_few_kill_9s_lose_nothing_acknowledged_and_peers_catch_up(tmp_path):
    history = run_campaign(tmp_path, kills=2, seed=5)
    assert len(history) == 2 and all(caught > killed for _, killed, caught in history)


@pytest.mark.slow
def test_a_hundred_seeded_kill_9s(tmp_path):
    history = run_campaign(tmp_path, kills=int(os.environ.get("CRASH_KILLS", "100")), seed=1)
    assert all(caught > killed for _, killed, caught in history)
