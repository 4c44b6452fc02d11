"""The buffer of later rounds' messages: duplicates free, a sender's share bounded, bytes capped."""

from __future__ import annotations

from gossip.envelope import Envelope
from gossip.peer_keys import Signer
from p2p_node.future_messages import FutureMessages

NET = bytes(32)
ALICE, BOB = Signer(b"\x01" * 32), Signer(b"\x02" * 32)


def env(signer: Signer, rnd: int, n: int, size: int = 10) -> tuple[Envelope, bytes]:
    e = Envelope("update", NET, rnd, "", {"n": n, "pad": bytes(size)}).signed_by(signer)
    return e, e.encode()


def test_held_messages_come_back_at_their_round_in_order_and_earlier_rounds_are_dropped():
    buf = FutureMessages()
    a3, b3, a4, a5 = env(ALICE, 3, 0), env(BOB, 3, 0), env(ALICE, 4, 0), env(ALICE, 5, 0)
    for e, wire in (a3, b3, a4, a5):
        assert buf.hold(e, wire) is None
    assert buf.release(4) == [a4[0]]  # round 3 was skipped (a sync): dropped, not replayed
    assert len(buf) == 1 and buf.held_bytes == len(a5[1])
    assert buf.release(5) == [a5[0]] and buf.held_bytes == 0


def test_a_rebroadcast_copy_is_no_new_message():
    buf = FutureMessages(per_sender_round=1)
    e, wire = env(ALICE, 3, 0)
    assert buf.hold(e, wire) is None
    assert buf.hold(e, wire) is None  # the same bytes again: not counted
    assert buf.release(3) == [e]


def test_a_sender_flooding_one_round_is_refused_others_are_not():
    buf = FutureMessages(per_sender_round=4)
    codes = [buf.hold(*env(ALICE, 3, n)) for n in range(6)]
    assert codes == [None] * 4 + ["future-flood"] * 2
    assert buf.hold(*env(ALICE, 4, 0)) is None  # another round: its own share
    assert buf.hold(*env(BOB, 3, 0)) is None
    assert len(buf.release(3)) == 5


def test_the_buffer_is_capped_in_bytes():
    one = len(env(ALICE, 3, 0, size=1000)[1])
    buf = FutureMessages(max_bytes=3 * one)
    codes = [buf.hold(*env(signer, 3, 0, size=1000)) for signer in
             (ALICE, BOB, Signer(b"\x03" * 32), Signer(b"\x04" * 32))]
    assert codes == [None, None, None, "future-full"]
    buf.release(3)
    assert buf.held_bytes == 0 and buf.hold(*env(ALICE, 4, 0, size=1000)) is None
