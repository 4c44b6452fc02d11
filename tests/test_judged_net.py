"""Judged rounds (genesis rules cmfl-choose-clipped, the default, cmfl-choose-pledged and
cmfl-choose; learning.choice) on real peers: libp2p hosts on
loopback TCP, real torch training on digits. Every member trains, judges the round's
candidate models on its own data and signs its vote vector; the block's model is the
candidate the votes choose, and every peer re-derives it."""

import pytest
import trio

from bft.quorum import quorum_size
from chain.genesis import SELECTION_PRESETS, Genesis
from chain.position import ChainPosition
from chain.round_rules import counted_votes, outline_round, parse_votes_body
from gossip.envelope import decode_envelope
from chain.verify import verify_store
from learning.data import load_digits_split
from learning.model import ModelSpec
from learning.training import evaluate
from learning.tensors import state_from_bytes
from p2p_node.node import open_chain
from tests.cluster import Cluster, EventLog


def run_until_committed(cluster: Cluster, log: EventLog, rounds: int, peers: set[str],
                        deadline: float, **timeouts: float) -> None:
    """Run the cluster's peers until every one of `peers` committed the last round."""
    async def scenario():
        with trio.fail_after(deadline):
            async with trio.open_nursery() as nursery:
                nodes = await cluster.run(rounds=rounds, log=log, nursery=nursery, **timeouts)
                await log.wait_for(lambda ev: log.peers_at("committed", rounds - 1) >= peers)
                nursery.cancel_scope.cancel()
        return nodes

    try:
        nodes = trio.run(scenario)
    except trio.TooSlowError:
        raise AssertionError(f"not every peer committed {rounds} rounds in {deadline:.0f} s: "
                             f"{log.progress()}") from None
    for node in nodes:
        node.store.close()


def head_accuracy(genesis: Genesis, store, models, rounds: int) -> float:
    """The test accuracy on digits of the model of the chain's block at height rounds - 1."""
    _, test = load_digits_split(genesis.seed)
    head = store.get(rounds - 1).block
    return evaluate(ModelSpec(tuple(genesis.model["layers"])),
                    state_from_bytes(models.get(head.model_hash)), test)


# the default rule (pledged votes, clipped subsets) in the default tier, the others in the slow
# tier; the pledged stall of the eighth pass was py-libp2p's per-subscription queue of 32
# dropping pBFT commits under load (docs/network.md)
RULES = ["cmfl-choose-clipped", pytest.param("cmfl-choose-pledged", marks=pytest.mark.slow),
         pytest.param("cmfl-choose", marks=pytest.mark.slow)]
LIE_EVENT = {"cmfl-choose": "rushing-lie", "cmfl-choose-pledged": "blind-lie",
             "cmfl-choose-clipped": "blind-lie"}


@pytest.mark.parametrize("preset", RULES)
def test_judged_rounds_commit_one_chain_that_every_peer_re_derives(tmp_path, preset):
    cluster = Cluster(tmp_path, size=6, committee_size=4, attacks={5: "sign_flip"},
                      genesis_fields={"selection": SELECTION_PRESETS[preset]})
    log = EventLog()
    rounds = 3
    run_until_committed(cluster, log, rounds, set(cluster.ids), 600,
                        collect_timeout=10.0, propose_timeout=5.0)
    for height in range(rounds):
        hashes = {e["hash"] for e in log.events
                  if e["event"] == "committed" and e["height"] == height}
        assert len(hashes) == 1, f"peers disagree at height {height}"
    genesis = Genesis.load(tmp_path / "genesis.json")
    members = tuple(sorted(cluster.ids))
    for d in cluster.dirs:
        store, models = open_chain(d)
        report = verify_store(genesis, store, models)
        assert report.ok and report.blocks == rounds, report.summary()
        store.close()
    store, models = open_chain(cluster.dirs[0])
    position = ChainPosition(genesis)
    for h in range(rounds):
        committed = store.get(h)
        block = committed.block
        # every member trains and judges: no elected committee
        assert block.trainers == members and block.committee == members
        assert len(block.score_vectors) >= quorum_size(len(members))
        ctx = position.context()
        assert ctx.selection.choice.pledged == (preset != "cmfl-choose")
        assert ctx.selection.choice.clip_subsets == (preset == "cmfl-choose-clipped")
        vectors = {decode_envelope(r).sender: parse_votes_body(ctx, decode_envelope(r))
                   for r in block.score_vectors}
        assert len(counted_votes(ctx, vectors)) >= quorum_size(len(members))
        outline = outline_round(ctx, list(block.score_vectors))
        assert outline.candidate is not None and block.selected == outline.candidate.trainers
        position.advance(committed)
    accuracy = head_accuracy(genesis, store, models, rounds)
    assert accuracy > 0.3, accuracy  # 3 rounds of digits from a random start (chance 0.1)
    store.close()


@pytest.mark.parametrize("preset", RULES)
def test_colluding_judges_that_craft_lie_and_equivocate_cannot_fork_or_stop_the_chain(tmp_path,
                                                                                     preset):
    """Two of seven members (f = 2) collude on every lever the judged rule leaves them: they
    craft their updates from every honest update of the round (omniscient clip_push_near), hold
    their votes back until the honest votes are in and then send the rule-aware lie
    (attack_lab.RushingJudge; on a pledged network they cannot read them first and pledge
    the blind lie), and one of them also equivocates its pBFT votes. The
    five honest peers still commit one chain, round after round, that each of them verifies.
    (The model's quality under this attack is the harness's measurement, not this test's.)"""
    attack = "clip_push_near"
    cluster = Cluster(tmp_path, size=7, committee_size=4, attacks={5: attack, 6: attack},
                      genesis_fields={"selection": SELECTION_PRESETS[preset]})
    a, b = cluster.ids[5], cluster.ids[6]
    cluster.behaviours = {5: {"colluders": [b], "byzantine": "equivocate_votes"},
                          6: {"colluders": [a]}}
    honest = set(cluster.ids[:5])
    log = EventLog()
    rounds = 2
    run_until_committed(cluster, log, rounds, honest, 900,
                        collect_timeout=16.0, propose_timeout=8.0)
    for height in range(rounds):
        hashes = {e["hash"] for e in log.events if e["event"] == "committed"
                  and e["height"] == height and e["peer"] in honest}
        assert len(hashes) == 1, f"honest peers disagree at height {height}: {hashes}"
    lies = [e for e in log.events if e["event"] == LIE_EVENT[preset]]
    assert {e["peer"] for e in lies if e["height"] == 0} == {a, b}, "the colluders never lied"
    # every honest peer caught the equivocated pBFT vote first-hand
    convicted = {(e["peer"], e["member"]) for e in log.events if e["event"] == "evidence"}
    assert {(p, a) for p in honest} <= convicted
    genesis = Genesis.load(tmp_path / "genesis.json")
    for d in cluster.dirs[:5]:
        store, models = open_chain(d)
        report = verify_store(genesis, store, models)
        assert report.ok and report.blocks == rounds, report.summary()
        store.close()


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["cmfl-choose-clipped", "cmfl-choose-pledged"])
def test_liars_aiming_at_plain_harm_do_not_stop_the_chain(tmp_path, preset):
    """Two of seven members send all-zero models (`zeros`) and vote, pledged blind, for the
    candidate the honest judges like least (`--liar-target worst`: in the harness this takes
    the pledged rule without clipped subsets to 0.10; docs/learning.md, ninth pass). Under the
    default rule and the pledged one the five honest peers commit one chain and the model
    still learns in 4 rounds (the collapse takes longer: the harness measures it)."""
    cluster = Cluster(tmp_path, size=7, committee_size=4, attacks={5: "zeros", 6: "zeros"},
                      genesis_fields={"selection": SELECTION_PRESETS[preset]})
    a, b = cluster.ids[5], cluster.ids[6]
    cluster.behaviours = {5: {"colluders": [b], "liar_target": "worst"},
                          6: {"colluders": [a], "liar_target": "worst"}}
    honest = set(cluster.ids[:5])
    log = EventLog()
    rounds = 4
    run_until_committed(cluster, log, rounds, honest, 900,
                        collect_timeout=10.0, propose_timeout=5.0)
    lies = [e for e in log.events if e["event"] == "blind-lie"]
    assert {e["peer"] for e in lies} == {a, b} and {e["target"] for e in lies} == {"worst"}
    heads = {e["hash"] for e in log.events if e["event"] == "committed"
             and e["height"] == rounds - 1 and e["peer"] in honest}
    assert len(heads) == 1, heads
    genesis = Genesis.load(tmp_path / "genesis.json")
    store, models = open_chain(cluster.dirs[0])
    report = verify_store(genesis, store, models)
    assert report.ok and report.blocks == rounds, report.summary()
    accuracy = head_accuracy(genesis, store, models, rounds)
    assert accuracy > 0.3, accuracy  # 4 rounds of digits from a random start (chance 0.1)
    store.close()
