"""The round core's typed inputs and the actions the driver carries out blindly: every timer
it arms (deadlines, stall watch, view), and every record it persists before it speaks."""

import cbor2

from bft.messages import KINDS as PBFT_KINDS
from p2p_node.round_machine import (
    COLLECT_TIMER,
    PERSISTED_KEYS,
    PROPOSE_TIMER,
    STALL_TIMER,
    HintBehind,
    Persist,
    Publish,
    Received,
    RoundMachine,
    RoundTimeouts,
    SetTimer,
    TimerFired,
    Trained,
)
from tests.test_round_machine import (
    ATTACKER,
    COMMITTEE,
    MEMBERS,
    NET,
    SIGNERS,
    TRAINERS,
    Network,
    context,
    update_of,
)
from gossip.envelope import Envelope
from learning.tensors import encode_state, state_hash
from tests.test_round_machine import BASE

TIMEOUTS = RoundTimeouts(collect=3.0, propose=2.0, view=None)


def test_start_arms_the_collect_deadline_and_the_stall_watch_and_members_the_view_timer():
    observer_like = RoundMachine(context(), TRAINERS[0], timeouts=TIMEOUTS)
    assert observer_like.start() == [SetTimer(COLLECT_TIMER, 0, 3.0),
                                     SetTimer(STALL_TIMER, 0, 15.0)]
    member = RoundMachine(context(), COMMITTEE[0], timeouts=TIMEOUTS)
    timers = [a for a in member.start() if isinstance(a, SetTimer)]
    assert SetTimer("view", 0, 15.0) in timers  # base view timeout: collect + propose + 10


def test_the_collect_deadline_arms_the_propose_deadline_and_the_stall_watch_rearms():
    machine = RoundMachine(context(), COMMITTEE[0], timeouts=TIMEOUTS)
    machine.start()
    actions = machine.feed(TimerFired(0, COLLECT_TIMER, 0))
    assert actions[0] == SetTimer(PROPOSE_TIMER, 0, 2.0) and machine.collect_expired
    machine.feed(TimerFired(0, PROPOSE_TIMER, 0))
    assert machine.propose_expired
    assert machine.feed(TimerFired(0, STALL_TIMER, 0)) == [HintBehind(),
                                                           SetTimer(STALL_TIMER, 0, 15.0)]


def test_inputs_of_another_round_are_ignored():
    machine = RoundMachine(context(), COMMITTEE[0], timeouts=TIMEOUTS)
    machine.start()
    assert machine.feed(TimerFired(1, COLLECT_TIMER, 0)) == [] and not machine.collect_expired
    assert machine.feed(Trained(1, update_of(COMMITTEE[0]), 10)) == []
    assert machine.own_reference is None


def test_a_trainer_persists_its_update_before_publishing_it():
    machine = RoundMachine(context(), TRAINERS[0])
    persist, publish = machine.feed(Trained(0, update_of(TRAINERS[0]), 10))
    assert isinstance(persist, Persist) and persist.key == "signed-update"
    assert isinstance(publish, Publish) and publish.kind == "update"
    assert cbor2.loads(persist.value) == [0, publish.payload]


def _score(machine: RoundMachine, own: int) -> list:
    """Feed a member every trainer's update and its own, then let the collect deadline pass."""
    for trainer in TRAINERS:
        body = {"model": encode_state(update_of(trainer)), "samples": 5,
                "base": state_hash(BASE)}
        machine.feed(Received(Envelope("update", NET, 0, "", body).signed_by(SIGNERS[trainer])))
    actions = machine.feed(Trained(0, update_of(MEMBERS[own]), 10))
    return actions + machine.feed(TimerFired(0, COLLECT_TIMER, 0))


def test_a_member_restarted_after_signing_its_score_vector_sends_the_same_vector():
    member = COMMITTEE[0]
    first = RoundMachine(context(), member)
    actions = _score(first, own=0)
    [persist] = [a for a in actions if isinstance(a, Persist) and a.key == "signed-scores"]
    [scores] = [a for a in actions if isinstance(a, Publish) and a.kind == "scores"]
    assert actions.index(persist) < actions.index(scores)  # on disk before it is signed
    # The restarted process trains again, from another reference (other threads, another CPU):
    # its fresh distances differ, but it publishes the vector it signed before, bit for bit.
    fresh = [a for a in _score(RoundMachine(context(), member), own=5)
             if isinstance(a, Publish) and a.kind == "scores"]
    assert fresh[0].payload != scores.payload
    restarted = RoundMachine(context(), member, persisted={persist.key: persist.value})
    again = [a for a in _score(restarted, own=5) if isinstance(a, Publish) and a.kind == "scores"]
    assert again == [scores]
    signed = Envelope("scores", NET, 0, "", scores.payload).signed_by(SIGNERS[member])
    resigned = Envelope("scores", NET, 0, "", again[0].payload).signed_by(SIGNERS[member])
    assert signed.encode() == resigned.encode()  # Ed25519 is deterministic: no second vector


def test_a_record_of_an_earlier_round_is_not_replayed():
    member = COMMITTEE[0]
    stale = cbor2.dumps([7, {"s": []}], canonical=True)
    assert RoundMachine(context(), member, persisted={"signed-scores": stale}).written_ahead == {}


def test_the_pbft_state_is_persisted_before_every_vote_and_restored_from_it():
    net = Network()
    persisted: dict[str, list[Persist]] = {p: [] for p in MEMBERS}
    real_emit = net.emit

    def emit(peer, actions):
        for i, action in enumerate(actions):
            if isinstance(action, Publish) and action.kind in PBFT_KINDS:
                assert any(isinstance(a, Persist) and a.key == "pbft" for a in actions[:i])
            if isinstance(action, Persist):
                persisted[peer].append(action)
        real_emit(peer, actions)

    net.emit = emit
    net.run()
    assert set(net.commits) == set(MEMBERS) and ATTACKER not in next(
        iter(net.commits.values())).block.selected
    leader = context().leader
    last = [p for p in persisted[leader] if p.key == "pbft"][-1]
    assert "pbft" in PERSISTED_KEYS
    restored = RoundMachine(context(), leader, persisted={"pbft": last.value})
    assert restored.consensus.snapshot() == cbor2.loads(last.value)
