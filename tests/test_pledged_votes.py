"""Pledged votes (genesis `selection.choice.pledged`, the default for `cmfl-choose`) in the round
core, no network: every judge first gossips a hash of its vote vector, reveals the votes once
every judge's pledge is in (or the reveal deadline passed), and a vote counts only if enough
reveals list its pledge, so a liar cannot read the honest votes before committing to its own
(chain.round_rules.counted_votes; docs/protocol.md, "Pledged votes")."""

import dataclasses

import cbor2
import pytest

from chain.block import BlockError
from chain.genesis import SELECTION_PRESETS
from chain.round_rules import (
    check_evidence,
    check_outline,
    counted_votes,
    decode_vector,
    judged_candidates,
    outline_round,
    parse_votes_body,
    pledge_digest,
    reveal_payload,
)
from gossip.envelope import Envelope, decode_envelope
from learning.choice import RECOMMENDED
from learning.cmfl import RoundConfig, choice_config, choice_settings
from p2p_node.round_machine import (
    Judge,
    Judged,
    Persist,
    Publish,
    Received,
    Rejected,
    RoundMachine,
    Trained,
)
from tests.test_judged_round import (
    ATTACKER,
    JUDGED,
    MEMBERS,
    NET,
    SIGNERS,
    JudgedNetwork,
    context,
    update_of,
)

PLEDGED = dataclasses.replace(JUDGED, choice=dataclasses.replace(RECOMMENDED, pledged=True))
LIARS = MEMBERS[-2:]  # 7 judges, f = 2


def pledged_context():
    return context(PLEDGED)


def favour_attacker(updates):
    """The votes of a liar backing every candidate that holds the attacker."""
    return [1.0 if ATTACKER in c.trainers else -1.0
            for c in judged_candidates(pledged_context(), updates)]


def block_of(net):
    assert len({c.committed.block.hash() for c in net.commits.values()}) == 1
    return next(iter(net.commits.values())).committed.block


def vectors_of(block):
    ctx = pledged_context()
    return {decode_envelope(raw).sender: parse_votes_body(ctx, decode_vector(ctx, raw))
            for raw in block.score_vectors}


def test_judges_pledge_then_reveal_once_every_pledge_is_in_and_all_commit():
    net = JudgedNetwork(selection=PLEDGED)
    net.run()
    assert set(net.commits) == set(MEMBERS)
    for peer, envs in net.published.items():
        kinds = [e.kind for e in envs if e.kind in ("pledge", "scores")]
        assert kinds == ["pledge", "scores"], peer  # one pledge, then its reveal
    block = block_of(net)
    vectors = vectors_of(block)
    assert set(vectors) == set(MEMBERS)
    assert counted_votes(pledged_context(), vectors) == set(MEMBERS)
    for vector in vectors.values():  # every reveal lists every judge's pledge
        assert [j for j, _ in vector.seen] == list(MEMBERS)
    assert ATTACKER not in block.selected
    check_outline(pledged_context(), block)  # a peer without the updates checks it too
    assert not net.rejections


def test_a_liar_that_pledges_after_reading_honest_reveals_is_not_counted():
    """Two colluders hold their pledges back; the honest judges reveal at the reveal deadline;
    the colluders read those votes, then pledge and reveal a lie backing the attacker. Their
    reveals reach the block, but the honest reveals do not list their pledges: not counted."""
    net = JudgedNetwork(selection=PLEDGED)
    held = []
    emit = net.emit

    def holding(peer, actions):
        kept = []
        for action in actions:
            if isinstance(action, Publish) and action.kind == "pledge" and peer in LIARS:
                held.append(peer)
            elif isinstance(action, Publish) and action.kind == "scores" and peer in LIARS:
                pass  # they reveal below, with the lie
            else:
                kept.append(action)
        emit(peer, kept)
    net.emit = holding
    net.run()
    assert set(held) == set(LIARS) and not net.commits
    honest = [p for p in MEMBERS if p not in LIARS]
    assert not any(e.kind == "scores" for p in honest for e in net.published[p])
    net.expire("propose", honest)  # the honest judges reveal without the liars' pledges
    net.settle()
    assert all(any(e.kind == "scores" for e in net.published[p]) for p in honest)
    ctx = pledged_context()
    updates = tuple((t, net.machines[MEMBERS[0]].updates[t].digest) for t in ctx.trainers)
    for liar in LIARS:  # now they know every honest vote: pledge and reveal the lie
        votes, salt = favour_attacker(updates), bytes(16)
        pledge = pledge_digest(ctx, liar, updates, votes, salt)
        seen = {j: p for (j, u), p in net.machines[liar].pledges.items() if u == updates}
        seen.update({other: pledge_digest(ctx, other, updates, votes, salt) for other in LIARS})
        for kind, body in (("pledge", {"judged": [list(u) for u in updates], "pledge": pledge}),
                           ("scores", reveal_payload(updates, votes, salt, seen))):
            env = Envelope(kind, NET, 0, "", body).signed_by(SIGNERS[liar])
            net.published[liar].append(env)
            net.queue.append(env.encode())
    net.settle()
    assert set(net.commits) == set(MEMBERS)
    block = block_of(net)
    vectors = vectors_of(block)
    assert counted_votes(ctx, vectors) == set(honest)
    assert ATTACKER not in block.selected
    assert not [r for r in net.rejections if r[1].kind == "scores"]  # valid, merely not counted


def test_a_reveal_that_does_not_open_its_pledge_is_not_counted():
    net = JudgedNetwork(selection=PLEDGED)
    net.run()
    ctx = pledged_context()
    block = block_of(net)
    raws = {decode_envelope(raw).sender: raw for raw in block.score_vectors}
    cheat = MEMBERS[3]
    body = dict(decode_envelope(raws[cheat]).payload)
    body["votes"] = [v + 1.0 for v in body["votes"]]  # not the votes it pledged
    raws[cheat] = Envelope("scores", NET, 0, "", body).signed_by(SIGNERS[cheat]).encode()
    vectors = {m: parse_votes_body(ctx, decode_vector(ctx, raw)) for m, raw in raws.items()}
    assert counted_votes(ctx, vectors) == set(MEMBERS) - {cheat}
    outline_round(ctx, list(raws.values()))  # six counted votes are still a quorum


def test_too_few_counted_votes_make_no_block():
    net = JudgedNetwork(selection=PLEDGED)
    net.run()
    ctx = pledged_context()
    raws = list(block_of(net).score_vectors)
    vectors = {decode_envelope(r).sender: parse_votes_body(ctx, decode_envelope(r)) for r in raws}
    # strip the seen lists of three reveals: 4 of 7 list each pledge, 7 - f = 5 are needed
    stripped = []
    for i, raw in enumerate(raws):
        env = decode_envelope(raw)
        if i < 3:
            body = {**env.payload, "seen": []}
            raw = Envelope("scores", NET, 0, "", body).signed_by(SIGNERS[env.sender]).encode()
        stripped.append(raw)
    assert counted_votes(ctx, vectors) == set(MEMBERS)
    with pytest.raises(BlockError, match="counted vote vectors"):
        outline_round(ctx, stripped)


def test_pledges_and_reveals_are_checked_before_they_count():
    net = JudgedNetwork(selection=PLEDGED)
    net.run()
    ctx = pledged_context()
    pledge = next(e for e in net.published[MEMBERS[0]] if e.kind == "pledge").payload
    reveal = next(e for e in net.published[MEMBERS[0]] if e.kind == "scores").payload
    bad = {
        ("pledge", "short pledge"): {**pledge, "pledge": b"x"},
        ("pledge", "extra key"): {**pledge, "votes": []},
        ("pledge", "non-trainer"): {**pledge, "judged": [["nobody", bytes(32)]]},
        ("scores", "no salt"): {k: v for k, v in reveal.items() if k != "salt"},
        ("scores", "short salt"): {**reveal, "salt": b"s"},
        ("scores", "seen twice"): {**reveal, "seen": reveal["seen"] + reveal["seen"][-1:]},
        ("scores", "seen non-judge"): {**reveal, "seen": [["nobody", bytes(32)]]},
        ("scores", "unpledged layout"): {"judged": reveal["judged"], "votes": reveal["votes"]},
    }
    for (kind, why), body in bad.items():
        machine = RoundMachine(ctx, MEMBERS[1])
        env = Envelope(kind, NET, 0, "", body).signed_by(SIGNERS[MEMBERS[0]])
        actions = machine.feed(Received(env))
        assert any(isinstance(a, Rejected) and a.kind == kind for a in actions), why
        assert not machine.pledges and not machine.vote_vectors, why
    # a pledge on a network whose judges do not pledge is refused too
    plain = RoundMachine(context(), MEMBERS[1])
    env = Envelope("pledge", NET, 0, "", pledge).signed_by(SIGNERS[MEMBERS[0]])
    assert any(isinstance(a, Rejected) for a in plain.feed(Received(env)))


def test_two_pledges_on_one_set_are_evidence_and_on_two_sets_are_not():
    net = JudgedNetwork(selection=PLEDGED)
    net.run()
    first = next(e for e in net.published[MEMBERS[0]] if e.kind == "pledge")
    other = Envelope("pledge", NET, 0, "", {**first.payload, "pledge": bytes(32)}) \
        .signed_by(SIGNERS[MEMBERS[0]])
    assert check_evidence(NET, (first.encode(), other.encode())) == MEMBERS[0]
    fewer = {"judged": first.payload["judged"][:-1], "pledge": bytes(32)}
    elsewhere = Envelope("pledge", NET, 0, "", fewer).signed_by(SIGNERS[MEMBERS[0]])
    with pytest.raises(BlockError, match="do not conflict"):
        check_evidence(NET, (first.encode(), elsewhere.encode()))


def test_a_judge_restarted_after_pledging_reveals_what_it_pledged():
    net = JudgedNetwork(selection=PLEDGED)
    net.run()
    peer = MEMBERS[2]
    pledge = next(e for e in net.published[peer] if e.kind == "pledge")
    reveal = next(e for e in net.published[peer] if e.kind == "scores")
    secret = cbor2.dumps([0, [[pledge.payload["judged"], reveal.payload["votes"],
                               reveal.payload["salt"]]]], canonical=True)
    persisted = {"signed-pledge": cbor2.dumps([0, pledge.payload], canonical=True),
                 "pledge-secret": secret}
    again = RoundMachine(pledged_context(), peer, persisted=persisted)
    actions = again.start() + again.feed(Trained(0, update_of(peer), 20))
    for envs in net.published.values():
        for env in envs:
            if env.kind == "update":
                actions += again.feed(Received(env))
    judge = next(a for a in actions if isinstance(a, Judge))
    # a different measurement and salt after the restart: the pledged votes win
    out = again.feed(Judged(0, 5.0, tuple(0.0 for _ in judge.candidates), b"\x09" * 16))
    published = [a for a in out if isinstance(a, Publish)]
    assert published[0].kind == "pledge" and published[0].payload == pledge.payload
    assert any(isinstance(a, Persist) and a.key == "pledge-secret" for a in out)
    for envs in net.published.values():
        for env in envs:
            if env.kind == "pledge":
                out += again.feed(Received(env))
    revealed = [a for a in out if isinstance(a, Publish) and a.kind == "scores"]
    assert revealed and revealed[0].payload["votes"] == reveal.payload["votes"]
    assert revealed[0].payload["salt"] == reveal.payload["salt"]


def test_a_late_update_that_splits_the_judges_is_re_judged_before_the_reveal():
    """The attacker's update reaches 3 judges only after their collect deadline: they judge
    without it, the 4 others with it. Only 4 judges hold the larger set, fewer than a quorum
    of 5, while all 7 hold the smaller one: the 4 judge it too (a second pledge, not
    evidence) before anyone reveals, and every judge's vote on it counts: no stall."""
    net = JudgedNetwork(selection=PLEDGED)
    without = set(MEMBERS[:3])
    for peer, machine in net.machines.items():
        net.emit(peer, machine.start())
        net.emit(peer, machine.feed(Trained(0, update_of(peer), 20)))
    net.settle(held_from=without)
    net.expire("collect", without)  # the 3 judge what they hold
    net.settle(held_from=without)
    assert set(net.commits) == set(MEMBERS)
    block = block_of(net)
    vectors = vectors_of(block)
    assert len({v.updates for v in vectors.values()}) == 1
    assert ATTACKER not in dict(next(iter(vectors.values())).updates)
    assert counted_votes(pledged_context(), vectors) == set(MEMBERS)
    twice = [p for p, envs in net.published.items() if sum(e.kind == "pledge" for e in envs) == 2]
    assert set(twice) == set(MEMBERS) - without
    assert not [r for r in net.rejections if "second" in r[1].reason]


def test_a_split_the_colluders_leave_without_a_quorum_is_repaired_after_the_propose_deadline():
    """Both colluders (f = 2) hold the attacker's late update with 3 honest judges, 2 honest
    judges lack it: the larger set has a quorum of 5 pledges, so nobody moves, and then the
    colluders never reveal. At the propose deadline the 3 judge the smaller set too; its 5
    votes count (the 2 early reveals are at most f, so the late pledges need only the 3
    listings of their own wave), and the round commits without the colluders."""
    net = JudgedNetwork(selection=PLEDGED)
    without = set(MEMBERS[:2])
    emit = net.emit

    def silent_liars(peer, actions):
        emit(peer, [a for a in actions if not (isinstance(a, Publish) and a.kind == "scores"
                                              and peer in LIARS)])
    net.emit = silent_liars
    for peer, machine in net.machines.items():
        net.emit(peer, machine.start())
        net.emit(peer, machine.feed(Trained(0, update_of(peer), 20)))
    net.settle(held_from=without)
    net.expire("collect", without)
    net.settle(held_from=without)
    net.expire("collect", set(MEMBERS) - without)
    net.expire("propose")  # everyone reveals what it pledged: 3 on the larger set, 2 on the other
    net.settle(held_from=without)
    net.expire("reveal", view=1)  # the second pledges' reveal deadlines
    net.settle(held_from=without)
    honest = set(MEMBERS) - set(LIARS)
    assert set(net.commits) >= honest
    block = block_of(net)
    vectors = vectors_of(block)
    assert counted_votes(pledged_context(), vectors) == honest
    assert ATTACKER not in dict(next(iter(vectors.values())).updates)


def test_the_pledged_rule_pledges_and_older_judged_genesis_files_keep_their_hash():
    preset = SELECTION_PRESETS["cmfl-choose-pledged"]
    assert preset["choice"]["pledged"] is True
    assert "pledged" not in SELECTION_PRESETS["cmfl-choose"]["choice"]
    assert RoundConfig.from_selection(preset).choice.pledged
    old = choice_settings(RECOMMENDED)
    assert "pledged" not in old and choice_config(old).pledged is False
    with pytest.raises(ValueError, match="pledged"):
        choice_config({**old, "pledged": 1})


def test_the_attack_labs_pledged_liar_pledges_the_blind_lie():
    from chain.round_rules import votes_payload
    from learning.choice import judge_votes
    from p2p_node.attack_lab import RushingJudge

    judge = RushingJudge(frozenset(LIARS))
    ctx = pledged_context()
    net = JudgedNetwork(selection=PLEDGED)
    net.run()
    updates = tuple((t, net.machines[MEMBERS[0]].updates[t].digest) for t in ctx.trainers)
    losses = [1.0] + [1.0 - 0.01 * i for i in range(len(judged_candidates(ctx, updates)))]
    lied = judge.blind_losses(ctx, updates, losses)
    own = votes_payload(dict(updates), list(judge_votes(losses[0], losses[1:])))
    want = judge.lie(ctx, own, {})["votes"]
    assert list(judge_votes(lied[0], lied[1:])) == pytest.approx(want)
    assert want != own["votes"]
