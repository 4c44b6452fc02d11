"""A twin: a second process started from a copy of a member's data directory (same key).

Its address records and the original's collide (two records with one sequence number), the
proof is recorded in a block, the member is excluded from committees, and the network keeps
committing. Real peers on loopback TCP, in one process (tests/cluster.py)."""

import shutil
import sqlite3
import time
from pathlib import Path

import pytest
import trio

from chain.verify import ChainVerifier, verify_store
from p2p_node.demo import free_ports
from p2p_node.node import Node, NodeConfig
from tests.cluster import Cluster, EventLog


def copy_data_dir(src: Path, dst: Path) -> None:
    """What an operator copying a running member's directory gets (SQLite copied safely)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("chain.sqlite*", "control.sock"))
    with sqlite3.connect(src / "chain.sqlite") as a, sqlite3.connect(dst / "chain.sqlite") as b:
        a.backup(b)


def run_with_twin(tmp_path: Path, rounds: int, after_convicted: int = 3, timeout: float = 170,
                  **twin_settings) -> tuple[EventLog, EventLog, list[Node], dict]:
    """6 members; once height 0 is committed, member 5's directory is copied and a second
    process runs from it. Returns the logs, the nodes and the height recording the twin."""
    cluster = Cluster(tmp_path, size=6)
    twin_id = cluster.ids[5]
    log, twin_log = EventLog(), EventLog()
    everyone = set(cluster.ids)
    state: dict = {}

    def recorded(events) -> int | None:
        heights = [e["height"] for e in events if e["event"] == "committed"
                   and twin_id in e.get("convicted", ()) and e["peer"] != twin_id]
        return min(heights) if heights else None

    async def scenario():
        with trio.fail_after(timeout):
            async with trio.open_nursery() as nursery:
                nodes = await cluster.run(rounds=rounds, log=log, nursery=nursery,
                                          collect_timeout=10.0, propose_timeout=5.0)
                await log.wait_for(lambda ev: log.peers_at("committed", 0) == everyone)
                copy = tmp_path / "twin"
                copy_data_dir(cluster.dirs[5], copy)
                port = free_ports(1)[0]
                first = nodes[0].config.listen[0] + "/p2p/" + cluster.ids[0]
                twin = Node(NodeConfig(data_dir=copy, genesis_path=tmp_path / "genesis.json",
                                       listen=[f"/ip4/127.0.0.1/tcp/{port}"], bootstrap=[first],
                                       rounds=rounds, collect_timeout=10.0, propose_timeout=5.0,
                                       rebroadcast_interval=1.0, min_peers=1, linger=2.0,
                                       **twin_settings),
                            twin_log)
                state["twin_started"] = time.monotonic()
                nursery.start_soon(twin.run)
                await log.wait_for(lambda ev: recorded(ev) is not None)
                state["recorded_at"] = time.monotonic()
                done = recorded(log.events) + after_convicted
                honest = everyone - {twin_id}
                await log.wait_for(lambda ev: log.peers_at("committed", done) >= honest)
                nursery.cancel_scope.cancel()
        return nodes

    nodes = trio.run(scenario)
    state["height"] = recorded(log.events)
    return log, twin_log, nodes, state


# slow tier: the default tier must stay under 10 minutes on a loaded CI machine (25-50 s here)
@pytest.mark.slow
def test_a_twin_is_recorded_in_a_block_excluded_and_the_network_keeps_committing(tmp_path):
    check_twin_run(tmp_path)


@pytest.mark.slow
def test_a_twin_training_other_data_is_recorded_too(tmp_path):
    """The copy runs with another shard (an operator's config): its updates and score vectors
    differ from the original's, the worst case for the round."""
    check_twin_run(tmp_path, shard_index=0)


def check_twin_run(tmp_path: Path, **twin_settings) -> None:
    log, twin_log, nodes, state = run_with_twin(tmp_path, rounds=40, **twin_settings)
    twin_id = nodes[5].me
    height = state["height"]
    chain = [nodes[0].store.get(h).block for h in range(nodes[0].store.head()[0] + 1)]
    proofs = [pair for block in chain for pair in block.evidence]
    assert proofs, "no block records the twin"
    # Every honest peer holds the same chain.
    for node in nodes[:5]:
        for block in chain:
            held = node.store.get(block.height)
            assert held is not None and held.block.hash() == block.hash()
    for block in chain[height:]:
        assert twin_id not in block.next_committee
    # `p2p-node chain verify` accepts the chain with the twin's proof, and convicts it too.
    verifier = ChainVerifier(nodes[0].genesis)
    for block_height in nodes[0].store.heights():
        committed = nodes[0].store.get(block_height)
        verifier.check(committed)
        verifier.advance(committed)
    assert twin_id in verifier.excluded
    assert verify_store(nodes[0].genesis, nodes[0].store, nodes[0].models).ok
    kinds = {e["kind"] for e in log.events if e["event"] == "evidence"}
    assert kinds, "nobody reported evidence"
    times = {e["height"]: e["round_seconds"] for e in log.events
             if e["event"] == "committed" and e["peer"] == nodes[0].me}
    print(f"evidence kinds {sorted(kinds)}; twin recorded at height {height}, "
          f"{state['recorded_at'] - state['twin_started']:.1f}s after it started; "
          f"round seconds by height: {times}")
