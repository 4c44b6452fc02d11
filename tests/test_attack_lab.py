"""The attack lab's filters over the round core's actions: what each misbehaviour changes, and
that an honest peer gets no filter at all."""

import hashlib

import pytest

from learning.attacks import make_attack
from p2p_node.attack_lab import CommitteeMisbehaviour, misbehaviour_for, score_tamper_for
from p2p_node.round_machine import OfferBlob, Persist, Publish

PROPOSAL = {"view": 0, "value": b"block", "value_hash": hashlib.sha256(b"block").digest()}
ROUND = [Persist("pbft", b"state"), Publish("pre_prepare", PROPOSAL), Publish("prepare", {}),
         Publish("scores", {"s": []}), OfferBlob(b"tensors"), Publish("update", {})]


def test_an_honest_peer_installs_no_filter():
    assert misbehaviour_for("none") is None
    assert score_tamper_for(None, frozenset()) is None
    assert score_tamper_for(make_attack("sign_flip"), frozenset()) is None  # not a liar on scores
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
    tamper = score_tamper_for(make_attack("false_scores"), frozenset({"me"}))
    assert tamper is not None
    assert tamper({"me": 5.0, "other": 1.0}) != {"me": 5.0, "other": 1.0}
