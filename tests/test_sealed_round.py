"""A round on a sealed network (genesis `sealing = "validators"`) without a network: only the
round's validators open the updates; the other peers commit the certified block and fetch its
model by hash (FetchModel)."""

from dataclasses import replace

import cbor2
import pytest

import p2p_node.round_machine as round_machine
from chain.block import Block, CommittedBlock
from gossip.blob_ref import BlobRef
from gossip.envelope import Envelope
from gossip.sealing import SealKey, key_commitment, seal
from learning.tensors import encode_state, state_bytes, state_from_bytes, state_hash
from p2p_node.round_machine import (
    Commit,
    FetchModel,
    ModelArrived,
    Publish,
    RoundMachine,
)
from tests.test_round_machine import (
    ATTACKER,
    BASE,
    COMMITTEE,
    MEMBERS,
    NET,
    SIGNERS,
    TRAINERS,
    Network,
    agreed_block,
    context,
    update_of,
)

KEYS = {p: SealKey(s) for p, s in SIGNERS.items()}


def sealed_context(**fields):
    return replace(context(), sealed=True, **fields)


class SealedNetwork(Network):
    """Network, with sealed machines; a FetchModel is served from a peer that committed."""

    def __init__(self, ctx=None, **kwargs):
        super().__init__(**kwargs)
        ctx = ctx or sealed_context()
        self.machines = {p: RoundMachine(ctx, p, seal_key=KEYS[p]) for p in MEMBERS}
        self.models: dict[bytes, bytes] = {}
        self.model_fetches: list[tuple[str, FetchModel]] = []
        self.published: list[tuple[str, Publish]] = []

    def emit(self, peer, actions):
        for action in actions:
            if isinstance(action, Commit):
                self.models[action.committed.block.model_hash] = state_bytes(action.new_state)
            elif isinstance(action, FetchModel):
                self.model_fetches.append((peer, action))
            elif isinstance(action, Publish):
                self.published.append((peer, action))
        super().emit(peer, actions)

    def settle(self):
        super().settle()
        while self.model_fetches:
            peer, fetch = self.model_fetches.pop(0)
            self.emit(peer, self.machines[peer].feed(ModelArrived(
                0, fetch.ref.digest, self.models[fetch.ref.digest])))
            super().settle()


def test_only_the_committee_reads_updates_and_every_peer_commits_the_same_block():
    clear = Network()
    clear.run()
    net = SealedNetwork()
    net.run()
    assert set(net.commits) == set(MEMBERS) and not net.rejections
    block = agreed_block(net)
    # the same selection and model as in the clear: sealing changes who reads, not what
    assert block.selected == agreed_block(clear).selected and ATTACKER not in block.selected
    assert block.model_hash == agreed_block(clear).model_hash
    for peer in COMMITTEE:
        assert set(net.machines[peer].updates) == set(TRAINERS)
    for peer in TRAINERS:  # non-readers: no update opened, the model fetched by its hash
        assert net.machines[peer].updates == {} and not net.machines[peer].pending_blobs
    bodies = [a.payload for _, a in net.published if a.kind == "update"]
    assert len(bodies) == len(TRAINERS)
    for body in bodies:
        assert set(body) == {"sealed", "keys", "commit", "samples", "base"}
        assert set(body["keys"]) == set(COMMITTEE) and len(body["commit"]) == 32
        with pytest.raises(Exception):  # the ciphertext is no tensor map
            state_from_bytes(body["sealed"])


def test_every_non_reader_fetches_the_model_once_and_commits_its_hash():
    net = SealedNetwork()
    fetched = []
    real_emit = net.emit

    def emit(peer, actions):
        fetched.extend((peer, a.ref) for a in actions if isinstance(a, FetchModel))
        real_emit(peer, actions)

    net.emit = emit
    net.run()
    block = agreed_block(net)
    assert sorted(p for p, _ in fetched) == sorted(TRAINERS)
    assert {ref for _, ref in fetched} == {BlobRef(block.model_hash, len(state_bytes(BASE)))}


def test_under_members_consensus_every_member_reads_and_re_derives():
    net = SealedNetwork(ctx=sealed_context(validators=MEMBERS))
    net.run()
    assert set(net.commits) == set(MEMBERS) and not net.rejections and not net.model_fetches
    bodies = [a.payload for _, a in net.published if a.kind == "update"]
    assert all(set(b["keys"]) == set(MEMBERS) for b in bodies)
    for peer in TRAINERS:
        assert set(net.machines[peer].updates) == set(TRAINERS)
    assert len({c.block for c in net.commits.values()}) == 1


def test_large_sealed_updates_travel_as_ciphertext_blobs(monkeypatch):
    monkeypatch.setattr(round_machine, "INLINE_UPDATE_BYTES", 0)
    inline = SealedNetwork()
    inline.run()
    net = SealedNetwork()
    net.run()
    assert set(net.commits) == set(MEMBERS) and not net.rejections
    assert agreed_block(net).model_hash == agreed_block(inline).model_hash
    plain = {cbor2.dumps(encode_state(update_of(t)), canonical=True) for t in TRAINERS}
    assert len(net.blobs) == len(TRAINERS)
    for blob in net.blobs.values():
        assert blob not in plain and len(blob) == len(next(iter(plain))) + 40
    # only committee members fetched blobs; trainers fetched none
    assert {p for p, _ in net.fetches} <= set(COMMITTEE)


def sealed_body(trainer, readers, plaintext=None, key_from=None):
    data = plaintext or cbor2.dumps(encode_state(update_of(trainer)), canonical=True)
    key, nonce = KEYS[key_from or trainer].content_key(b"ctx", data)
    sealed = seal(data, readers, key, nonce)
    return {"sealed": sealed.ciphertext, "keys": sealed.wraps_obj(),
            "commit": sealed.key_commit, "samples": 5, "base": state_hash(BASE)}



def assert_refused(machine: RoundMachine, cases: dict) -> None:
    """Each sender's signed update body is refused with its reason and the invalid-update
    penalty, and none is kept."""
    for sender, (body, reason) in cases.items():
        env = Envelope("update", NET, 0, "", body).signed_by(SIGNERS[sender])
        [rejected] = machine.on_envelope(env)
        assert reason in rejected.reason, rejected.reason
        assert rejected.penalty == "invalid-update"
    assert machine.updates == {}

def test_updates_that_do_not_open_are_logged_rejections_not_crashes():
    member = COMMITTEE[0]
    machine = RoundMachine(sealed_context(), member, seal_key=KEYS[member])
    good = sealed_body(TRAINERS[0], COMMITTEE)
    tampered = bytearray(good["sealed"])
    tampered[-1] ^= 1
    swapped = dict(good["keys"])
    swapped[member] = good["keys"][COMMITTEE[1]]  # another reader's wrap in our place
    cases = {
        TRAINERS[0]: ({**good, "sealed": bytes(tampered)}, "tampered"),
        TRAINERS[1]: ({**good, "keys": swapped}, "key wrap for us does not open"),
        TRAINERS[2]: (sealed_body(TRAINERS[2], COMMITTEE[1:]), "missing"),
        TRAINERS[3]: ({"model": encode_state(BASE), "samples": 5, "base": state_hash(BASE)},
                      "this network seals updates"),
    }
    assert_refused(machine, cases)
    ok = Envelope("update", NET, 0, "", sealed_body(TRAINERS[0], COMMITTEE)
                  ).signed_by(SIGNERS[TRAINERS[0]])
    assert machine.on_envelope(ok) == [] and set(machine.updates) == {TRAINERS[0]}


def test_an_update_whose_wraps_do_not_hold_the_committed_key_is_refused():
    """Key commitment (docs/protocol.md, Sealed updates): a reader opens only the key the
    signed body commits to, so a sender cannot show two readers two payloads."""
    member = COMMITTEE[0]
    machine = RoundMachine(sealed_context(), member, seal_key=KEYS[member])
    good = sealed_body(TRAINERS[0], COMMITTEE)
    # an equivocating sender: our wrap holds the key of another payload than the committed one
    poisoned = sealed_body(TRAINERS[1], COMMITTEE,
                           cbor2.dumps(encode_state(update_of(ATTACKER)), canonical=True))
    equivocating = {**good, "keys": {**good["keys"], member: poisoned["keys"][member]}}
    cases = {
        TRAINERS[0]: (equivocating, "holds a key other than the committed one"),
        TRAINERS[1]: ({**good, "commit": poisoned["commit"]},
                      "holds a key other than the committed one"),
        TRAINERS[2]: ({**good, "commit": good["commit"][:31]}, "commit is not 32 bytes"),
        TRAINERS[3]: ({k: v for k, v in good.items() if k != "commit"},
                      "malformed update body (a sealed update carries its key wraps and key "
                      "commitment: no 'commit')"),
    }
    assert_refused(machine, cases)
    # the other readers, whose wraps do hold the committed key, open it: the one payload
    other = RoundMachine(sealed_context(), COMMITTEE[1], seal_key=KEYS[COMMITTEE[1]])
    env = Envelope("update", NET, 0, "", equivocating).signed_by(SIGNERS[TRAINERS[0]])
    assert other.on_envelope(env) == [] and set(other.updates) == {TRAINERS[0]}


def test_a_blob_whose_wrap_does_not_hold_the_committed_key_is_refused():
    member = COMMITTEE[0]
    machine = RoundMachine(sealed_context(), member, seal_key=KEYS[member])
    good = sealed_body(TRAINERS[0], COMMITTEE)
    other_key, _ = KEYS[TRAINERS[0]].content_key(b"ctx", b"another payload")
    ciphertext = good.pop("sealed")
    body = {**good, "commit": key_commitment(other_key),
            "blob": BlobRef.of(ciphertext).to_obj()}
    env = Envelope("update", NET, 0, "", body).signed_by(SIGNERS[TRAINERS[0]])
    [fetch] = machine.on_envelope(env)
    assert fetch.ref == BlobRef.of(ciphertext)
    [rejected] = machine.on_blob(fetch.ref.digest, ciphertext)
    assert "sealed blob: the key wrap for us holds a key other than the committed one" in \
        rejected.reason and rejected.penalty == "invalid-update"
    assert machine.updates == {} and not machine.pending_blobs


def test_a_non_reader_refuses_a_certified_model_that_is_not_the_blocks():
    net = SealedNetwork()
    net.run()
    committed = next(iter(net.commits.values()))
    trainer = TRAINERS[0]
    machine = RoundMachine(sealed_context(), trainer, seal_key=KEYS[trainer])
    env = Envelope("block", NET, 0, "", committed.to_obj()).signed_by(SIGNERS[COMMITTEE[0]])
    [fetch] = machine.on_envelope(env)
    assert isinstance(fetch, FetchModel) and fetch.ref.digest == committed.block.model_hash
    assert machine.on_model(b"\1" * 32, b"junk") == []  # not the block's hash: ignored
    [rejected] = machine.on_model(fetch.ref.digest, cbor2.dumps({}))
    assert "model is invalid" in rejected.reason and machine.committed is None
    # a block whose selection does not follow from its score vectors is refused unfetched
    bad = CommittedBlock(Block(**{**committed.block.__dict__,
                                  "selected": tuple(sorted(TRAINERS))}), committed.certificate)
    other = RoundMachine(sealed_context(), trainer, seal_key=KEYS[trainer])
    env = Envelope("block", NET, 0, "", bad.to_obj()).signed_by(SIGNERS[COMMITTEE[0]])
    [rejected] = other.on_envelope(env)
    assert rejected.kind == "block" and other._model_ref is None
