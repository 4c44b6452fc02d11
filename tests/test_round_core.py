"""The round core's decisions across rounds, once the driver's: the evidence pool, the join pool,
the buffer of later rounds, the withheld-update judgement, a joiner's publishes and which kinds
each topic carries. No network: inputs in, actions out."""

import dataclasses

from chain.membership import JOIN_WINDOW, MembershipRules
from chain.round_rules import check_evidence
from gossip.envelope import Envelope
from gossip.peer_keys import Signer
from p2p_node.future_messages import FutureMessages
from p2p_node.round_core import (
    RELAYED_TOPICS,
    TOPIC_KINDS,
    Convicted,
    RoundCore,
    ServeFailed,
    TwinSeen,
    topic_of,
)
from p2p_node.round_machine import (
    HintBehind,
    Publish,
    Received,
    Rejected,
    RoundMachine,
    Withheld,
)
from tests.test_round_machine import COMMITTEE, MEMBERS, NET, SIGNERS, TRAINERS, context

OUTSIDER = Signer(b"\x77" * 32)


def core_for(me=COMMITTEE[0], **options) -> RoundCore:
    core = RoundCore(NET, me, MembershipRules(admission="open"), **options)
    core.begin(context())
    return core


def proof(member=TRAINERS[0], rnd=0):
    """Two different updates signed by `member` in one round: a proof check_evidence accepts."""
    a, b = (Envelope("update", NET, rnd, "", {"n": n}).signed_by(SIGNERS[member]).encode()
            for n in (1, 2))
    assert check_evidence(NET, (a, b)) == member
    return a, b


def gossiped(kind, payload, sender=MEMBERS[1], rnd=0, signer=None):
    return Received(Envelope(kind, NET, rnd, "", payload).signed_by(signer or SIGNERS[sender]))


def test_every_kind_has_one_topic_and_only_committee_messages_are_relayed():
    kinds = [k for ks in TOPIC_KINDS.values() for k in ks]
    assert len(kinds) == len(set(kinds))
    assert topic_of("update") == "updates" and topic_of("prepare") == "committee"
    assert topic_of("evidence") == "blocks" and topic_of("join") == "membership"
    assert RELAYED_TOPICS == ("committee",)


def test_gossiped_evidence_is_held_for_a_block_and_forged_evidence_is_rejected():
    core = core_for()
    first, second = proof()
    assert core.feed(gossiped("evidence", [first, second])) == []
    assert core.evidence == {TRAINERS[0]: (first, second)}
    [rejected] = core.feed(gossiped("evidence", [first, first]))
    assert isinstance(rejected, Rejected) and rejected.kind == "evidence"
    assert rejected.penalty is None  # relayed evidence need not be its sender's fault
    # The next round's machine (a proposer) records the proof.
    core.begin(dataclasses.replace(context(), height=1))
    assert core.machine.evidence == ((first, second),)


def test_evidence_against_excluded_members_is_not_recorded_again():
    core = core_for()
    core.feed(gossiped("evidence", list(proof())))
    core.begin(dataclasses.replace(context(), height=1, excluded=frozenset({TRAINERS[0]})))
    assert core.machine.evidence == ()


def test_the_evidence_pool_is_bounded():
    core = core_for(max_evidence=1)
    core.feed(gossiped("evidence", list(proof(TRAINERS[0]))))
    core.feed(gossiped("evidence", list(proof(TRAINERS[1]))))
    assert list(core.evidence) == [TRAINERS[0]]


def test_a_proof_found_here_is_held_and_gossiped_once():
    core = core_for()
    trainer = TRAINERS[0]
    body = {"samples": 5}
    envs = [Envelope("update", NET, 0, "", {**body, "n": n}).signed_by(SIGNERS[trainer])
            for n in (1, 2)]
    core.machine = RoundMachine(context(), COMMITTEE[0])
    actions = core._outputs(core.machine._second_message(*envs))
    assert actions[0] == Convicted(trainer, "update")
    assert actions[1] == Publish("evidence", [envs[0].encode(), envs[1].encode()], repeat=False)
    # A twin of a member already convicted: nothing more to gossip.
    assert core.feed(TwinSeen(trainer, (b"a", b"b"))) == []


def test_a_twin_reported_by_discovery_is_held_and_gossiped():
    core = core_for()
    [convicted, publish] = core.feed(TwinSeen(MEMBERS[5], (b"a", b"b")))
    assert convicted == Convicted(MEMBERS[5], "twin") and not publish.repeat
    assert core.evidence[MEMBERS[5]] == (b"a", b"b")


def join(signer, rnd):
    return Envelope("join", NET, rnd, "", {"addrs": []}).signed_by(signer)


def test_join_requests_are_held_newest_per_sender_bounded_and_expire():
    core = core_for(max_joins=1)
    core.feed(Received(join(OUTSIDER, 0)))
    assert core.feed(Received(join(Signer(b"\x78" * 32), 0))) == []  # the pool is full
    assert list(core.join_requests) == [OUTSIDER.peer_id]
    core.feed(Received(join(OUTSIDER, 1)))
    assert core.join_requests[OUTSIDER.peer_id].round == 1  # the newest is kept
    core.feed(Received(join(OUTSIDER, 0)))
    assert core.join_requests[OUTSIDER.peer_id].round == 1
    core.begin(dataclasses.replace(context(), height=1))
    assert len(core.machine.joins) == 1  # admissible: the proposer records it
    core.begin(dataclasses.replace(context(), height=2 + JOIN_WINDOW))
    assert core.join_requests == {} and core.machine.joins == ()  # expired


def test_a_join_request_of_a_peer_now_a_member_is_dropped():
    core = core_for()
    core.feed(Received(join(OUTSIDER, 0)))
    members = tuple(sorted({*MEMBERS, OUTSIDER.peer_id}))
    core.begin(dataclasses.replace(context(), height=1, members=members))
    assert core.join_requests == {}


def test_a_joiner_asks_to_join_each_round_and_publishes_nothing_else():
    core = RoundCore(NET, OUTSIDER.peer_id, MembershipRules(admission="open"))
    actions = core.begin(context(), addrs=("/ip4/10.0.0.1/tcp/1",))
    [request] = [a for a in actions if isinstance(a, Publish)]
    assert request.kind == "join" and request.payload == {"addrs": ["/ip4/10.0.0.1/tcp/1"]}
    assert core._outputs([Publish("block", {}, repeat=False)]) == []


def test_messages_of_later_rounds_are_held_and_replayed_when_we_get_there():
    core = core_for()
    later = gossiped("update", {"samples": 1}, sender=TRAINERS[0], rnd=1)
    assert core.feed(later) == []
    assert len(core.future) == 1
    assert core.feed(gossiped("block", {}, rnd=2)) == [HintBehind()]  # a later block: behind?
    core.begin(dataclasses.replace(context(), height=1))
    assert core.replay == [later] and len(core.future) == 1  # round 2's block still held


def test_a_sender_flooding_later_rounds_is_rejected_penalised_and_logged_once():
    core = core_for(future=FutureMessages(per_sender_round=1))
    flood = [core.feed(gossiped("update", {"n": n}, sender=TRAINERS[0], rnd=1))
             for n in range(3)]
    assert flood[0] == []
    first, again = flood[1][0], flood[2][0]
    assert first.code == "future-flood" and first.penalty == "future-flood" and first.logged
    assert again.code == "future-flood" and not again.logged


def test_a_full_buffer_refuses_without_blaming_the_sender():
    core = core_for(future=FutureMessages(max_bytes=10))
    [full] = core.feed(gossiped("update", {"n": 1}, sender=TRAINERS[0], rnd=1))
    assert full.code == "future-full" and full.penalty is None


def test_a_withheld_update_is_proven_only_if_its_trainer_failed_to_serve_it():
    core = core_for()
    assert core._outputs([Withheld(TRAINERS[0])]) == [Withheld(TRAINERS[0], proven=False)]
    core.feed(ServeFailed(0, TRAINERS[0]))
    assert core._outputs([Withheld(TRAINERS[0])]) == [Withheld(TRAINERS[0], proven=True)]
    # Kept for one round more (a lagging peer still fetches last round's blobs), then dropped.
    core.begin(dataclasses.replace(context(), height=1))
    assert core._unserved == {(0, TRAINERS[0])}
    core.begin(dataclasses.replace(context(), height=2))
    assert core._unserved == set()
