"""The attack lab's filters over the round core's actions: what each misbehaviour changes, and
that an honest peer gets no filter at all."""

import hashlib

import pytest

from chain.round_rules import scores_payload
from learning.attacks import make_attack
from p2p_node.attack_lab import (
    CommitteeMisbehaviour,
    Misbehaviours,
    ScoreLie,
    attack_filter,
    misbehaviour_for,
    score_lie_for,
)
from p2p_node.round_machine import OfferBlob, Persist, Publish, RoundMachine
from tests.test_round_inputs import _score
from tests.test_round_machine import ATTACKER, COMMITTEE, TRAINERS, context

PROPOSAL = {"view": 0, "value": b"block", "value_hash": hashlib.sha256(b"block").digest()}
ROUND = [Persist("pbft", b"state"), Publish("pre_prepare", PROPOSAL), Publish("prepare", {}),
         Publish("scores", {"s": []}), OfferBlob(b"tensors"), Publish("update", {})]


def test_an_honest_peer_installs_no_filter():
    assert misbehaviour_for("none") is None
    assert score_lie_for(None, frozenset()) is None
    assert score_lie_for(make_attack("sign_flip"), frozenset()) is None  # not a liar on scores
    assert attack_filter() is None
    assert attack_filter("none", make_attack("sign_flip"), frozenset({"me"})) is None
    with pytest.raises(ValueError):
        CommitteeMisbehaviour("nonsense")


def test_an_equivocating_leader_sends_two_signed_proposals_for_one_view():
    out = misbehaviour_for("equivocate").outputs(ROUND)
    proposals = [a for a in out if isinstance(a, Publish) and a.kind == "pre_prepare"]
    assert len(proposals) == 2 and proposals[0].payload == PROPOSAL
    assert proposals[1].payload["view"] == 0 and proposals[1].payload["value"] != b"block"
    assert [a for a in out if a not in proposals] == [a for a in ROUND if a not in proposals]


def test_a_silent_member_sends_no_pbft_message_but_still_its_scores():
    out = misbehaviour_for("silent").outputs(ROUND)
    assert [a.kind for a in out if isinstance(a, Publish)] == ["scores", "update"]
    assert Persist("pbft", b"state") in out


def test_a_withholding_trainer_announces_but_serves_nothing():
    out = misbehaviour_for("withhold").outputs(ROUND)
    assert not any(isinstance(a, OfferBlob) for a in out)
    assert Publish("update", {}) in out


def test_a_lying_member_rewrites_its_distances():
    lie = score_lie_for(make_attack("false_scores"), frozenset({"me"}))
    assert isinstance(lie, ScoreLie)
    honest = Publish("scores", scores_payload({"me": (b"m" * 32, 5.0), "other": (b"o" * 32, 1.0)}))
    (told,) = lie.outputs([honest])
    assert told == Publish("scores", scores_payload({"me": (b"m" * 32, 0.0),
                                                     "other": (b"o" * 32, 10.0)}))


def _scores(actions: list) -> list:
    return [a for a in actions if isinstance(a, Publish) and a.kind == "scores"]


def test_the_lie_is_the_machine_vector_rewritten_before_it_is_signed():
    """What the round machine measured, poisoned by the attack: the vector the member signs."""
    member, colluders = COMMITTEE[0], frozenset({ATTACKER, COMMITTEE[0]})
    attack = make_attack("false_scores")
    actions = _score(RoundMachine(context(), member), own=0)
    lied = attack_filter("none", attack, colluders).outputs(actions)
    [(honest, told)] = zip(_scores(actions), _scores(lied))
    measured = {t: (d, s) for t, d, s in honest.payload["scores"]}
    poisoned = attack.poison_scores({t: s for t, (_, s) in measured.items()}, colluders)
    assert told.payload == scores_payload({t: (measured[t][0], s) for t, s in poisoned.items()})
    assert told.payload != honest.payload
    assert {t for t, _, s in told.payload["scores"] if s == 0.0} == {ATTACKER}
    # Everything else goes through unchanged, the write-ahead record (the measured vector) too.
    assert [a for a in lied if a not in _scores(lied)] == \
        [a for a in actions if a not in _scores(actions)]


def test_a_lying_member_restarted_mid_round_signs_the_same_lie():
    member, colluders = COMMITTEE[0], frozenset({ATTACKER, COMMITTEE[0]})
    lie = attack_filter("none", make_attack("false_scores"), colluders)
    actions = _score(RoundMachine(context(), member), own=0)
    [persist] = [a for a in actions if isinstance(a, Persist) and a.key == "signed-scores"]
    restarted = RoundMachine(context(), member, persisted={persist.key: persist.value})
    again = lie.outputs(_score(restarted, own=5))  # trained again: other fresh distances
    assert _scores(again) == _scores(lie.outputs(actions))


def test_a_lying_and_equivocating_peer_gets_both_filters():
    both = attack_filter("equivocate", make_attack("false_scores"), frozenset({TRAINERS[0]}))
    assert isinstance(both, Misbehaviours)
    out = both.outputs([Publish("pre_prepare", PROPOSAL),
                        Publish("scores", scores_payload({TRAINERS[0]: (b"d" * 32, 3.0)}))])
    assert [a.kind for a in out] == ["pre_prepare", "pre_prepare", "scores"]
    assert out[2].payload == scores_payload({TRAINERS[0]: (b"d" * 32, 0.0)})
