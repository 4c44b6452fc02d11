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


def test_a_double_voting_member_signs_a_second_vote_beside_each_prepare_and_commit():
    votes = [Publish("prepare", {"view": 1, "value_hash": b"h" * 32}),
             Publish("commit", {"view": 1, "value_hash": b"h" * 32})]
    out = misbehaviour_for("equivocate_votes").outputs(ROUND[:2] + votes)
    kinds = [a.kind for a in out if isinstance(a, Publish)]
    assert kinds == ["pre_prepare", "pre_prepare", "prepare", "prepare", "commit", "commit"]
    second = [a.payload for a in out if isinstance(a, Publish) and a.kind == "prepare"][1]
    assert second["view"] == 1 and second["value_hash"] not in (b"h" * 32, PROPOSAL["value_hash"])
    # colluders' second votes for one real value name one same other value
    assert misbehaviour_for("equivocate_votes").outputs(votes[:1])[1] == out[4]
    # the plain equivocating leader votes once
    assert [a.kind for a in misbehaviour_for("equivocate").outputs(votes)] == ["prepare", "commit"]


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


# omniscient colluders (p2p_node.attack_lab.OmniscientColluder; on real peers:
# tests/test_colluders_net.py) -----------------------------------------------------------------
def _round(seed: int = 0):
    import torch

    from chain.round_rules import RoundContext
    from learning.model import ModelSpec, initial_state

    base = initial_state(ModelSpec(), seed)
    members = ("c1", "c2", "h1", "h2", "h3", "x1", "x2")
    ctx = RoundContext(b"n" * 32, 4, b"p" * 32, members, ("c1", "h1"),
                       ("c2", "h2", "h3", "x1", "x2"), base, b"b" * 32)
    gen = torch.Generator().manual_seed(seed)

    def trained(scale: float):
        return {k: v + scale * torch.randn(v.shape, generator=gen, dtype=v.dtype)
                for k, v in base.items()}

    return ctx, {p: trained(0.05) for p in ("c2", "h2", "h3", "x1", "x2")}


def test_only_an_omniscient_attack_makes_a_colluder():
    from p2p_node.attack_lab import OmniscientColluder

    assert OmniscientColluder.for_peer(None, "x1", [], 20.0) is None
    assert OmniscientColluder.for_peer(make_attack("sign_flip"), "x1", ["x2"], 20.0) is None
    assert OmniscientColluder.for_peer(make_attack("alie"), "x1", ["x2"], 20.0) is None
    c = OmniscientColluder.for_peer(make_attack("min_max"), "x1", ["x2"], 20.0)
    assert c is not None and c.colluders == {"x1", "x2"} and c.fellows == {"x2"}
    assert c.send_at == 15.0  # a quarter of the collect deadline before it
    assert OmniscientColluder.for_peer(make_attack("min_max"), "x1", [], 2.0).send_at == 1.0


def test_a_colluder_waits_for_every_honest_trainer_and_fellow_or_the_deadline():
    from p2p_node.attack_lab import OmniscientColluder

    ctx, models = _round()
    c = OmniscientColluder.for_peer(make_attack("min_max"), "x1", ["x2", "c1"], 20.0)
    assert c.awaited(ctx) == {"c2", "h2", "h3"} and c.fellows == {"x2", "c1"}
    honest = {p: models[p] for p in ("c2", "h2", "h3")}
    assert not c.ready(ctx, {"h2": 0, "h3": 0}, {"x2": 0, "c1": 0}, 1.0)
    assert not c.ready(ctx, honest, {"x2": 0}, 1.0)  # a fellow's model still missing
    assert c.ready(ctx, honest, {"x2": 0, "c1": 0}, 1.0)
    assert c.ready(ctx, {}, {}, 15.0)  # time to send whatever it holds
    from dataclasses import replace

    excused = replace(ctx, excluded=frozenset({"h3"}))  # recorded misbehaviour: not awaited
    assert c.ready(excused, {"c2": 0, "h2": 0}, {"x2": 0, "c1": 0}, 1.0)


def test_a_colluder_crafts_from_the_honest_updates_it_holds_and_stands_in_the_rest():
    import numpy as np
    import torch

    from learning.attacks import AgrMinMax, RoundView
    from learning.baselines import flatten_state
    from p2p_node.attack_lab import OmniscientColluder

    ctx, models = _round()
    c = OmniscientColluder.for_peer(make_attack("min_max"), "x1", ["x2"], 20.0)
    honest = {p: models[p] for p in ("c2", "h2", "h3")}
    view = c.round_view(ctx, models["x1"], {**honest, "x2": models["x2"]}, {})
    # colluders' own updates are not honest ones; the fellow's model stands in as ours
    assert set(view.colluders) == {"x1", "x2"} and view.colluders["x2"] is models["x1"]
    # honest members (c1, h1) publish nothing: each stands in as the honest trainers' centre
    assert set(view.honest) == {"c1", "c2", "h2", "h3", "h1"} and view.committee == ("c1", "h1")
    assert view.honest["c1"] is view.honest["h1"]
    centre = torch.stack([flatten_state(honest[p]) for p in honest]).mean(dim=0)
    assert torch.allclose(flatten_state(view.honest["h1"]).double(), centre.double(), atol=1e-6)
    assert view.honest_trainers == ["c2", "h2", "h3"]
    rng = np.random.default_rng(3)
    sent = c.update_to_send(ctx, models["x1"], honest, {"x2": models["x2"]}, rng)
    want = AgrMinMax().observe_round(RoundView(ctx.base_state, {**honest, "c1": view.honest["h1"],
                                                                "h1": view.honest["h1"]},
                                               {"x1": models["x1"], "x2": models["x2"]},
                                               ctx.committee)).poison_update(
        ctx.base_state, models["x1"], np.random.default_rng(3))
    assert all(torch.equal(sent[k], want[k]) for k in sent)
    assert not torch.equal(flatten_state(sent), flatten_state(models["x1"]))
    # with fewer than two honest updates there is nothing to aim at: it sends what it trained
    alone = c.update_to_send(ctx, models["x1"], {"h2": models["h2"]}, {}, rng)
    assert all(torch.equal(alone[k], models["x1"][k]) for k in alone)
