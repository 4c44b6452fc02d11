"""DP on the protocol: genesis training.dp, the DP parameters updates declare and blocks record,
and the noise-debiased scoring members use on a DP network."""

import dataclasses
import math

import cbor2
import pytest
import torch

from chain.block import Block, BlockError, UpdateRef
from chain.genesis import Genesis, GenesisError
from chain.round_rules import check_recorded_dp
from learning.cmfl import RoundConfig, select_round
from learning.privacy import DpPolicy, DpReport, noise_consistent
from learning.scoring import score_updates
from learning.simulation import RunSpec, run
from p2p_node.round_machine import RoundMachine
from tests.test_round_machine import (
    ATTACKER,
    MEMBERS,
    TRAINERS,
    Network,
    agreed_block,
    context,
    update_of,
)
from chain.genesis import SELECTION_PRESETS

#: the scored rule (an elected committee scores) these tests exercise; judged rounds, the
#: default, are tests/test_judged_round.py and tests/test_judged_net.py
SCORED = SELECTION_PRESETS["cmfl-clip-far"]

#: A policy for the toy model of test_round_machine: its noise (variance ~1e-6 a coordinate)
#: fits in the honest updates there (0.1 a coordinate), so they pass noise_consistent.
POLICY = DpPolicy(noise_multiplier=1.0, max_grad_norm=1.0, epochs=1, lr=0.01, batch_size=10)


def samples_of(peer):
    return 10 + MEMBERS.index(peer)


def dp_block(refs):
    return Block(height=0, prev_hash=b"\x01" * 32, network_id=b"\x02" * 32,
                 committee=(MEMBERS[0],), trainers=(MEMBERS[1],), updates=tuple(refs),
                 score_vectors=(), selected=(MEMBERS[1],), model_hash=b"\x03" * 32,
                 next_committee=(MEMBERS[0],))


# --- genesis ---------------------------------------------------------------------------------

def test_genesis_dp_is_optional_validated_and_read_into_a_policy():
    members = MEMBERS[:5]
    plain = Genesis("t", members, members[:3], selection=SCORED)
    assert DpPolicy.from_training(plain.training) is None
    training = {**plain.training, "dp": {"noise_multiplier": 1.0, "max_grad_norm": 2}}
    g = Genesis.from_dict({**plain.to_dict(), "training": training})
    assert DpPolicy.from_training(g.training) == DpPolicy(1.0, 2.0, 2, 0.1, 16)
    assert g.network_id != plain.network_id
    for bad, why in [({"max_grad_norm": 1.0}, "needs noise_multiplier"),
                     ({"noise_multiplier": 0.0, "max_grad_norm": 1.0}, "must be > 0"),
                     ({"noise_multiplier": 1.0, "max_grad_norm": -1}, "must be > 0"),
                     ({"noise_multiplier": "1", "max_grad_norm": 1.0}, "finite number"),
                     ({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1.0}, "delta"),
                     ({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "accountant": "gdp"},
                      "accountant"),
                     ({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "epsilon": 3}, "only"),
                     ([1.0, 1.0], "must be a dict")]:
        with pytest.raises(GenesisError, match=f"training.dp: .*{why}"):
            Genesis.from_dict({**plain.to_dict(), "training": {**plain.training, "dp": bad}})


# --- the block's DP parameters ------------------------------------------------------------------

def test_update_refs_without_dp_encode_as_before_and_with_dp_round_trip_canonically():
    plain = dp_block([UpdateRef(MEMBERS[1], b"\x04" * 32, 12)])
    # The encoding of blocks before DP existed: a 3-element list per update.
    old = {**plain.to_obj(), "updates": [[MEMBERS[1], b"\x04" * 32, 12]]}
    assert plain.encode() == cbor2.dumps(old, canonical=True)
    report = POLICY.report(12)
    with_dp = dp_block([UpdateRef(MEMBERS[1], b"\x04" * 32, 12, report)])
    data = with_dp.encode()
    assert Block.decode(data) == with_dp and Block.decode(data).encode() == data
    assert cbor2.loads(data)["updates"][0][3] == report.to_dict()
    assert with_dp.hash() != plain.hash()


@pytest.mark.parametrize("mutate, why", [
    (lambda d: {**d, "noise_multiplier": 1}, "floats"),            # would re-encode differently
    (lambda d: {**d, "epsilon": float("nan")}, "non-finite-float"),  # the CBOR profile's refusal
    (lambda d: {**d, "steps": True}, "steps"),
    (lambda d: {**d, "sample_rate": 2.0}, "sample_rate"),
    (lambda d: {**d, "max_grad_norm": 0.0}, "max_grad_norm"),
    (lambda d: {k: v for k, v in d.items() if k != "delta"}, "keys"),
    (lambda d: [d], "keys"),
])
def test_malformed_dp_parameters_in_a_block_are_refused(mutate, why):
    obj = dp_block([UpdateRef(MEMBERS[1], b"\x04" * 32, 12, POLICY.report(12))]).to_obj()
    obj["updates"][0][3] = mutate(obj["updates"][0][3])
    with pytest.raises(BlockError, match=why):
        Block.decode(cbor2.dumps(obj, canonical=True))


def test_malformed_update_refs_are_refused():
    obj = dp_block([UpdateRef(MEMBERS[1], b"\x04" * 32, 12, POLICY.report(12))]).to_obj()
    for bad in ([*obj["updates"][0], 1], obj["updates"][0][:2], "ref"):
        with pytest.raises(BlockError):
            Block.from_obj({**obj, "updates": [bad]})
    with pytest.raises(BlockError):
        Block.from_obj({**obj, "updates": {"a": 1}})


def test_a_verifier_wants_the_genesis_dp_recorded_exactly_when_the_genesis_sets_it():
    ctx, dp_ctx = context(), dataclasses.replace(context(), dp=POLICY)
    ok = UpdateRef(MEMBERS[5], b"\x04" * 32, 12, POLICY.report(12))
    check_recorded_dp(dp_ctx, (ok,))
    check_recorded_dp(ctx, (dataclasses.replace(ok, dp=None),))
    with pytest.raises(BlockError, match="without DP"):
        check_recorded_dp(ctx, (ok,))
    with pytest.raises(BlockError, match="no DP parameters"):
        check_recorded_dp(dp_ctx, (dataclasses.replace(ok, dp=None),))
    weak = dataclasses.replace(POLICY, noise_multiplier=0.5).report(12)
    with pytest.raises(BlockError, match="weaker noise"):
        check_recorded_dp(dp_ctx, (dataclasses.replace(ok, dp=weak),))
    with pytest.raises(BlockError, match="epsilon"):  # an understated epsilon
        check_recorded_dp(dp_ctx, (dataclasses.replace(
            ok, dp=dataclasses.replace(ok.dp, epsilon=ok.dp.epsilon / 2)),))
    with pytest.raises(BlockError, match="samples"):  # the schedule of another sample count
        check_recorded_dp(dp_ctx, (dataclasses.replace(ok, samples=40),))


# --- the round machine ----------------------------------------------------------------------------

class DpNetwork(Network):
    """test_round_machine's network on a DP genesis; `declare(peer)` is what a peer's update
    declares (default: the policy's report for its sample count)."""

    def __init__(self, declare=None, policy=POLICY):
        super().__init__()
        ctx = dataclasses.replace(context(), dp=policy)
        self.machines = {p: RoundMachine(ctx, p) for p in MEMBERS}
        self.declare = declare or (lambda peer: POLICY.report(samples_of(peer)))

    def run(self):
        for peer, machine in self.live().items():
            self.emit(peer, machine.start())
            self.emit(peer, machine.on_own_update(update_of(peer), samples_of(peer),
                                                  self.declare(peer)))
        self.settle()


def test_on_a_dp_network_the_block_records_every_selected_updates_dp_parameters():
    net = DpNetwork()
    net.run()
    assert set(net.commits) == set(MEMBERS) and not net.rejections
    block = agreed_block(net)
    assert ATTACKER not in block.selected and len(block.selected) == 2
    assert [u.dp for u in block.updates] == [POLICY.report(samples_of(u.peer))
                                             for u in block.updates]
    assert Block.decode(block.encode()) == block


def test_dp_parameters_travel_with_blob_referenced_updates_too(monkeypatch):
    import p2p_node.round_machine as round_machine

    inline = DpNetwork()
    inline.run()
    monkeypatch.setattr(round_machine, "INLINE_UPDATE_BYTES", 0)  # every update by reference
    net = DpNetwork()
    net.run()
    assert set(net.commits) == set(MEMBERS) and not net.rejections and net.blobs
    assert agreed_block(net).selected == agreed_block(inline).selected
    assert [u.dp for u in agreed_block(net).updates] == [u.dp for u in agreed_block(inline).updates]


@pytest.mark.parametrize("declared, reason", [
    (None, "declares no DP parameters"),
    (dataclasses.replace(POLICY, noise_multiplier=0.5), "weaker noise than the genesis requires"),
    (dataclasses.replace(POLICY, noise_multiplier=2.0), "more noise than the genesis sets"),
    (dataclasses.replace(POLICY, max_grad_norm=0.5), "max_grad_norm"),
    ("garbage", "must be a dict"),
])
def test_a_dp_network_refuses_updates_without_or_with_other_dp_parameters(declared, reason):
    trainer = TRAINERS[0]

    def declare(peer):
        if peer != trainer:
            return POLICY.report(samples_of(peer))
        return declared.report(samples_of(peer)) if isinstance(declared, DpPolicy) else declared

    net = DpNetwork(declare)
    if declared == "garbage":  # past on_own_update, which only takes reports: forge the body
        machine = net.machines[trainer]
        real = machine.on_own_update
        machine.on_own_update = lambda s, n, dp: [dataclasses.replace(
            a, payload={**a.payload, "dp": "garbage"}) for a in real(s, n, POLICY.report(n))]
    net.run()
    net.expire("collect")  # the refused update will not come: score without it
    refused = {(peer, r.sender) for peer, r in net.rejections if r.kind == "update"}
    assert refused == {(p, trainer) for p in MEMBERS}  # the sender hears its own too
    assert all(reason in r.reason for _, r in net.rejections)
    block = agreed_block(net)
    assert trainer not in block.selected and block.updates


def test_a_network_without_dp_refuses_updates_that_declare_it():
    net = Network()
    trainer = TRAINERS[0]
    machine = net.machines[trainer]
    real = machine.on_own_update
    machine.on_own_update = lambda s, n, dp=None: [dataclasses.replace(
        a, payload={**a.payload, "dp": POLICY.report(n).to_dict()}) for a in real(s, n)]
    net.run()
    net.expire("collect")
    assert {r.reason for _, r in net.rejections} == {
        "DP parameters: DP parameters on a network without DP (no genesis training.dp)"}


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")  # sigma 100: tiny eps
def test_an_update_too_small_for_the_noise_it_declares_is_refused():
    loud = DpPolicy(noise_multiplier=100.0, max_grad_norm=1.0, epochs=1, lr=0.01, batch_size=10)
    net = DpNetwork(lambda peer: loud.report(samples_of(peer)), policy=loud)
    net.run()
    assert {r.reason for _, r in net.rejections} == {
        "DP parameters: update too small to hold the DP noise it declares"}


# --- scoring ------------------------------------------------------------------------------------

def test_debiased_scoring_keeps_a_noise_skipping_attacker_out_where_plain_scoring_picks_it():
    """Honest updates: one signal plus DP noise; the attacker sends the flipped signal without
    noise. Plain distances rank it closest to every member (the noise dominates); debiased
    distances rank it last."""
    d, var = 5000, 2e-3  # d * var = 10: the noise's squared norm, against a signal's of 1
    gen = torch.Generator().manual_seed(7)
    base = {"w": torch.zeros(d)}
    signal = torch.full((d,), 1 / math.sqrt(d))

    def honest():
        return {"w": signal + math.sqrt(var) * torch.randn(d, generator=gen)}

    members = {f"m{i}": honest() for i in range(3)}
    updates = {f"t{i}": honest() for i in range(5)} | {"zattacker": {"w": -signal}}
    # Declaring no noise: the debiasing takes out only the members' own noise.
    variances = {t: var for t in updates} | {"zattacker": 0.0}
    config = RoundConfig(rule="S1", fraction=0.5)
    plain = select_round({m: score_updates(r, updates) for m, r in members.items()}, config)
    debiased = select_round({m: score_updates(r, updates, variances, var)
                             for m, r in members.items()}, config)
    assert "zattacker" in plain.selected
    assert "zattacker" not in debiased.selected
    assert max(debiased.combined, key=debiased.combined.get) == "zattacker"
    # Declaring the noise it skipped would get its noise share subtracted too, but it is
    # refused first: its update is too small to hold that noise (chain.round_rules.update_dp).
    assert not noise_consistent(base, updates["zattacker"], var)
    assert all(noise_consistent(base, updates[t], var) for t in updates if t != "zattacker")


def test_the_harness_runs_dp_peers_through_the_same_debiased_path_deterministically():
    spec = RunSpec(rule="cmfl-s1", attack="sign_flip", fraction=0.2, n_peers=8,
                   committee_size=3, rounds=2, dp_noise_multiplier=1.0, dp_attacker_noise=False)
    first, again = run(spec), run(spec)
    assert first.accuracy == again.accuracy
    assert first.attackers_selected == [0, 0]  # refused as noise-inconsistent, or ranked last
    plain = run(dataclasses.replace(spec, dp_noise_multiplier=0.0))
    assert plain.accuracy != first.accuracy


def test_a_policy_report_is_what_dp_training_reports():
    from learning.data import load_digits_split, shard
    from learning.model import ModelSpec, initial_state
    from learning.privacy import train_local_dp

    train, _ = load_digits_split(0)
    data = shard(train, 10, 0, 0)
    spec = ModelSpec()
    _, report = train_local_dp(spec, initial_state(spec, 0), data, 1, 0.1, 16, 0, 1.0, 1.0)
    policy = DpPolicy(1.0, 1.0, 1, 0.1, 16)
    assert report == policy.report(len(data))
    policy.check(DpReport.from_dict(report.to_dict()), len(data))


# --- real peers ---------------------------------------------------------------------------------

def test_real_peers_on_a_dp_genesis_commit_blocks_recording_dp_and_report_epsilon(tmp_path):
    import trio

    from chain.verify import verify_store
    from tests.cluster import Cluster, EventLog

    cluster = Cluster(tmp_path, size=5, committee_size=3)
    dp = {"noise_multiplier": 1.0, "max_grad_norm": 1.0}
    # Every scored trainer selected (S1 over all of them): this test is about what DP records,
    # not about selection. Under cmfl-clip-far two DP trainers (noise-dominated updates the
    # committee scores alike) were sometimes both left out as clones, so a block had no update.
    cluster.genesis = dataclasses.replace(
        cluster.genesis, training={**cluster.genesis.training, "dp": dp},
        selection=RoundConfig(rule="S1", fraction=1.0).to_selection())
    cluster.genesis.save(tmp_path / "genesis.json")
    policy = DpPolicy.from_training(cluster.genesis.training)
    log = EventLog()

    async def main():
        with trio.fail_after(180):
            async with trio.open_nursery() as nursery:
                return await cluster.run(rounds=2, log=log, nursery=nursery)

    nodes = trio.run(main)
    committed = [e for e in log.events if e["event"] == "committed"]
    assert {(e["peer"], e["height"]) for e in committed} == {
        (p, h) for p in cluster.ids for h in (0, 1)}
    for height in (0, 1):
        assert len({e["hash"] for e in committed if e["height"] == height}) == 1
    for node in nodes:
        for height in (0, 1):
            block = node.store.get(height).block
            assert block.updates and all(
                u.dp == policy.report(u.samples) for u in block.updates)
        # Every member trains every round (as trainer or as committee member): two rounds spent.
        assert node.privacy is not None and len(node.privacy.rounds) == 2
    for e in committed:
        spent = e["dp"]
        assert spent["rounds_trained"] == e["height"] + 1
        assert 0 < spent["epsilon_round"] <= spent["epsilon_total"] < math.inf
    last = [e["dp"] for e in committed if e["height"] == 1]
    assert all(d["epsilon_total"] > d["epsilon_round"] for d in last)
    report = verify_store(cluster.genesis, nodes[0].store, nodes[0].models)
    assert report.ok and report.blocks == 2, report.summary()
