"""Updates larger than a gossip message: announced by signed reference, fetched over a stream."""

import pytest
import trio

from chain.round_rules import trainers_for
from learning.model import ModelSpec, initial_state
from learning.tensors import state_bytes
from tests.cluster import Cluster, EventLog

#: An MLP whose update is ~9 MB: over 8 MiB, eight times gossip's 1 MiB message limit.
LARGE_MODEL = {"layers": [64, 2048, 1024, 10]}


def test_updates_over_8_mib_reach_the_committee_and_the_round_commits(tmp_path):
    update_bytes = len(state_bytes(initial_state(ModelSpec.from_dict(LARGE_MODEL), 1)))
    assert update_bytes >= 8 * 1024 * 1024
    cluster = Cluster(tmp_path, size=6, committee_size=4,
                      genesis_fields={"model": LARGE_MODEL})
    trainers = set(trainers_for(tuple(sorted(cluster.ids)), cluster.genesis.committee))
    log = EventLog()

    async def main():
        with trio.fail_after(240):
            async with trio.open_nursery() as nursery:
                await cluster.run(rounds=1, log=log, nursery=nursery)

    trio.run(main)
    for height in (0,):  # one round: the default tier's time (two took 40-50 s)
        committed = [e for e in log.events if e["event"] == "committed" and
                     e["height"] == height]
        assert {e["peer"] for e in committed} == set(cluster.ids)
        assert len({e["hash"] for e in committed}) == 1  # one chain
        assert set(committed[0]["selected"]) == trainers  # both large updates aggregated
    fetched = [e for e in log.events if e["event"] == "blob_fetched" and e["height"] == 0]
    # Every peer but the trainer itself fetched each trainer's update, all of it.
    assert {(e["peer"], e["trainer"]) for e in fetched} == {
        (p, t) for p in cluster.ids for t in trainers if p != t}
    assert {e["bytes"] for e in fetched} == {update_bytes}
    # The round's byte accounting saw those fetches: each peer took in every other trainer's
    # update, and the trainers served them (a serve may land in the server's next round).
    round0 = {e["peer"]: e["bytes"] for e in log.events
              if e["event"] == "committed" and e["height"] == 0}
    for peer, moved in round0.items():
        assert moved["blob_in"] == update_bytes * len(trainers - {peer})
        assert moved["gossip_in"] > 0 and moved["gossip_published"] > 0
    assert sum(round0[t]["blob_out"] for t in trainers) >= update_bytes


# slow tier: the default tier must stay under 10 minutes on a loaded CI machine (25-50 s here)
@pytest.mark.slow
def test_a_trainer_that_withholds_its_announced_bytes_is_left_out_and_scored_down(tmp_path):
    cluster = Cluster(tmp_path, size=6, committee_size=4,
                      genesis_fields={"model": LARGE_MODEL})
    trainers = sorted(trainers_for(tuple(sorted(cluster.ids)), cluster.genesis.committee))
    withholder, honest = trainers
    cluster.behaviours = {cluster.ids.index(withholder): {"byzantine": "withhold"}}
    log = EventLog()

    async def main():
        with trio.fail_after(240):
            async with trio.open_nursery() as nursery:
                # The collect deadline leaves time to train (~9 MB model) and fetch.
                return await cluster.run(rounds=1, log=log, nursery=nursery,
                                         collect_timeout=15.0, propose_timeout=3.0)

    nodes = trio.run(main)
    committed = [e for e in log.events if e["event"] == "committed"]
    assert {e["peer"] for e in committed} == set(cluster.ids)
    assert len({e["hash"] for e in committed}) == 1
    assert committed[0]["selected"] == [honest]  # decided without the withheld update
    reporters = {e["peer"] for e in log.events
                 if e["event"] == "withheld" and e["trainer"] == withholder}
    assert reporters == set(cluster.ids) - {withholder}
    for node in nodes:
        if node.me != withholder:
            evidence = {str(p): dict(r) for p, r in node.router.scorer.evidence.items()}
            assert evidence[withholder].get("withheld-update") == 1
            assert node.router.scorer.score(_id(withholder), []) < 0  # out of the mesh
    assert not any(e["event"] == "withheld" and e["trainer"] == honest for e in log.events)


def _id(peer: str):
    from libp2p.peer.id import ID

    return ID.from_base58(peer)
