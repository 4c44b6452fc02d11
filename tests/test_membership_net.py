"""A peer outside the genesis joins a running network over real libp2p hosts on loopback."""

import dataclasses

import pytest
import trio

from chain.genesis import Genesis
from chain.store import BlockStore, ModelStore
from chain.verify import verify_store
from p2p_node.node import Node
from tests.cluster import Cluster, EventLog, run_with_late_peer


# slow tier: the default tier must stay under 10 minutes on a loaded CI machine (25-50 s here)
@pytest.mark.slow
def test_a_sixth_peer_joins_mid_training_under_the_open_policy_and_then_trains(tmp_path):
    cluster = Cluster(tmp_path, size=6, founders=5,
                      membership={"admission": "open", "leave_after": 5})
    joiner_id = cluster.ids[5]
    founders = set(cluster.ids[:5])
    assert joiner_id not in cluster.genesis.members
    log = EventLog()
    configs = cluster.node_configs(rounds=40, min_peers=4, collect_timeout=3.0,
                                   propose_timeout=2.0, view_timeout=8.0)
    # Six shards, the joiner's its own: left to pick one by its peer id, it shared the only
    # trainer's shard in about one run of four, trained the very same update (same data, same
    # seed), and the clone test rightly dropped both, every round (with fewer than 3 trainers
    # the committee's clones and outliers are left out), so the joiner never trained in.
    configs = [dataclasses.replace(c, num_shards=6, shard_index=i) for i, c in enumerate(configs)]

    def admitted_at(events) -> int | None:
        return next((e["height"] for e in events if e["event"] == "committed"
                     and joiner_id in e["joined"]), None)

    def trained_in(events) -> int | None:
        """A block after the admission that aggregates the joiner's update, once the joiner
        holds it too."""
        admitted = admitted_at(events)
        held = max([e["height"] for e in events if e["peer"] == joiner_id and
                    e["event"] in ("committed", "synced")], default=-1)
        return next((e["height"] for e in events if e["event"] == "committed"
                     and admitted is not None and admitted < e["height"] <= held
                     and joiner_id in e["selected"]), None)

    joiner = run_with_late_peer(configs, log, ready=lambda ev: log.peers_at("committed", 1) == founders,
                                done=lambda ev: trained_in(ev) is not None)
    # No peer took the joiner's messages for an intruder's: only late or early gossip is refused.
    codes = {e["code"] for e in log.events if e["event"] == "rejected"}
    assert codes <= {"stale-round", "future-round"}, codes
    admitted = admitted_at(log.events)
    asked = [e["height"] for e in log.events
             if e["event"] == "join-requested" and e["peer"] == joiner_id]
    assert asked and admitted is not None and asked[0] <= admitted
    # Before its admission it only watched; from the next round on it is a trainer.
    roles = {e["height"]: e["role"] for e in log.events
             if e["event"] == "round" and e["peer"] == joiner_id}
    assert all(r == "observer" for h, r in roles.items() if h <= admitted)
    after = [r for h, r in roles.items() if h > admitted]
    assert after and set(after) == {"trainer"}
    height = trained_in(log.events)
    assert height > admitted
    joiner.store.close()
    report = verify_store(Genesis.load(configs[5].genesis_file),
                          BlockStore(configs[5].data_dir / "chain.sqlite"),
                          ModelStore(configs[5].data_dir / "models"))
    assert report.ok and report.blocks > height, report


def test_a_trainer_that_never_comes_up_leaves_the_pool_and_the_rest_go_on(tmp_path):
    cluster = Cluster(tmp_path, size=6, membership={"admission": "closed", "leave_after": 2})
    absent = cluster.ids[5]  # a trainer (the committee is the first four), never started
    assert absent not in cluster.genesis.committee
    running = set(cluster.ids) - {absent}
    log = EventLog()
    configs = cluster.node_configs(rounds=4, min_peers=4, collect_timeout=3.0,
                                   propose_timeout=2.0, view_timeout=8.0)

    async def scenario():
        with trio.fail_after(170):
            async with trio.open_nursery() as nursery:
                nodes = [Node(c, log) for c in configs[:5]]
                for node in nodes:
                    nursery.start_soon(node.run)
        return nodes

    nodes = trio.run(scenario)
    for height in range(4):
        assert log.peers_at("committed", height) == running
        assert len({e["hash"] for e in log.events if e["event"] == "committed"
                    and e["height"] == height}) == 1
    left = {e["height"] for e in log.events if e["event"] == "committed" and absent in e["left"]}
    assert left and min(left) <= 2, "the silent trainer was not recorded as leaving"
    chain = [nodes[0].store.get(h).block for h in range(4)]
    for block in chain[min(left) + 1:]:
        assert absent not in block.trainers  # out of the pool from the next round
    nodes[0].store.close()
    report = verify_store(cluster.genesis, BlockStore(configs[0].data_dir / "chain.sqlite"),
                          ModelStore(configs[0].data_dir / "models"))
    assert report.ok, report
