"""pBFT for one height's committee, as a pure state machine.

Inputs: `start`, `propose` (the driver built a block), `on_message` (a signature-checked message
from a committee member, including this member's own messages fed back once signed),
`on_value_validated` (an asynchronous validity answer) and `on_timer`. Outputs: messages to sign
and broadcast, signed messages to relay, timers to set, equivocation evidence, rejections, and at
most one `Decided`. No clock, no randomness, no I/O: time, signing and signature verification
belong to the driver (`verify` checks the signatures of messages embedded in other messages).

Protocol (Castro and Liskov, one slot per height): the leader of view v is
committee[(height + v) % C]. In view 0 it sends a pre-prepare; a member that finds the value valid
broadcasts a prepare; a quorum (2f+1) of prepares makes the value *prepared*, and the member
broadcasts a commit; a quorum of commits for one (view, value) decides. When the view timer fires
(or the proposal is invalid) a member broadcasts a view change carrying its highest prepared
certificate; the next leader, with a quorum of them, sends a new-view that re-proposes the value
of the highest certificate, or a fresh value if none. Quorums of 2f+1 out of 3f+1 intersect in an
honest member, so no two values are decided.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

from bft.messages import (
    Commit,
    Message,
    NewView,
    PrePrepare,
    Prepare,
    PreparedCertificate,
    ViewChange,
    unsigned,
)
from bft.quorum import fault_tolerance, quorum_size

#: Name of the one timer the core uses: the deadline for deciding in the current view.
VIEW_TIMER = "view"

#: validate(value_hash, value) -> True (valid), False (invalid) or None (not yet known: inputs
#: are missing; the driver answers later through `on_value_validated`).
Validity = Callable[[bytes, bytes], Union[bool, None]]
#: verify(message) -> whether `message.signature` is `message.sender`'s over the message.
Verifier = Callable[[Message], bool]
#: digest(value) -> the 32-byte hash that identifies a value (the block hash).
Digest = Callable[[bytes], bytes]


def sha256(value: bytes) -> bytes:
    """The default value digest: SHA-256, the block hash when the value is the block's CBOR."""
    return hashlib.sha256(value).digest()


# outputs ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Broadcast:
    """Sign `message` as this member, send it to the committee, and feed the signed copy back."""

    message: Message


@dataclass(frozen=True)
class Relay:
    """Send these already-signed messages on unchanged, to help members that are behind."""

    messages: tuple[Message, ...]


@dataclass(frozen=True)
class SetTimer:
    """(Re)arm the timer `name` for `view`, to fire after base timeout * `duration_factor`."""

    name: str
    view: int
    duration_factor: int


@dataclass(frozen=True)
class ProposalNeeded:
    """This member leads `view` and has no value to propose: call `propose` when one is built."""

    view: int


@dataclass(frozen=True)
class Decided:
    """The height is decided: `value` with the commit certificate (member, signature) for view."""

    height: int
    view: int
    value_hash: bytes
    value: bytes
    certificate: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class Equivocation:
    """Evidence: `member` signed two different messages for one (height, view, kind)."""

    member: str
    first: Message
    second: Message


@dataclass(frozen=True)
class Rejected:
    """A message was refused; log why."""

    sender: str
    kind: str
    reason: str


Output = Union[Broadcast, Relay, SetTimer, ProposalNeeded, Decided, Equivocation, Rejected]


class PbftCore:
    """One committee member's pBFT state for one height."""

    def __init__(self, height: int, committee: tuple[str, ...], me: str, validate: Validity,
                 verify: Verifier, digest: Digest = sha256, backoff_cap: int = 6) -> None:
        if me not in committee or len(set(committee)) != len(committee):
            raise ValueError("me must be a member of a committee without duplicates")
        self.height = height
        self.committee = committee
        self.me = me
        self.f = fault_tolerance(len(committee))
        self.quorum = quorum_size(len(committee))
        self._validate = validate
        self._verify = verify
        self._digest = digest
        self._backoff_cap = backoff_cap
        # The current view, and whether we are leaving it (sent a view change, no new-view yet).
        self.view = 0
        self.changing = False
        self.prepared: PreparedCertificate | None = None
        self.decision: Decided | None = None
        self._started = False
        # Write-ahead record: what we signed per (kind, view); the one guard against double signing.
        self._signed: dict[tuple[str, int], bytes] = {}
        self._candidate: tuple[bytes, bytes] | None = None
        self._asked: set[int] = set()
        self._proposal: dict[int, tuple[bytes, bytes]] = {}
        self._validity: dict[bytes, bool] = {}
        self._values: dict[bytes, bytes] = {}
        self._carrier: dict[bytes, Message] = {}
        self._prepares: dict[tuple[int, bytes], dict[str, Prepare]] = {}
        self._commits: dict[tuple[int, bytes], dict[str, Commit]] = {}
        self._view_changes: dict[int, dict[str, ViewChange]] = {}
        self._vc_view_of: dict[str, int] = {}
        self._new_views: dict[int, NewView] = {}
        self._seen: dict[tuple[str, str, int], Message] = {}
        self._handled: set[Message] = set()
        self._accused: set[str] = set()
        self._relayed: set[tuple[str, int, int, bool, bool]] = set()

    def leader(self, view: int) -> str:
        """The member that proposes in `view`."""
        return self.committee[(self.height + view) % len(self.committee)]

    # inputs ------------------------------------------------------------------------------------
    def start(self) -> list[Output]:
        """Begin the height (or resume it after `from_snapshot`): arm the timer, maybe propose."""
        if self._started:
            return []
        self._started = True
        return [self._timer()] + self._try_propose()

    def propose(self, value_hash: bytes, value: bytes) -> list[Output]:
        """The driver built a value; it is proposed whenever this member leads a free view."""
        if self._digest(value) != value_hash:
            raise ValueError("value does not match value_hash")
        self._candidate = (value_hash, value)
        return self._try_propose() if self._started else []

    def on_message(self, message: Message) -> list[Output]:
        """A message whose envelope signature the driver checked (our own ones included)."""
        if message.height != self.height:
            return []
        if message.sender not in self.committee:
            return [Rejected(message.sender, message.kind, "sender is not on the committee")]
        outputs, fresh = self._observe(message)
        if not fresh:
            return outputs
        handler = {PrePrepare: self._on_pre_prepare, Prepare: self._on_prepare,
                   Commit: self._on_commit, ViewChange: self._on_view_change,
                   NewView: self._on_new_view}[type(message)]
        outputs += handler(message)  # type: ignore[operator]
        return outputs + self._relay_to(message)

    def on_value_validated(self, value_hash: bytes, ok: bool) -> list[Output]:
        """The answer to a validity check that was "not yet known" when the core asked."""
        self._validity[value_hash] = ok
        proposal = self._proposal.get(self.view)
        if self.changing or self.decision or proposal is None or proposal[0] != value_hash:
            return []
        return self._validate_then_prepare(self.view)

    def on_timer(self, name: str, view: int) -> list[Output]:
        """A timer set by `SetTimer` fired; stale ones (an older view) are ignored."""
        if name != VIEW_TIMER or view != self.view or self.decision:
            return []
        return self.start_view_change(view + 1)

    # protocol steps ----------------------------------------------------------------------------
    def enter_pre_prepare(self) -> list[Output]:
        """As leader of view 0, propose the driver's value."""
        assert self._candidate is not None
        value_hash, value = self._candidate
        if not self._may_sign("pre_prepare", 0, value_hash):
            return []
        return [Broadcast(PrePrepare(self.height, 0, value_hash, value))]

    def enter_prepare(self, view: int, value_hash: bytes) -> list[Output]:
        """The proposal of `view` is valid: say so, then see whether it is already prepared."""
        if not self._may_sign("prepare", view, value_hash):
            return []
        return [Broadcast(Prepare(self.height, view, value_hash))] + self._check_prepared()

    def enter_commit(self, view: int, value_hash: bytes) -> list[Output]:
        """A quorum prepared `value_hash` in `view`: commit to it."""
        if not self._may_sign("commit", view, value_hash):
            return []
        return [Broadcast(Commit(self.height, view, value_hash))]

    def start_view_change(self, view: int) -> list[Output]:
        """Leave the current view for `view`, reporting our highest prepared certificate."""
        if self.decision or view <= self.view:
            return []
        self.view, self.changing = view, True
        cert = self.prepared
        token = b"" if cert is None else cert.view.to_bytes(4, "big") + cert.value_hash
        outputs: list[Output] = [self._timer()]
        if self._may_sign("view_change", view, token):
            outputs.append(Broadcast(ViewChange(self.height, view, cert)))
        return outputs + self._try_propose()

    def enter_new_view(self) -> list[Output]:
        """As leader of the view we are changing to, with a quorum of view changes: open it."""
        view = self.view
        # Certificates first, so the new-view re-proposes the highest prepared value we hold.
        chosen = sorted(self._view_changes[view].values(), key=_cert_rank)[:self.quorum]
        certs = [vc.prepared for vc in chosen if vc.prepared is not None]
        if certs:
            best = max(certs, key=lambda c: c.view)
            value_hash, value = best.value_hash, best.value
        elif self._candidate is not None:
            value_hash, value = self._candidate
        else:
            return self._ask_for_proposal(view)
        if not self._may_sign("new_view", view, value_hash):
            return []
        return [Broadcast(NewView(self.height, view, value_hash, value, tuple(chosen)))]

    def accept_proposal(self, view: int, value_hash: bytes, value: bytes) -> list[Output]:
        """Take the (pre-prepared or new-view) proposal of `view`, our view, and validate it."""
        self._proposal[view] = (value_hash, value)
        return self._validate_then_prepare(view)

    def decide(self, view: int, value_hash: bytes) -> list[Output]:
        """A quorum committed `value_hash` in `view` and we know the value: the height is final."""
        commits = self._commits[(view, value_hash)]
        certificate = tuple(sorted((m, c.signature) for m, c in commits.items()))
        self.decision = Decided(self.height, view, value_hash, self._values[value_hash],
                                certificate)
        return [self.decision]

    # message handlers --------------------------------------------------------------------------
    def _on_pre_prepare(self, pp: PrePrepare) -> list[Output]:
        if pp.view != 0:
            return [Rejected(pp.sender, pp.kind, "pre-prepare outside view 0 (use new-view)")]
        if pp.sender != self.leader(0):
            return [Rejected(pp.sender, pp.kind, "sender does not lead view 0")]
        if not self._learn_value(pp.value_hash, pp.value, pp):
            return [Rejected(pp.sender, pp.kind, "value does not match its hash")]
        outputs = self._check_decided_value(pp.value_hash)
        if self.decision or self.view != 0 or self.changing or 0 in self._proposal:
            return outputs
        return outputs + self.accept_proposal(0, pp.value_hash, pp.value)

    def _on_prepare(self, p: Prepare) -> list[Output]:
        if p.view < self.view or self.decision:
            return []  # too late to matter: prepares only count in the current view
        self._prepares.setdefault((p.view, p.value_hash), {})[p.sender] = p
        return self._check_prepared() if p.view == self.view else []

    def _on_commit(self, c: Commit) -> list[Output]:
        # Commits count in any view: a quorum of them is a certificate on its own.
        self._commits.setdefault((c.view, c.value_hash), {})[c.sender] = c
        if self.decision or c.value_hash not in self._values:
            return []
        if len(self._commits[(c.view, c.value_hash)]) < self.quorum:
            return []
        return self.decide(c.view, c.value_hash)

    def _on_view_change(self, vc: ViewChange) -> list[Output]:
        reason = self._check_view_change(vc, embedded=False)
        if reason:
            return [Rejected(vc.sender, vc.kind, reason)]
        outputs: list[Output] = []
        if vc.prepared is not None:
            outputs += self._observe_embedded(vc.prepared.prepares)
            self._learn_value(vc.prepared.value_hash, vc.prepared.value, vc)
            outputs += self._check_decided_value(vc.prepared.value_hash)
        if self.decision or vc.view < self.view:
            return outputs
        self._view_changes.setdefault(vc.view, {})[vc.sender] = vc
        self._vc_view_of[vc.sender] = max(vc.view, self._vc_view_of.get(vc.sender, 0))
        # f+1 members ask for higher views: at least one is honest, so follow them rather than
        # wait out our own (maybe much longer) timer.
        ahead = sorted((v for v in self._vc_view_of.values() if v > self.view), reverse=True)
        if len(ahead) > self.f:
            outputs += self.start_view_change(ahead[self.f])
        return outputs + self._try_propose()

    def _on_new_view(self, nv: NewView) -> list[Output]:
        if nv.view == 0 or nv.sender != self.leader(nv.view):
            return [Rejected(nv.sender, nv.kind, "sender does not lead this view")]
        if not self._learn_value(nv.value_hash, nv.value, nv):
            return [Rejected(nv.sender, nv.kind, "value does not match its hash")]
        outputs = self._check_decided_value(nv.value_hash)
        if self.decision or nv.view < self.view or (nv.view == self.view and not self.changing):
            return outputs
        reason = self._check_new_view(nv)
        if reason:
            return outputs + [Rejected(nv.sender, nv.kind, reason)]
        # A valid new-view is self-certifying, so we may join it even from an older view.
        self.view, self.changing = nv.view, False
        self._new_views[nv.view] = nv
        outputs.append(self._timer())
        return outputs + self.accept_proposal(nv.view, nv.value_hash, nv.value)

    # checks ------------------------------------------------------------------------------------
    def _check_view_change(self, vc: ViewChange, embedded: bool) -> str:
        """Why `vc` is not a well-formed view change ("" if it is); signatures via `verify`."""
        if vc.view == 0:
            return "view change to view 0"
        if embedded and (vc.sender not in self.committee or not self._verify(vc)):
            return "embedded view change is not signed by a member"
        cert = vc.prepared
        if cert is None:
            return ""
        if cert.view >= vc.view:
            return "prepared certificate is not from an earlier view"
        if self._digest(cert.value) != cert.value_hash:
            return "prepared value does not match its hash"
        senders = {p.sender for p in cert.prepares}
        if len(senders) != len(cert.prepares) or len(senders) < self.quorum:
            return "prepared certificate lacks a quorum of distinct members"
        for p in cert.prepares:
            if (p.height, p.view, p.value_hash) != (self.height, cert.view, cert.value_hash):
                return "prepared certificate mixes prepares of other proposals"
            if p.sender not in self.committee or not self._verify(p):
                return "prepared certificate holds a prepare not signed by a member"
        return ""

    def _check_new_view(self, nv: NewView) -> str:
        """Why `nv` does not justify its proposal ("" if it does)."""
        senders = {vc.sender for vc in nv.view_changes}
        if len(senders) != len(nv.view_changes) or len(senders) < self.quorum:
            return "new-view lacks a quorum of distinct view changes"
        held = self._view_changes.get(nv.view, {})
        for vc in nv.view_changes:
            if vc.height != self.height or vc.view != nv.view:
                return "new-view holds a view change for another height or view"
            if held.get(vc.sender) == vc:
                continue  # we checked this very message when it reached us directly
            reason = self._check_view_change(vc, embedded=True)
            if reason:
                return reason
        certs = [vc.prepared for vc in nv.view_changes if vc.prepared is not None]
        if certs:
            top = max(c.view for c in certs)
            if nv.value_hash not in {c.value_hash for c in certs if c.view == top}:
                return "new-view does not re-propose the highest prepared value"
        return ""

    def _validate_then_prepare(self, view: int) -> list[Output]:
        value_hash, value = self._proposal[view]
        ok = self._validity.get(value_hash)
        if ok is None:
            ok = self._validate(value_hash, value)
            if ok is None:
                return []  # the driver calls on_value_validated once it knows
            self._validity[value_hash] = ok
        if not ok:
            # An invalid proposal proves the leader faulty: change view now, not at the timeout.
            leader = self.leader(view)
            kind = "pre_prepare" if view == 0 else "new_view"
            return ([Rejected(leader, kind, "proposed value is invalid")]
                    + self.start_view_change(view + 1))
        return self.enter_prepare(view, value_hash)

    def _check_prepared(self) -> list[Output]:
        proposal = self._proposal.get(self.view)
        if self.changing or self.decision or proposal is None:
            return []
        value_hash, value = proposal
        # Our own prepare is the proof that we validated the value; without it we wait.
        if (self._signed.get(("prepare", self.view)) != value_hash
                or ("commit", self.view) in self._signed):
            return []
        votes = self._prepares.get((self.view, value_hash), {})
        if len(votes) < self.quorum:
            return []
        if self.prepared is None or self.prepared.view < self.view:
            prepares = tuple(votes[m] for m in sorted(votes)[:self.quorum])
            self.prepared = PreparedCertificate(self.view, value_hash, value, prepares)
        return self.enter_commit(self.view, value_hash)

    def _check_decided_value(self, value_hash: bytes) -> list[Output]:
        # The value may arrive after a quorum of commits for it (relayed to a lagging member).
        if self.decision:
            return []
        for (view, h), commits in self._commits.items():
            if h == value_hash and len(commits) >= self.quorum:
                return self.decide(view, h)
        return []

    # helpers -----------------------------------------------------------------------------------
    def _try_propose(self) -> list[Output]:
        if not self._started or self.decision or self.leader(self.view) != self.me:
            return []
        if self.view == 0 and not self.changing:
            if ("pre_prepare", 0) in self._signed:
                return []
            if self._candidate is None:
                return self._ask_for_proposal(0)
            return self.enter_pre_prepare()
        if (self.changing and ("new_view", self.view) not in self._signed
                and len(self._view_changes.get(self.view, {})) >= self.quorum):
            return self.enter_new_view()
        return []

    def _ask_for_proposal(self, view: int) -> list[Output]:
        if view in self._asked:
            return []
        self._asked.add(view)
        return [ProposalNeeded(view)]

    def _may_sign(self, kind: str, view: int, token: bytes) -> bool:
        """Record that we sign (kind, view, token); False if we already signed something else."""
        signed = self._signed.setdefault((kind, view), token)
        return signed == token

    def _timer(self) -> SetTimer:
        return SetTimer(VIEW_TIMER, self.view, 2 ** min(self.view, self._backoff_cap))

    def _learn_value(self, value_hash: bytes, value: bytes, carrier: Message) -> bool:
        if value_hash in self._values:
            return True
        if self._digest(value) != value_hash:
            return False
        self._values[value_hash] = value
        self._carrier[value_hash] = carrier
        return True

    def _observe(self, message: Message, direct: bool = True) -> tuple[list[Output], bool]:
        """Flag a member's second, different message for one (kind, view); say if `message` is new.

        A conflicting message is still handled: quorums stay safe when an equivocator is counted
        on both sides (any quorum still holds f+1 honest members), and a certificate that others
        assembled may rest on the version we saw second. Embedded messages (`direct=False`) are
        only looked at for evidence.
        """
        outputs: list[Output] = []
        key = (message.sender, message.kind, message.view)
        first = self._seen.setdefault(key, message)
        if (first is not message and message.sender not in self._accused
                and unsigned(first) != unsigned(message)):
            self._accused.add(message.sender)
            outputs.append(Equivocation(message.sender, first, message))
        content = unsigned(message)
        if not direct or content in self._handled:
            return outputs, False
        self._handled.add(content)
        return outputs, True

    def _observe_embedded(self, prepares: tuple[Prepare, ...]) -> list[Output]:
        # Signed prepares inside certificates are evidence too; they count nowhere else.
        outputs: list[Output] = []
        for p in prepares:
            outputs += self._observe(p, direct=False)[0]
        return outputs

    def _relay_to(self, message: Message) -> list[Output]:
        """Help a member that is behind us with the signed messages that let it catch up."""
        sender = message.sender
        if sender == self.me:
            return []
        decided = self.decision is not None
        if self.decision is not None:
            # Votes of the decided view are ordinary traffic; anything else means "not decided".
            behind = message.view != self.decision.view or isinstance(message, ViewChange)
        else:
            behind = message.view < self.view or (
                message.view == self.view and not self.changing
                and isinstance(message, ViewChange))
        # Once per member, its view and our state: bounded, yet repeated when it moves on.
        key = (sender, message.view, self.view, self.changing, decided)
        if not behind or key in self._relayed:
            return []
        messages: tuple[Message, ...] = ()
        if self.decision is not None:
            d = self.decision
            commits = self._commits[(d.view, d.value_hash)]
            carrier = self._carrier.get(d.value_hash)
            messages = (() if carrier is None else (carrier,)) + tuple(
                commits[m] for m, _ in d.certificate)
        elif self.changing and self.me in self._view_changes.get(self.view, {}):
            messages = (self._view_changes[self.view][self.me],)
        elif not self.changing and self.view in self._new_views:
            messages = (self._new_views[self.view],)
        if not messages:
            return []
        self._relayed.add(key)
        return [Relay(messages)]

    # write-ahead state -------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """What the core has signed, as plain CBOR-able data: persist it before sending outputs."""
        prepared = self.prepared
        return {"height": self.height, "view": self.view, "changing": self.changing,
                "signed": [[k, v, t] for (k, v), t in sorted(self._signed.items())],
                "prepared": None if prepared is None else {
                    "view": prepared.view, "value_hash": prepared.value_hash,
                    "value": prepared.value,
                    "prepares": [[p.sender, p.signature] for p in prepared.prepares]}}

    @classmethod
    def from_snapshot(cls, snapshot: dict[str, Any], committee: tuple[str, ...], me: str,
                      validate: Validity, verify: Verifier, digest: Digest = sha256,
                      backoff_cap: int = 6) -> PbftCore:
        """A core that resumes after a crash and never contradicts what it signed before."""
        core = cls(snapshot["height"], committee, me, validate, verify, digest, backoff_cap)
        core.view, core.changing = snapshot["view"], snapshot["changing"]
        core._signed = {(k, v): t for k, v, t in snapshot["signed"]}
        p = snapshot["prepared"]
        if p is not None:
            prepares = tuple(Prepare(core.height, p["view"], p["value_hash"], m, s)
                             for m, s in p["prepares"])
            core.prepared = PreparedCertificate(p["view"], p["value_hash"], p["value"], prepares)
            core._values[p["value_hash"]] = p["value"]
        return core


def _cert_rank(vc: ViewChange) -> tuple[int, str]:
    return (-(vc.prepared.view if vc.prepared else -1), vc.sender)
