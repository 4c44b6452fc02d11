"""Genesis `consensus = "members"` on real peers (libp2p hosts on loopback TCP): every member
runs pBFT on the committee's block and certificates need a quorum of the whole membership, so
committee members that equivocate cannot fork the chain (docs/consensus.md, "Committee
safety")."""

import pytest
import trio

from bft.quorum import quorum_size
from chain.genesis import Genesis
from chain.round_rules import evidence_member
from chain.verify import verify_store
from p2p_node.node import open_chain
from tests.cluster import Cluster, EventLog


def committed_hashes(log: EventLog, height: int) -> set[str]:
    return {e["hash"] for e in log.events if e["event"] == "committed" and e["height"] == height}


def run_cluster(cluster: Cluster, rounds: int, log: EventLog, timeout: float,
                waiting_for: set[str] | None = None, **overrides):
    """Run the cluster until every peer of `waiting_for` (default all) committed `rounds`
    blocks, then stop every peer."""
    waiting_for = set(cluster.ids) if waiting_for is None else waiting_for

    async def scenario():
        with trio.fail_after(timeout):
            async with trio.open_nursery() as nursery:
                nodes = await cluster.run(rounds=rounds, log=log, nursery=nursery, **overrides)
                await log.wait_for(
                    lambda ev: log.peers_at("committed", rounds - 1) >= waiting_for)
                nursery.cancel_scope.cancel()
        return nodes

    return trio.run(scenario)


def test_the_whole_membership_signs_every_certificate_on_real_peers(tmp_path):
    cluster = Cluster(tmp_path, size=5, committee_size=3,
                      genesis_fields={"consensus": "members"})
    log = EventLog()
    nodes = run_cluster(cluster, 3, log, 150, collect_timeout=8.0, propose_timeout=4.0)
    genesis = Genesis.load(tmp_path / "genesis.json")
    for height in range(3):
        assert len(committed_hashes(log, height)) == 1, f"peers disagree at height {height}"
    for node in nodes:
        node.store.close()
    for d in cluster.dirs:
        store, models = open_chain(d)
        report = verify_store(genesis, store, models)
        assert report.ok and report.blocks == 3, report.summary()
        for h in range(3):
            votes = store.get(h).certificate.votes
            # a quorum of the membership (4 of 5), not of the committee (3 of 3 would do)
            assert len(votes) >= quorum_size(5) > quorum_size(3) - 1
            assert {m for m, _ in votes} <= set(cluster.ids)
        store.close()


@pytest.mark.slow  # 7 in-process peers: 60-240 s on a loaded 2-core machine
def test_seat_holding_colluders_that_equivocate_cannot_fork_a_members_signed_chain(tmp_path):
    """Two colluders hold 2 of the 4 committee seats (more than its f = 1: captured) and sign a
    second, conflicting prepare and commit beside every vote (`equivocate_votes`; they lead
    no view of these heights, where they would also propose twice). The membership's quorum
    (5 of 7) holds at least 3 honest members, so no second value can be certified: one chain,
    both convicted. Over three heights: block 0 cannot record the proofs (found while it was
    voted on), so its election seats both again; banned from gossip, they send no score
    vector in round 1, whose block is made of the two honest members' vectors (the proofs it
    records lower the quorum to theirs) and seats neither again."""
    from dataclasses import replace

    cluster = Cluster(tmp_path, size=7, committee_size=4,
                      genesis_fields={"consensus": "members"})
    ranked = sorted(cluster.ids)
    # Validators lead by rotation, height + view: the last two lead no early view. (A
    # convicted leader is banned from gossip, so its views only cost a view timeout each.)
    colluders = ranked[-2:]
    honest_seats = [p for p in cluster.ids if p not in colluders][:2]
    cluster.genesis = replace(cluster.genesis, committee=tuple(colluders + honest_seats))
    cluster.genesis.save(tmp_path / "genesis.json")
    cluster.behaviours = {cluster.ids.index(p): {"byzantine": "equivocate_votes"}
                          for p in colluders}
    log = EventLog()
    rounds = 3
    honest = set(cluster.ids) - set(colluders)
    # Only honest peers are waited for: they ban the equivocators from gossip (peer scoring),
    # who then follow late, if at all.
    nodes = run_cluster(cluster, rounds, log, 360, waiting_for=honest, collect_timeout=5.0,
                        propose_timeout=3.0, linger=4.0)
    for height in range(rounds):
        assert len(committed_hashes(log, height)) == 1, f"a fork at height {height}"
    convicted = {e["member"] for e in log.events if e["event"] == "evidence"}
    assert convicted == set(colluders), "the equivocations were not caught"
    genesis = Genesis.load(tmp_path / "genesis.json")
    for node in nodes:
        node.store.close()
    honest_dirs = [d for d, p in zip(cluster.dirs, cluster.ids) if p not in colluders]
    for d in honest_dirs:
        store, models = open_chain(d)
        report = verify_store(genesis, store, models)
        chain = [store.get(h) for h in range(rounds)]
        store.close()
        assert report.ok and report.blocks == rounds, report.summary()
        for committed in chain:
            assert len(committed.certificate.votes) >= quorum_size(7)
        # block 0 re-seated them (its election could not know); block 1 records the proofs,
        # is made without their vectors, and seats neither again
        assert set(colluders) <= set(chain[1].block.committee)
        assert {evidence_member(pair[0]) for pair in chain[1].block.evidence} == set(colluders)
        assert not set(colluders) & set(chain[1].block.next_committee)
        assert not set(colluders) & set(chain[2].block.committee)


def test_genesis_new_writes_the_consensus_key_only_for_members(tmp_path):
    from p2p_node.cli import DEFAULT_CONSENSUS, main

    ids = Cluster(tmp_path / "ids", size=4).ids
    base = ["genesis", "new", "--committee-size", "3", *[a for p in ids for a in ("--member", p)]]
    assert main([*base, "--out", str(tmp_path / "c.json"), "--consensus", "committee"]) == 0
    assert main([*base, "--out", str(tmp_path / "m.json"), "--consensus", "members"]) == 0
    assert main([*base, "--out", str(tmp_path / "d.json")]) == 0
    committee, members = Genesis.load(tmp_path / "c.json"), Genesis.load(tmp_path / "m.json")
    assert "consensus" not in committee.to_dict()  # as every genesis before the key: same id
    assert members.to_dict()["consensus"] == "members"
    assert members.network_id != committee.network_id
    assert Genesis.load(tmp_path / "d.json").consensus == DEFAULT_CONSENSUS
