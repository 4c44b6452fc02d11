"""A peer started after round 5 of a running network syncs to its head, verifies, and trains."""


from chain.genesis import Genesis
from chain.store import BlockStore, ModelStore
from chain.verify import verify_store
from tests.cluster import Cluster, EventLog, run_with_late_peer


def test_a_peer_started_after_round_5_reaches_the_head_and_trains_in_later_rounds(tmp_path):
    cluster = Cluster(tmp_path, size=6)
    late = cluster.ids[5]  # a trainer (the committee is the first four, and stays: 2 trainers)
    early = set(cluster.ids) - {late}
    log = EventLog()
    configs = cluster.node_configs(rounds=14, min_peers=4, collect_timeout=3.0,
                                   propose_timeout=2.0, view_timeout=8.0)

    def trained_in(events) -> int | None:
        """A height after the late peer's first sync whose block aggregates its update, once
        the late peer holds that block too."""
        synced = [e["height"] for e in events if e["event"] == "synced" and e["peer"] == late]
        held = max([e["height"] for e in events if e["peer"] == late and
                    e["event"] in ("committed", "synced")], default=-1)
        for e in events:
            if e["event"] == "committed" and synced and synced[0] < e["height"] <= held and \
                    late in e["selected"]:
                return e["height"]
        return None

    joiner = run_with_late_peer(configs, log, ready=lambda ev: log.peers_at("committed", 5) == early,
                                done=lambda ev: trained_in(ev) is not None)
    synced = [e for e in log.events if e["event"] == "synced" and e["peer"] == late]
    assert synced[0]["from"] == 0 and synced[0]["height"] >= 5
    # It never took part in a round it had not caught up to: its first round follows the sync.
    rounds = [e["height"] for e in log.events if e["event"] == "round" and e["peer"] == late]
    assert rounds and min(rounds) > synced[0]["height"]
    height = trained_in(log.events)
    joiner.store.close()
    store = BlockStore(configs[5].data_dir / "chain.sqlite")
    report = verify_store(Genesis.load(configs[5].genesis_file), store,
                          ModelStore(configs[5].data_dir / "models"))
    assert report.ok and report.blocks > height, report
