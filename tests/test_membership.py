"""Membership after genesis: join requests, the admission policy, silent trainers leaving.

Pure: chains grown with the round rules (tests.test_sync_support.ChainBuilder), real signatures,
no network.
"""

from dataclasses import replace

import pytest

from chain.block import BlockError, CommittedBlock, MembershipChange
from chain.genesis import Genesis, GenesisError
from chain.membership import (
    JOIN_WINDOW,
    MAX_JOINS_PER_BLOCK,
    MembershipRules,
    admissible_joins,
    check_join,
    join_request,
)
from chain.round_rules import trainers_for
from chain.store import BlockStore, ModelStore
from chain.verify import ChainVerifier, verify_store
from gossip.envelope import Envelope
from gossip.validation import EnvelopeAdmission
from tests.test_sync_support import ChainBuilder

OPEN = {"admission": "open", "leave_after": 3}


def request(builder: ChainBuilder, signer, height=None, network_id=None) -> bytes:
    """A signed join request of `signer` for the builder's next round (or `height`)."""
    net = network_id or builder.genesis.network_id
    rnd = builder.verifier.height if height is None else height
    return join_request(net, rnd, ["/ip4/127.0.0.1/tcp/4001"]).signed_by(signer).encode()


def check(builder: ChainBuilder, raw: bytes) -> Envelope:
    v = builder.verifier
    return check_join(v.rules, v.roster, v.network_id, v.height, raw)


def test_a_join_is_admitted_under_the_open_policy_and_trains_from_the_next_round():
    builder = ChainBuilder(members=6, membership=OPEN)
    builder.step()
    newcomer = builder.signer(0)
    admitting = builder.step(joins=(request(builder, newcomer),))
    assert admitting.block.membership == (
        MembershipChange("join", newcomer.peer_id, request(builder, newcomer, height=1)),)
    # Not a trainer of the block that admits it; one of the next round's.
    assert newcomer.peer_id not in admitting.block.trainers
    assert newcomer.peer_id in builder.verifier.members
    assert newcomer.peer_id in builder.context().trainers
    later = builder.step()
    assert newcomer.peer_id in later.block.selected
    assert [u.peer for u in later.block.updates].count(newcomer.peer_id) == 1
    # Once a member, its request is spent: a second one is refused.
    with pytest.raises(BlockError, match="already a member"):
        check(builder, request(builder, newcomer))


def test_the_allowlist_admits_its_peers_and_refuses_others_with_a_reason():
    probe = ChainBuilder(members=6)
    allowed, stranger = probe.signer(0), probe.signer(1)
    builder = ChainBuilder(members=6, membership={"admission": "allowlist",
                                                   "allow": [allowed.peer_id]})
    refused = request(builder, stranger)
    with pytest.raises(BlockError, match="allowlist admission policy does not admit"):
        check(builder, refused)
    # The proposer leaves it out; a block that records it anyway does not derive.
    v = builder.verifier
    held = admissible_joins(v.rules, v.roster, v.network_id, v.height,
                            [refused, request(builder, allowed)])
    assert held == (request(builder, allowed),)
    with pytest.raises(BlockError, match="does not admit"):
        builder.proposal(joins=(refused,))
    committed = builder.step(joins=held)
    assert [c.peer for c in committed.block.membership] == [allowed.peer_id]


def test_the_default_genesis_admits_no_one_and_keeps_its_network_id():
    builder = ChainBuilder(members=6)
    with pytest.raises(BlockError, match="closed admission policy"):
        check(builder, request(builder, builder.signer(0)))
    g = builder.genesis
    assert "membership" not in g.to_dict()
    assert Genesis.from_dict(g.to_dict()).network_id == g.network_id
    assert replace(g, membership=OPEN).network_id != g.network_id


@pytest.mark.parametrize("settings, problem", [
    ({"admission": "anyone"}, "admission must be one of"),
    ({"admission": "open", "allow": ["x"]}, "allowlist policy only"),
    ({"admission": "allowlist", "allow": ["QmNotAKey"]}, ""),
    ({"admission": "open", "leave_after": -1}, "leave_after"),
    ({"admission": "open", "quorum": 2}, "unknown membership settings"),
])
def test_a_bad_membership_setting_is_a_genesis_error(settings, problem):
    g = ChainBuilder(members=6).genesis
    with pytest.raises(GenesisError, match="membership: .*" + problem):
        replace(g, membership=settings).check()


def test_forged_foreign_stale_and_future_join_requests_are_refused():
    builder = ChainBuilder(members=6, membership=OPEN)
    for _ in range(JOIN_WINDOW + 2):
        builder.step()
    joiner = builder.signer(0)
    good = join_request(builder.genesis.network_id, builder.verifier.height).signed_by(joiner)
    forged = replace(good, payload={"addrs": ["/ip4/6.6.6.6/tcp/1"]}).encode()
    cases = {
        forged: "forged signature",
        request(builder, joiner, network_id=bytes(32)): "not a join of this network",
        request(builder, joiner, height=builder.verifier.height - JOIN_WINDOW - 1):
            "not within",
        request(builder, joiner, height=builder.verifier.height + 1): "not within",
        replace(good, kind="update").signed_by(joiner).encode(): "not a join",
        replace(good, payload={"addrs": "x"}).signed_by(joiner).encode(): "malformed body",
        b"\x00garbage": "join request: ",
    }
    for raw, reason in cases.items():
        with pytest.raises(BlockError, match=reason):
            check(builder, raw)
    check(builder, good.encode())  # the untouched request is fine
    with pytest.raises(BlockError, match="two join requests"):
        builder.proposal(joins=(good.encode(), request(builder, joiner,
                                                        height=builder.verifier.height - 1)))


def test_a_silent_trainer_leaves_after_k_rounds_and_may_rejoin_but_not_by_replay():
    builder = ChainBuilder(members=6, membership=OPEN)  # 4 committee, 2 trainers
    quiet = builder.context().trainers[0]
    old_request = request(builder, builder.by_id[quiet])  # what it signed long ago
    for k in range(3):
        committed = builder.step(silent={quiet})
        assert quiet in committed.block.trainers
        expect = (MembershipChange("leave", quiet),) if k == 2 else ()
        assert committed.block.membership == expect, k
    assert quiet not in builder.verifier.members
    assert quiet not in builder.context().trainers
    assert builder.verifier.committee == builder.blocks[-1].block.next_committee
    assert set(builder.verifier.committee) <= set(builder.verifier.members)
    # Its old request cannot bring it back; a new one can (it is a genesis member anyway).
    with pytest.raises(BlockError, match="replay"):
        check(builder, old_request)
    builder.step(joins=(request(builder, builder.by_id[quiet]),))
    assert quiet in builder.context().trainers


def test_the_last_trainer_never_leaves_and_speaking_resets_the_count():
    builder = ChainBuilder(members=6, membership={"admission": "closed", "leave_after": 2})
    a, b = builder.context().trainers
    builder.step(silent={a})
    builder.step(silent={b})  # a spoke: its count starts again
    assert builder.blocks[-1].block.membership == ()
    builder.step(silent={a, b})  # both due: one leaves, the pool keeps the other
    assert [c.peer for c in builder.blocks[-1].block.membership] == [b]
    assert builder.context().trainers == (a,)


def test_a_chain_with_membership_round_trips_and_verifies_from_genesis(tmp_path):
    builder = ChainBuilder(members=6, membership=OPEN)
    quiet = builder.context().trainers[0]
    newcomers = [builder.signer(i) for i in range(2)]
    builder.step(joins=tuple(request(builder, s) for s in newcomers))
    for _ in range(3):
        builder.step(silent={quiet})
    builder.step()
    for committed in builder.blocks:
        assert CommittedBlock.decode(committed.encode()) == committed
    chain = builder.chain()
    chain.write(tmp_path, keep_models=len(chain.blocks))
    report = verify_store(chain.genesis, BlockStore(tmp_path / "chain.sqlite"),
                          ModelStore(tmp_path / "models"))
    assert report.ok and report.blocks == 5, report
    changes = [(c.kind, c.peer[-4:]) for b in chain.blocks for c in b.block.membership]
    assert sorted(changes) == sorted([("join", s.peer_id[-4:]) for s in newcomers] +
                                     [("leave", quiet[-4:])])


def tampered_verifier(builder: ChainBuilder, block) -> str:
    """Why a verifier at the builder's position refuses `block`, certified by a quorum."""
    verifier = ChainVerifier(builder.genesis)
    for committed in builder.blocks:
        verifier.advance(committed)
    with pytest.raises(BlockError) as err:
        verifier.check(builder.certify(block))
    return str(err.value)


def test_a_tampered_membership_entry_fails_verification_with_a_reason():
    builder = ChainBuilder(members=6, membership=OPEN)
    quiet = builder.context().trainers[0]
    builder.step(silent={quiet})
    builder.step(silent={quiet})
    joiner, outsider = builder.signer(0), builder.signer(1)
    block, _ = builder.proposal(silent={quiet}, joins=(request(builder, joiner),))
    assert {c.kind for c in block.membership} == {"join", "leave"}
    join, leave = block.membership
    # A quorum certifying a block does not make its membership changes valid. (Leaving a held
    # request out is the proposer's right, as with evidence: the next block may admit it.)
    other = MembershipChange("join", outsider.peer_id, join.request)
    forged = MembershipChange("join", joiner.peer_id, join.request[:-1] +
                              bytes([join.request[-1] ^ 1]))  # a flipped signature bit
    for changes, reason in [
        ((other, leave), "membership changes are not"),          # someone else's request
        ((leave, join), "membership changes are not"),            # not in canonical order
        ((join, MembershipChange("leave", quiet, b"x")), "membership changes are not"),
        ((join,), "membership changes are not"),                  # a departure hidden
        ((join, leave, MembershipChange("leave", builder.context().committee[0])),
         "membership changes are not"),                          # a member pushed out
        ((forged, leave), "forged signature"),
    ]:
        assert reason in tampered_verifier(builder, replace(block, membership=changes))
    too_many = tuple(request(builder, builder.signer(i)) for i in range(MAX_JOINS_PER_BLOCK + 1))
    with pytest.raises(BlockError, match="per block"):
        builder.proposal(joins=too_many)


def test_trainers_come_from_the_chain_roster_not_the_genesis():
    builder = ChainBuilder(members=6, membership=OPEN)
    joiner = builder.signer(0)
    builder.step(joins=(request(builder, joiner),))
    v = builder.verifier
    assert set(trainers_for(v.members, v.committee)) - set(builder.genesis.members) == \
        {joiner.peer_id}
    rules = MembershipRules.from_settings(builder.genesis.membership, builder.genesis.members)
    assert rules.joiners() is None and rules.admits(joiner.peer_id)


def test_gossip_admits_join_requests_from_non_members_and_nothing_else():
    builder = ChainBuilder(members=6)
    member, stranger, allowed = builder.by_id[builder.genesis.members[0]], *(
        builder.signer(i) for i in range(2))
    net = builder.genesis.network_id
    gate = EnvelopeAdmission(net, frozenset(builder.genesis.members), current_round=5,
                             joiners=frozenset({allowed.peer_id}))

    def msg(kind, signer, rnd=5):
        return Envelope(kind, net, rnd, "", {"addrs": []}).signed_by(signer).encode()

    assert gate.admit(msg("join", allowed)).accepted
    assert gate.admit(msg("join", allowed, rnd=3)).accepted  # a joiner a little behind
    assert gate.admit(msg("join", stranger)).code == "not-admissible"
    assert gate.admit(msg("update", stranger)).code == "not-member"
    assert not gate.admit(msg("update", stranger)).benign
    # A message of a round after ours from a peer a block we lack admitted: no penalty.
    assert gate.admit(msg("update", stranger, rnd=6)).benign
    assert gate.admit(msg("update", member)).accepted
    gate.joiners = None  # the open policy
    assert gate.admit(msg("join", stranger)).accepted
    gate.members = gate.members | {stranger.peer_id}  # admitted by a block
    assert gate.admit(msg("update", stranger)).accepted


def test_genesis_new_writes_the_membership_field_only_when_asked(tmp_path):
    from p2p_node.cli import main

    ids = ChainBuilder(members=6).genesis.members
    base = ["genesis", "new", "--committee-size", "4", *[a for p in ids for a in ("--member", p)]]
    assert main([*base, "--out", str(tmp_path / "plain.json")]) == 0
    assert "membership" not in Genesis.load(tmp_path / "plain.json").to_dict()
    assert main([*base, "--out", str(tmp_path / "allow.json"), "--allow", ids[0],
                 "--leave-after", "5"]) == 0
    assert Genesis.load(tmp_path / "allow.json").membership == {
        "admission": "allowlist", "allow": [ids[0]], "leave_after": 5}


def test_sync_takes_a_chain_with_membership_and_drops_a_peer_that_forges_an_admission():
    from chain.sync import BlocksRequest, BlocksResponse, DropPeer, Finished, HeadRequest, \
        HeadResponse, ModelResponse, SyncSession
    from tests.test_sync_core import run_session

    builder = ChainBuilder(members=6, membership=OPEN)
    builder.step(joins=(request(builder, builder.signer(0)),))
    builder.step()
    good = [b.encode() for b in builder.blocks]
    # The liar's quorum certifies a block admitting an outsider whose request it forged.
    real = builder.blocks[0].block
    join = real.membership[0]
    forged = MembershipChange("join", join.peer, join.request[:-1] +
                              bytes([join.request[-1] ^ 1]))
    bad = [builder.certify(replace(real, membership=(forged,))).encode()] + good[1:]

    def serve(peer, req):
        if isinstance(req, HeadRequest):
            return HeadResponse(2 if peer == "liar" else 1, b"\x00" * 32)
        if isinstance(req, BlocksRequest):
            chain = bad if peer == "liar" else good
            return BlocksResponse(tuple(chain[req.start:req.start + req.count]))
        return ModelResponse(len(builder.models[-1]))

    log = run_session(SyncSession(ChainVerifier(builder.genesis), ["honest", "liar"]), serve,
                      builder.models[-1])
    drops = [a for a in log if isinstance(a, DropPeer)]
    assert [d.peer for d in drops] == ["liar"] and "forged signature" in drops[0].reason
    assert isinstance(log[-1], Finished) and list(log[-1].blocks) == builder.blocks
