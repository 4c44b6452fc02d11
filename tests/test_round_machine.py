"""The round core without a network: every peer's machine fed every message, in order."""

from collections import deque

import torch

from chain.block import Block, CommittedBlock
from chain.round_rules import RoundContext, trainers_for
from gossip.envelope import Envelope, decode_envelope
from gossip.peer_keys import Signer
from learning.tensors import encode_state, state_hash
from p2p_node.round_machine import Commit, Publish, Rejected, RoundMachine

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
                        base_hash=state_hash(BASE), selection_fraction=0.5)


def update_of(peer):
    """Honest peers move the model a little in one direction; the attacker flips it, boosted."""
    g = torch.Generator().manual_seed(MEMBERS.index(peer))
    noise = {k: 0.01 * torch.randn(v.shape, generator=g) for k, v in BASE.items()}
    sign = -10.0 if peer == ATTACKER else 1.0
    return {k: BASE[k] + sign * (0.1 + noise[k]) for k in BASE}


class Network:
    """Delivers every published message to every machine, signing on the sender's behalf."""

    def __init__(self, rewrite=None):
        self.machines = {p: RoundMachine(context(), p) for p in MEMBERS}
        self.queue: deque[bytes] = deque()
        self.commits: dict[str, CommittedBlock] = {}
        self.rejections: list[tuple[str, Rejected]] = []
        self.rewrite = rewrite or (lambda peer, action: action)

    def emit(self, peer, actions):
        for action in actions:
            action = self.rewrite(peer, action)
            if isinstance(action, Publish):
                env = Envelope(action.kind, NET, 0, "", action.payload).signed_by(SIGNERS[peer])
                self.queue.append(env.encode())
            elif isinstance(action, Commit):
                self.commits[peer] = action.committed
            elif isinstance(action, Rejected):
                self.rejections.append((peer, action))

    def deliver(self, data: bytes):
        env = decode_envelope(data)
        for peer, machine in self.machines.items():
            self.emit(peer, machine.on_envelope(env))

    def run(self):
        for peer, machine in self.machines.items():
            self.emit(peer, machine.on_own_update(update_of(peer), 10 + MEMBERS.index(peer)))
        while self.queue:
            self.deliver(self.queue.popleft())


def test_every_peer_commits_the_same_block_without_the_attacker():
    net = Network()
    net.run()
    assert set(net.commits) == set(MEMBERS)
    hashes = {c.block.hash() for c in net.commits.values()}
    assert len(hashes) == 1
    block = next(iter(net.commits.values())).block
    assert ATTACKER not in block.selected and len(block.selected) == 2
    for committed in net.commits.values():
        committed.certificate.verify(committed.block, COMMITTEE)
    assert not net.rejections


def test_a_tampered_proposal_gets_no_votes_and_no_commit():
    def tamper(peer, action):
        if isinstance(action, Publish) and action.kind == "proposal":
            block = Block.from_obj(action.payload)
            bad = Block(**{**block.__dict__, "selected": tuple(sorted({*block.selected, ATTACKER}))})
            return Publish("proposal", bad.to_obj())
        return action

    net = Network(rewrite=tamper)
    net.run()
    assert not net.commits
    reasons = {r.reason for _, r in net.rejections if r.kind == "proposal"}
    assert any("re-derive" in r for r in reasons)
    assert all(m.agreement.voted_for is None for m in net.machines.values())


def test_a_replayed_update_is_not_counted_twice_and_a_second_update_is_refused():
    net = Network()
    trainer = TRAINERS[0]
    machine = net.machines[COMMITTEE[0]]
    body = {"model": encode_state(update_of(trainer)), "samples": 5, "base": state_hash(BASE)}
    env = Envelope("update", NET, 0, "", body).signed_by(SIGNERS[trainer])
    assert machine.on_envelope(env) == [] and machine.on_envelope(env) == []
    other = Envelope("update", NET, 0, "", {**body, "samples": 6}).signed_by(SIGNERS[trainer])
    [rejected] = machine.on_envelope(other)
    assert isinstance(rejected, Rejected) and "second" in rejected.reason
    assert machine.updates[trainer].samples == 5


def test_updates_from_non_trainers_and_bad_tensors_are_refused():
    machine = RoundMachine(context(), COMMITTEE[0])
    good = {"model": encode_state(update_of(TRAINERS[0])), "samples": 5,
            "base": state_hash(BASE)}
    cases = {
        COMMITTEE[1]: (good, "not a trainer"),
        TRAINERS[0]: ({**good, "base": b"\x00" * 32}, "another base"),
        TRAINERS[1]: ({**good, "model": encode_state({"w": torch.zeros(2, 2)})}, "match"),
        TRAINERS[2]: ({**good, "model": encode_state(
            {k: torch.full_like(v, float("nan")) for k, v in BASE.items()})}, "non-finite"),
    }
    for sender, (body, reason) in cases.items():
        env = Envelope("update", NET, 0, "", body).signed_by(SIGNERS[sender])
        [rejected] = machine.on_envelope(env)
        assert reason in rejected.reason
    assert machine.updates == {}
