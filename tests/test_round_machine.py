"""The round core without a network: every peer's machine fed every message, in order."""

import dataclasses
from collections import deque

import pytest
import torch

from chain.block import Block, BlockError, CommitCertificate, CommittedBlock
from chain.round_rules import RoundContext, check_evidence, derive_block, trainers_for
from gossip.envelope import Envelope, decode_envelope
from gossip.peer_keys import Signer
from learning.cmfl import RoundConfig
from learning.tensors import encode_state, state_hash
import p2p_node.round_machine as round_machine
from gossip.transfer import BlobRef
from learning.tensors import state_bytes
from p2p_node.round_machine import (
    BlobArrived,
    Commit,
    Evidence,
    FetchBlob,
    OfferBlob,
    Publish,
    PublishSigned,
    Received,
    Rejected,
    RoundMachine,
    SetTimer,
    TimerFired,
    Trained,
    Withheld,
)

NET = bytes([9]) * 32
SIGNERS = {s.peer_id: s for s in (Signer(bytes([i + 1]) * 32) for i in range(8))}
MEMBERS = tuple(sorted(SIGNERS))
COMMITTEE = MEMBERS[:4]
TRAINERS = trainers_for(MEMBERS, COMMITTEE)
ATTACKER = TRAINERS[-1]
BASE = {"w": torch.zeros(3, 4), "b": torch.zeros(3)}


def context():
    return RoundContext(network_id=NET, height=0, prev_hash=NET, members=MEMBERS,
                        committee=COMMITTEE, trainers=TRAINERS, base_state=BASE,
                        base_hash=state_hash(BASE),
                        selection=RoundConfig(rule="S1", fraction=0.5))


def update_of(peer):
    """Honest peers move the model a little in one direction; the attacker flips it, boosted."""
    g = torch.Generator().manual_seed(MEMBERS.index(peer))
    noise = {k: 0.01 * torch.randn(v.shape, generator=g) for k, v in BASE.items()}
    sign = -10.0 if peer == ATTACKER else 1.0
    return {k: BASE[k] + sign * (0.1 + noise[k]) for k in BASE}


class Network:
    """Delivers published messages to machines, signing on the sender's behalf.

    `route(peer, data)` decides who receives what a peer publishes (default: everyone, once);
    `crashed` peers neither send nor receive.
    """

    def __init__(self, route=None, crashed=()):
        self.machines = {p: RoundMachine(context(), p) for p in MEMBERS}
        self.crashed = set(crashed)
        self.queue: deque[tuple[set[str], bytes]] = deque()
        self.commits: dict[str, CommittedBlock] = {}
        self.rejections: list[tuple[str, Rejected]] = []
        self.evidence: list[tuple[str, Evidence]] = []
        self.timers: list[tuple[str, SetTimer]] = []
        self.route = route or (lambda peer, data: [(set(MEMBERS), data)])
        #: blobs offered by their trainers (what a blob server would serve), and who withholds
        self.blobs: dict[bytes, bytes] = {}
        self.withheld: set[bytes] = set()
        self.fetches: list[tuple[str, FetchBlob]] = []
        self.withheld_reports: list[tuple[str, str]] = []

    def emit(self, peer, actions):
        for action in actions:
            if isinstance(action, Publish):
                env = Envelope(action.kind, NET, 0, "", action.payload).signed_by(SIGNERS[peer])
                self.queue.extend(self.route(peer, env.encode()))
            elif isinstance(action, PublishSigned):
                self.queue.append((set(MEMBERS), action.envelope.encode()))
            elif isinstance(action, Commit):
                self.commits[peer] = action.committed
            elif isinstance(action, Rejected):
                self.rejections.append((peer, action))
            elif isinstance(action, Evidence):
                self.evidence.append((peer, action))
            elif isinstance(action, SetTimer):
                self.timers.append((peer, action))
            elif isinstance(action, OfferBlob):
                self.blobs[BlobRef.of(action.data).digest] = action.data
            elif isinstance(action, FetchBlob):
                self.fetches.append((peer, action))
            elif isinstance(action, Withheld):
                self.withheld_reports.append((peer, action.trainer))

    def live(self):
        return {p: m for p, m in self.machines.items() if p not in self.crashed}

    def settle(self):
        while self.queue or self.fetches:
            if not self.queue:  # every gossiped message is in: the stream fetches complete
                peer, fetch = self.fetches.pop(0)
                if peer not in self.crashed and fetch.ref.digest not in self.withheld:
                    self.emit(peer, self.machines[peer].feed(BlobArrived(
                        0, fetch.ref.digest, self.blobs[fetch.ref.digest])))
                continue
            recipients, data = self.queue.popleft()
            env = decode_envelope(data)
            if env.sender in self.crashed:
                continue
            for peer, machine in self.live().items():
                if peer in recipients:
                    self.emit(peer, machine.feed(Received(env)))

    def run(self):
        for peer, machine in self.live().items():
            self.emit(peer, machine.start())
            self.emit(peer, machine.feed(Trained(0, update_of(peer), 10 + MEMBERS.index(peer))))
        self.settle()

    def expire(self, step):
        """Let a deadline pass on every live peer ("collect", "propose" or the view timer)."""
        for peer, machine in self.live().items():
            if step == "view":  # pBFT's view timer (the deadlines are "collect", "propose")
                pending = [t for p, t in self.timers if p == peer and t.name == "view"]
                self.timers = [(p, t) for p, t in self.timers if p != peer or t.name != "view"]
                for timer in pending:
                    self.emit(peer, machine.feed(TimerFired(0, timer.name, timer.view)))
            else:
                self.emit(peer, machine.feed(TimerFired(0, step, 0)))
        self.settle()


def agreed_block(net):
    blocks = {c.block for c in net.commits.values()}
    assert len(blocks) == 1, "peers committed different blocks"
    for committed in net.commits.values():
        committed.certificate.verify(committed.block, COMMITTEE)
    return blocks.pop()


def test_every_peer_commits_the_same_block_without_the_attacker():
    net = Network()
    net.run()
    assert set(net.commits) == set(MEMBERS)
    block = agreed_block(net)
    assert ATTACKER not in block.selected and len(block.selected) == 2
    assert next(iter(net.commits.values())).certificate.view == 0
    assert not net.rejections and not net.evidence


def tampered(data, signer):
    """The same pre-prepare, but proposing a block that also aggregates the attacker."""
    env = decode_envelope(data)
    block = Block.decode(env.payload["value"])
    bad = Block(**{**block.__dict__, "selected": tuple(sorted({*block.selected, ATTACKER}))})
    body = {**env.payload, "value": bad.encode(), "value_hash": bad.hash()}
    return Envelope(env.kind, NET, 0, "", body).signed_by(signer).encode()


def test_a_tampered_proposal_is_refused_and_the_next_leader_commits_the_valid_block():
    leader = context().leader

    def route(peer, data):
        if peer == leader and decode_envelope(data).kind == "pre_prepare":
            return [(set(MEMBERS), tampered(data, SIGNERS[leader]))]
        return [(set(MEMBERS), data)]

    net = Network(route=route)
    net.run()  # members refuse view 0's proposal and change view at once, without a timer
    block = agreed_block(net)
    assert set(net.commits) == set(MEMBERS)
    assert ATTACKER not in block.selected
    assert next(iter(net.commits.values())).certificate.view >= 1


def test_a_crashed_leader_is_replaced_by_a_view_change():
    leader = context().leader
    net = Network(crashed={leader})
    net.run()
    assert not net.commits  # three of four score vectors: members wait for the deadline
    net.expire("collect")
    net.expire("propose")
    net.expire("view")
    block = agreed_block(net)
    assert set(net.commits) == set(MEMBERS) - {leader}
    assert len(block.score_vectors) == 3 and ATTACKER not in block.selected


def test_an_equivocating_leader_is_caught_with_both_signed_proposals():
    leader = context().leader
    witness = next(m for m in COMMITTEE if m != leader)

    def route(peer, data):
        if peer == leader and decode_envelope(data).kind == "pre_prepare":
            return [(set(MEMBERS), data), ({witness}, tampered(data, SIGNERS[leader]))]
        return [(set(MEMBERS), data)]

    net = Network(route=route)
    net.run()
    [(who, evidence)] = [(p, e) for p, e in net.evidence if p == witness]
    assert evidence.member == leader
    assert evidence.first.has_valid_signature() and evidence.second.has_valid_signature()
    assert evidence.first.payload["value_hash"] != evidence.second.payload["value_hash"]
    assert ATTACKER not in agreed_block(net).selected


def test_a_replayed_update_is_not_counted_twice_and_a_second_update_is_evidence():
    net = Network()
    trainer = TRAINERS[0]
    machine = net.machines[COMMITTEE[0]]
    body = {"model": encode_state(update_of(trainer)), "samples": 5, "base": state_hash(BASE)}
    env = Envelope("update", NET, 0, "", body).signed_by(SIGNERS[trainer])
    assert machine.on_envelope(env) == [] and machine.on_envelope(env) == []
    other = Envelope("update", NET, 0, "", {**body, "samples": 6}).signed_by(SIGNERS[trainer])
    [evidence] = machine.on_envelope(other)
    # Honest trainers write their update ahead and never sign two in a round: the pair is a
    # proof any peer can check, recorded like pBFT equivocation.
    assert isinstance(evidence, Evidence) and evidence.member == trainer
    assert check_evidence(NET, (evidence.first.encode(), evidence.second.encode())) == trainer
    assert machine.on_envelope(other) == []  # reported once
    assert machine.updates[trainer].samples == 5


def test_updates_from_non_trainers_and_bad_tensors_are_refused():
    machine = RoundMachine(context(), COMMITTEE[0])
    good = {"model": encode_state(update_of(TRAINERS[0])), "samples": 5,
            "base": state_hash(BASE)}
    # Proof of misbehaviour carries a penalty for the signer's gossip score; what a peer a
    # round behind or ahead could send (wrong role, another base model) does not.
    cases = {
        COMMITTEE[1]: (good, "not a trainer", None),
        TRAINERS[0]: ({**good, "base": b"\x00" * 32}, "another base", None),
        TRAINERS[1]: ({**good, "model": encode_state({"w": torch.zeros(2, 2)})}, "match",
                      "invalid-update"),
        TRAINERS[2]: ({**good, "model": encode_state(
            {k: torch.full_like(v, float("nan")) for k, v in BASE.items()})}, "non-finite",
            "invalid-update"),
    }
    for sender, (body, reason, penalty) in cases.items():
        env = Envelope("update", NET, 0, "", body).signed_by(SIGNERS[sender])
        [rejected] = machine.on_envelope(env)
        assert reason in rejected.reason and rejected.penalty == penalty
    assert machine.updates == {}


def test_large_updates_travel_as_blob_references_and_commit_the_same_selection(monkeypatch):
    inline = Network()
    inline.run()
    monkeypatch.setattr(round_machine, "INLINE_UPDATE_BYTES", 0)  # every update is "large"
    net = Network()
    net.run()
    assert set(net.commits) == set(MEMBERS) and not net.rejections
    block = agreed_block(net)
    assert block.selected == agreed_block(inline).selected and ATTACKER not in block.selected
    assert len(net.blobs) == len(TRAINERS)  # each trainer offered its tensors once
    assert block.model_hash == agreed_block(inline).model_hash  # same tensors, same model


def test_a_withheld_blob_is_a_missing_update_and_the_round_goes_on_without_it(monkeypatch):
    monkeypatch.setattr(round_machine, "INLINE_UPDATE_BYTES", 0)
    net = Network()
    late = TRAINERS[0]
    real_emit = net.emit

    def emit(peer, actions):  # the trainer announces its update but never serves the bytes
        for action in actions:
            if peer == late and isinstance(action, OfferBlob):
                net.withheld.add(BlobRef.of(action.data).digest)
        real_emit(peer, actions)

    net.emit = emit
    net.run()
    assert not net.commits  # members wait for the missing update until the deadline
    net.expire("collect")
    block = agreed_block(net)
    assert late not in block.selected and late not in {u.peer for u in block.updates}
    # Every peer but the withholder reports it when the round is decided without its bytes.
    assert sorted(net.withheld_reports) == sorted((p, late) for p in MEMBERS if p != late)


def test_blob_references_of_the_wrong_size_or_undecodable_bytes_are_refused(monkeypatch):
    machine = RoundMachine(context(), COMMITTEE[0])
    size = len(state_bytes(BASE))
    good = {"samples": 5, "base": state_hash(BASE)}
    wrong = Envelope("update", NET, 0, "", {**good, "blob": {"h": b"\1" * 32, "z": size + 1}}
                     ).signed_by(SIGNERS[TRAINERS[0]])
    [rejected] = machine.on_envelope(wrong)
    assert "cannot hold this model" in rejected.reason or "oversize" in rejected.reason
    junk = b"\xa0" + b"\x00" * (size - 1)  # the right size, but not this model's tensors
    env = Envelope("update", NET, 0, "", {**good, "blob": BlobRef.of(junk).to_obj()}
                   ).signed_by(SIGNERS[TRAINERS[1]])
    [fetch] = machine.on_envelope(env)
    assert isinstance(fetch, FetchBlob) and fetch.provider == TRAINERS[1]
    assert machine.on_blob(fetch.ref.digest, b"\x00" * size) == []  # not the announced bytes
    [rejected] = machine.on_blob(fetch.ref.digest, junk)
    assert "bad tensors" in rejected.reason or "match" in rejected.reason
    assert machine.on_envelope(env) == []  # a rebroadcast is not fetched again
    both = Envelope("update", NET, 0, "", {**good, "blob": BlobRef.of(junk).to_obj(),
                                           "model": encode_state(BASE)}
                    ).signed_by(SIGNERS[TRAINERS[2]])
    [rejected] = machine.on_envelope(both)
    assert "malformed" in rejected.reason
    assert machine.updates == {}


def test_a_block_with_a_forged_certificate_is_refused_as_misbehaviour():
    net = Network()
    net.run()
    committed = next(iter(net.commits.values()))
    short = CommittedBlock(committed.block, CommitCertificate(
        committed.certificate.view, committed.certificate.votes[:1]))  # 1 vote, not 2f+1
    observer = RoundMachine(context(), TRAINERS[0])
    env = Envelope("block", NET, 0, "", short.to_obj()).signed_by(SIGNERS[TRAINERS[1]])
    [rejected] = observer.on_envelope(env)
    assert rejected.penalty == "invalid-block" and rejected.sender == TRAINERS[1]
    assert observer.certified is None


# A committee with convicted members (issue 14): block h records an equivocation proof and bars
# its signer from the next election, but block h-1's election may have seated it already.
def proof_against(member):
    """Two different updates `member` signed in round 0: a proof check_evidence accepts."""
    a, b = (Envelope("update", NET, 0, "", {"n": n}).signed_by(SIGNERS[member]).encode()
            for n in (1, 2))
    assert check_evidence(NET, (a, b)) == member
    return a, b


def test_convicted_committee_members_lower_the_score_vector_quorum_to_the_others():
    ctx = context()  # a committee of 4: a quorum is 3
    a, b, c, d = COMMITTEE
    assert ctx.quorum == 3
    assert ctx.enough_score_vectors({a, b, c}, ()) and not ctx.enough_score_vectors({a, b}, ())
    # with c and d convicted, a quorum of the other two (both) is enough ...
    assert ctx.enough_score_vectors({a, b}, {c, d})
    # ... but only from them: the convicted members' own vectors do not make up the lower
    # quorum (they count towards the committee's, as in every block before this rule)
    assert not ctx.enough_score_vectors({a, c}, {c, d}) and not ctx.enough_score_vectors({a}, {c, d})
    assert ctx.enough_score_vectors({a, c, d}, {c, d})
    # one convicted: the three others are needed (a quorum of 3 is 2 there, plus 3 in all)
    assert ctx.enough_score_vectors({a, b}, {d}) and not ctx.enough_score_vectors({a, d}, {d})
    # a convicted trainer changes nothing; a fully convicted committee needs the old quorum
    assert not ctx.enough_score_vectors({a, b}, {TRAINERS[0]})
    assert ctx.enough_score_vectors({a, b, c}, set(COMMITTEE))
    assert not ctx.enough_score_vectors({a, b}, set(COMMITTEE))


def members_network(crashed, evidence):
    """Every member runs pBFT (genesis consensus = "members"); each holds `evidence`."""
    ctx = dataclasses.replace(context(), validators=MEMBERS)
    net = Network(crashed=crashed)
    net.machines = {p: RoundMachine(ctx, p, evidence=evidence) for p in MEMBERS}
    return ctx, net


def test_seated_convicted_members_that_stay_silent_do_not_stall_the_round():
    """Two of the four committee members are convicted by proofs every peer holds (from the last
    round, not yet recorded) and send nothing (banned from gossip): the other two members'
    vectors make the block, which records the proofs and seats neither again."""
    convicted = COMMITTEE[2:]
    evidence = tuple(sorted(proof_against(m) for m in convicted))
    ctx, net = members_network(set(convicted), evidence)
    net.run()  # no deadline needed: convicted members are not waited for
    assert set(net.commits) == set(MEMBERS) - set(convicted)
    [block] = {c.block for c in net.commits.values()}
    for committed in net.commits.values():
        committed.certificate.verify(block, MEMBERS)
    assert len(block.score_vectors) == 2 and set(block.evidence) == set(evidence)
    assert not set(block.next_committee) & set(convicted)
    assert len(block.next_committee) == len(COMMITTEE) and ATTACKER not in block.selected
    # every peer re-derives it the same way; without the proofs the two vectors are too few
    machine = net.machines[TRAINERS[0]]
    assert derive_block(ctx, list(block.score_vectors), machine.updates, block.evidence)[0] == block
    with pytest.raises(BlockError, match="a quorum is 3"):
        derive_block(ctx, list(block.score_vectors), machine.updates, ())


def test_without_the_proofs_the_silent_members_still_stall_the_round():
    """The same two members silent but not convicted: two vectors of four are no quorum, and
    the round waits (for them, or for a view change) rather than deciding on too few."""
    ctx, net = members_network(set(COMMITTEE[2:]), ())
    net.run()
    net.expire("collect")
    net.expire("propose")
    assert not net.commits
