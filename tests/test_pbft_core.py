"""The pBFT core step by step: a hand-driven network of cores, no clock, no sockets."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import cbor2
import pytest

from bft.messages import (
    Commit,
    Message,
    MessageError,
    NewView,
    PrePrepare,
    Prepare,
    ViewChange,
    decode_message,
)
from bft.pbft import (
    VIEW_TIMER,
    Broadcast,
    Decided,
    Equivocation,
    Output,
    PbftCore,
    ProposalNeeded,
    Rejected,
    Relay,
    SetTimer,
    sha256,
)
from bft.simulator import sign, verify

HEIGHT = 8  # leader of view v is m[(8 + v) % 4]: m0, then m1, m2, ...
A, B = b"block A", b"block B"


def always_valid(value_hash: bytes, value: bytes) -> bool | None:
    return True


class Net:
    """Cores for m0..m{n-1} joined by a FIFO network the test can filter."""

    def __init__(self, n: int = 4, validity: Callable[[bytes, bytes], bool | None] = always_valid,
                 height: int = HEIGHT) -> None:
        self.committee = tuple(f"m{i}" for i in range(n))
        self.cores = {m: PbftCore(height, self.committee, m, validity, verify)
                      for m in self.committee}
        self.outputs: dict[str, list[Output]] = {m: [] for m in self.committee}
        self.queue: deque[tuple[str, Message]] = deque()
        self.down: set[str] = set()
        self.drop: Callable[[str, Message], bool] = lambda to, msg: False

    def feed(self, member: str, outputs: list[Output]) -> None:
        """Carry out `member`'s outputs: sign and queue its broadcasts (own copy included)."""
        for out in outputs:
            self.outputs[member].append(out)
            if isinstance(out, Broadcast):
                signed = sign(member, out.message)
                self.queue.extend((m, signed) for m in self.committee)
            elif isinstance(out, Relay):
                self.queue.extend((m, msg) for msg in out.messages for m in self.committee
                                  if m != member)

    def start(self, proposals: dict[str, bytes] | None = None) -> None:
        for m in self.committee:
            if m in self.down:
                continue
            value = (proposals or {}).get(m, f"block of {m}".encode())
            self.feed(m, self.cores[m].propose(sha256(value), value))
            self.feed(m, self.cores[m].start())

    def run(self) -> None:
        while self.queue:
            to, message = self.queue.popleft()
            if to in self.down or message.sender in self.down or self.drop(to, message):
                continue
            self.feed(to, self.cores[to].on_message(message))

    def fire_timers(self, view: int) -> None:
        for m in self.committee:
            if m not in self.down:
                self.feed(m, self.cores[m].on_timer(VIEW_TIMER, view))

    def decided(self, member: str) -> Decided | None:
        return self.cores[member].decision

    def sent(self, member: str, kind: type) -> list[Message]:
        return [o.message for o in self.outputs[member]
                if isinstance(o, Broadcast) and isinstance(o.message, kind)]

    def of_type(self, member: str, kind: type) -> list[Output]:
        return [o for o in self.outputs[member] if isinstance(o, kind)]


def assert_valid_certificate(d: Decided, committee: tuple[str, ...]) -> None:
    members = [m for m, _ in d.certificate]
    assert len(set(members)) == len(members) >= 3
    for member, signature in d.certificate:
        assert member in committee
        assert verify(Commit(d.height, d.view, d.value_hash, member, signature))


def test_happy_path_four_replicas_decide_the_leaders_value() -> None:
    net = Net()
    net.start()
    net.run()
    decisions = [net.decided(m) for m in net.committee]
    assert all(d is not None for d in decisions)
    assert {d.value for d in decisions if d} == {b"block of m0"}
    for d in decisions:
        assert d is not None and d.view == 0 and d.value_hash == sha256(d.value)
        assert_valid_certificate(d, net.committee)
    assert net.of_type("m1", SetTimer) == [SetTimer(VIEW_TIMER, 0, 1)]


def test_leader_asks_for_a_proposal_when_it_has_none() -> None:
    net = Net()
    for m in net.committee:
        net.feed(m, net.cores[m].start())
    assert net.of_type("m0", ProposalNeeded) == [ProposalNeeded(0)]
    assert not net.of_type("m1", ProposalNeeded)
    net.feed("m0", net.cores["m0"].propose(sha256(A), A))
    net.run()
    assert all(net.decided(m) and net.decided(m).value == A for m in net.committee)


def test_committees_below_four_tolerate_no_fault_but_decide() -> None:
    for n in (1, 2, 3):
        net = Net(n=n, height=0)
        net.start()
        net.run()
        assert all(net.decided(m) for m in net.committee)


def test_view_change_when_the_leader_is_silent() -> None:
    net = Net()
    net.down = {"m0"}
    net.start()
    net.run()
    assert not any(net.decided(m) for m in net.committee)
    net.fire_timers(0)
    net.run()
    for m in ("m1", "m2", "m3"):
        d = net.decided(m)
        assert d is not None and d.view == 1 and d.value == b"block of m1"
        assert SetTimer(VIEW_TIMER, 1, 2) in net.of_type(m, SetTimer)  # back-off: 2**1
    assert len(net.sent("m1", NewView)) == 1


def test_new_leader_reproposes_the_prepared_value() -> None:
    net = Net()
    # Every commit is lost: all members prepared the leader's value, none decided.
    net.drop = lambda to, msg: isinstance(msg, Commit)
    net.start()
    net.run()
    assert all(net.cores[m].prepared is not None for m in net.committee)
    assert not any(net.decided(m) for m in net.committee)
    net.drop = lambda to, msg: False
    net.fire_timers(0)
    net.run()
    (new_view,) = net.sent("m1", NewView)
    assert new_view.value == b"block of m0"  # not m1's own block
    assert {net.decided(m).value for m in net.committee} == {b"block of m0"}


def test_a_new_view_ignoring_a_prepared_certificate_is_refused() -> None:
    net = Net()
    net.drop = lambda to, msg: isinstance(msg, Commit)
    net.start()
    net.run()
    # View changes reach everyone but the new-view is withheld; m1 then forges one for its own.
    net.drop = lambda to, msg: isinstance(msg, NewView)
    net.fire_timers(0)
    net.run()
    view_changes = tuple(net.sent(m, ViewChange)[0] for m in net.committee)
    signed = tuple(sign(m, vc) for m, vc in zip(net.committee, view_changes))
    forged = sign("m1", NewView(HEIGHT, 1, sha256(B), B, signed[:3]))
    outputs = net.cores["m2"].on_message(forged)
    assert any(isinstance(o, Rejected) and "highest prepared" in o.reason for o in outputs)
    assert not any(isinstance(o, Broadcast) for o in outputs)


def test_invalid_proposal_is_refused_and_the_view_changed() -> None:
    net = Net(validity=lambda h, v: v != A)
    net.start(proposals={"m0": A})
    net.run()
    for m in ("m1", "m2", "m3"):
        assert not [p for p in net.sent(m, Prepare) if p.view == 0]
        assert any(isinstance(o, Rejected) and o.sender == "m0" for o in net.outputs[m])
        assert [vc.view for vc in net.sent(m, ViewChange)] == [1]  # at once, not at the timeout
    # The view change completes without waiting for any timer; m1 leads view 1.
    assert {net.decided(m).value for m in ("m1", "m2", "m3")} == {b"block of m1"}


def test_not_yet_known_validity_is_answered_later() -> None:
    pending: list[bytes] = []

    def validity(h: bytes, v: bytes) -> bool | None:
        pending.append(h)
        return None

    net = Net(validity=validity)
    net.start()
    net.run()
    assert not any(net.sent(m, Prepare) for m in net.committee)
    for m in net.committee:
        net.feed(m, net.cores[m].on_value_validated(sha256(b"block of m0"), True))
    net.run()
    assert all(net.decided(m) for m in net.committee)


def test_equivocation_evidence_is_emitted_once_per_member() -> None:
    core = PbftCore(HEIGHT, ("m0", "m1", "m2", "m3"), "m1", always_valid, verify)
    core.start()
    pp_a = sign("m0", PrePrepare(HEIGHT, 0, sha256(A), A))
    pp_b = sign("m0", PrePrepare(HEIGHT, 0, sha256(B), B))
    core.on_message(pp_a)
    outputs = core.on_message(pp_b)
    assert [o for o in outputs if isinstance(o, Equivocation)] == [Equivocation("m0", pp_a, pp_b)]
    c = b"block C"
    again = core.on_message(sign("m0", PrePrepare(HEIGHT, 0, sha256(c), c)))
    assert not any(isinstance(o, Equivocation) for o in again)
    assert not core.on_message(pp_a)  # a duplicate is neither news nor evidence
    p_a = sign("m2", Prepare(HEIGHT, 0, sha256(A)))
    p_b = sign("m2", Prepare(HEIGHT, 0, sha256(B)))
    core.on_message(p_a)
    assert Equivocation("m2", p_a, p_b) in core.on_message(p_b)
    # The core prepared only the first proposal: it never signs for both.
    assert [o.message.value_hash for o in core.on_message(pp_a) if isinstance(o, Broadcast)] == []


def test_snapshot_restore_prevents_double_signing() -> None:
    committee = ("m0", "m1", "m2", "m3")
    follower = PbftCore(HEIGHT, committee, "m1", always_valid, verify)
    follower.start()
    (prepare,) = [o for o in follower.on_message(sign("m0", PrePrepare(HEIGHT, 0, sha256(A), A)))
                  if isinstance(o, Broadcast)]
    assert prepare.message == Prepare(HEIGHT, 0, sha256(A))
    saved = cbor2.dumps(follower.snapshot(), canonical=True)  # persisted before sending

    restored = PbftCore.from_snapshot(cbor2.loads(saved), committee, "m1", always_valid, verify)
    restored.start()
    # An equivocating leader now offers B in the same view: the restored core must not prepare it.
    outputs = restored.on_message(sign("m0", PrePrepare(HEIGHT, 0, sha256(B), B)))
    assert not any(isinstance(o, Broadcast) for o in outputs)
    # Seeing the same proposal again is fine: the identical prepare may be signed again.
    again = PbftCore.from_snapshot(cbor2.loads(saved), committee, "m1", always_valid, verify)
    again.start()
    outputs = again.on_message(sign("m0", PrePrepare(HEIGHT, 0, sha256(A), A)))
    assert [o for o in outputs if isinstance(o, Broadcast)] == [prepare]

    leader = PbftCore(HEIGHT, committee, "m0", always_valid, verify)
    leader.propose(sha256(A), A)
    assert Broadcast(PrePrepare(HEIGHT, 0, sha256(A), A)) in leader.start()
    restarted = PbftCore.from_snapshot(cbor2.loads(cbor2.dumps(leader.snapshot())), committee,
                                       "m0", always_valid, verify)
    restarted.propose(sha256(B), B)
    assert not any(isinstance(o, Broadcast) for o in restarted.start())


def test_restored_core_keeps_its_prepared_certificate_for_view_changes() -> None:
    net = Net()
    net.drop = lambda to, msg: isinstance(msg, Commit)
    net.start()
    net.run()
    snap = cbor2.loads(cbor2.dumps(net.cores["m2"].snapshot()))
    restored = PbftCore.from_snapshot(snap, net.committee, "m2", always_valid, verify)
    restored.start()
    (vc,) = [o.message for o in restored.on_timer(VIEW_TIMER, 0) if isinstance(o, Broadcast)]
    assert isinstance(vc, ViewChange) and vc.prepared is not None
    assert vc.prepared.value == b"block of m0"
    assert all(verify(p) for p in vc.prepared.prepares)


def test_lagging_member_catches_up_through_relays() -> None:
    net = Net()
    net.drop = lambda to, msg: to == "m3" and isinstance(msg, Commit)
    net.start()
    net.run()
    assert net.decided("m3") is None and net.decided("m0") is not None
    net.drop = lambda to, msg: False
    net.feed("m3", net.cores["m3"].on_timer(VIEW_TIMER, 0))
    net.run()
    # Decided members answered m3's view change with the certificate, forwarded as signed.
    assert net.of_type("m0", Relay)
    assert net.decided("m3") is not None
    assert net.decided("m3").value_hash == net.decided("m0").value_hash


def test_messages_from_outside_the_committee_or_height_are_ignored() -> None:
    core = PbftCore(HEIGHT, ("m0", "m1", "m2", "m3"), "m1", always_valid, verify)
    core.start()
    stranger = sign("x9", Prepare(HEIGHT, 0, sha256(A)))
    assert isinstance(core.on_message(stranger)[0], Rejected)
    assert core.on_message(sign("m0", PrePrepare(HEIGHT + 1, 0, sha256(A), A))) == []
    wrong_leader = core.on_message(sign("m2", PrePrepare(HEIGHT, 0, sha256(A), A)))
    assert isinstance(wrong_leader[0], Rejected)
    with pytest.raises(ValueError):
        core.propose(sha256(A), B)


def test_messages_round_trip_through_their_body_encoding() -> None:
    net = Net()
    net.drop = lambda to, msg: isinstance(msg, Commit)
    net.start()
    net.run()
    net.drop = lambda to, msg: False
    net.fire_timers(0)
    net.run()
    messages = [sign(m, o.message) for m in net.committee for o in net.outputs[m]
                if isinstance(o, Broadcast)]
    assert {type(m) for m in messages} == {PrePrepare, Prepare, Commit, ViewChange, NewView}
    for message in messages:
        body = cbor2.loads(cbor2.dumps(message.body(), canonical=True))
        decoded = decode_message(message.kind, message.height, message.sender, body,
                                 message.signature)
        assert decoded == message
    with pytest.raises(MessageError):
        decode_message("prepare", HEIGHT, "m1", {"view": 0, "value_hash": b"short"}, b"")
    with pytest.raises(MessageError):
        decode_message("new_view", HEIGHT, "m1", {"view": 1}, b"")
