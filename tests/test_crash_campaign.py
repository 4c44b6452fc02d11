"""kill -9 of real peer processes at seeded random points: no store is ever corrupt or short of a
block it acknowledged, and every restarted peer catches up (chain sync) and takes part again.

A block is acknowledged once its `events.jsonl` line is written ("committed" after the store
commit of a round, "synced" after a sync's store transaction): both come after the SQLite commit.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from chain.genesis import Genesis
from chain.store import BlockStore, ModelStore
from chain.verify import verify_store
from tests.process_cluster import ProcessCluster, held_height, read_events

PEERS = 6


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


def run_campaign(root: Path, kills: int, seed: int) -> list[tuple[int, int, int]]:
    """`kills` seeded kill -9s, each checked and followed by a restart that must catch up;
    returns (victim, height when killed, height it caught up to) per kill."""
    rng = random.Random(seed)
    net = ProcessCluster(root, size=PEERS)
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
