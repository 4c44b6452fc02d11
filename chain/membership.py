"""Who is a member after genesis: join requests, the admission policy, and silent trainers leaving.

Pure rules over the chain. The member set before block h is the genesis members plus every
admission minus every departure recorded in blocks 0..h-1 (`Roster`); a block's own changes take
effect from the next round, so a peer admitted in block h is a trainer from round h+1 on.

* **Joining.** A peer outside the member set signs a `join` envelope (kind "join", this network,
  round = the height it asks to join at, payload `{"addrs": [...]}`) and gossips it. A round's
  leader puts the requests it holds into its block (`admissible_joins`), as wire bytes, and every
  peer re-checks each one (`check_join`): decodable, a join of this network, validly signed,
  sent at most `JOIN_WINDOW` rounds before the block and not after it, by a non-member the
  genesis policy admits, and not older than the sender's last departure (so a replayed old
  request cannot bring a departed peer back against its will).
* **Leaving.** A trainer that no score vector of a block names (no committee member got its
  update in time) is silent in that block; after `leave_after` consecutive silent blocks it is
  recorded as leaving, from the chain alone. The pool never empties: departures stop while one
  trainer would be left. A departed peer may join again with a new request.

The genesis `membership` field sets the policy; without it the network keeps its genesis
members for ever (no joins, no departures), as every network did before this module, and
its network id is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from chain.block import Block, BlockError, MembershipChange
from gossip.envelope import Envelope, EnvelopeError, decode_envelope
from gossip.peer_keys import public_key_from_peer_id

#: How many rounds a join request stays good for: a joiner re-signs one each round until admitted.
JOIN_WINDOW = 8
#: Joins one block may record: bounds the block size under a flood of (open-policy) requests.
MAX_JOINS_PER_BLOCK = 8
#: A join envelope is a peer id and a few addresses.
MAX_JOIN_BYTES = 4096
MAX_JOIN_ADDRS = 8
MAX_ADDR_CHARS = 256
#: `leave_after` when the genesis has a `membership` field that does not set it.
DEFAULT_LEAVE_AFTER = 3

ADMISSION_POLICIES = ("closed", "allowlist", "open")


@dataclass(frozen=True)
class MembershipRules:
    """The genesis `membership` settings.

    `admission`: `closed` (only genesis members, and only to come back after leaving),
    `allowlist` (those, and the peers in `allow`) or `open` (anyone). `leave_after`: silent
    blocks in a row after which a trainer leaves; 0 never.
    """

    admission: str = "closed"
    allow: frozenset[str] = frozenset()
    leave_after: int = 0
    #: the genesis members: always admitted back after leaving
    founders: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], founders: Iterable[str] = ()
                      ) -> MembershipRules:
        """Parse a genesis `membership` object ({} = the default); ValueError names the problem."""
        unknown = set(settings) - {"admission", "allow", "leave_after"}
        if unknown:
            raise ValueError(f"unknown membership settings {sorted(unknown)}")
        if not settings:
            return cls(founders=frozenset(founders))
        admission = settings.get("admission", "closed")
        if admission not in ADMISSION_POLICIES:
            raise ValueError(f"admission must be one of {', '.join(ADMISSION_POLICIES)}")
        allow = settings.get("allow", [])
        if not isinstance(allow, list) or (allow and admission != "allowlist"):
            raise ValueError("allow is a list of peer ids, for the allowlist policy only")
        for peer in allow:
            public_key_from_peer_id(peer)  # ValueError unless an Ed25519 peer id
        leave_after = settings.get("leave_after", DEFAULT_LEAVE_AFTER)
        if not isinstance(leave_after, int) or isinstance(leave_after, bool) or leave_after < 0:
            raise ValueError("leave_after is a number of rounds (0: never)")
        return cls(admission, frozenset(allow), leave_after, frozenset(founders))

    def admits(self, peer: str) -> bool:
        """True if the policy lets `peer` join (when it is not a member)."""
        return (self.admission == "open" or peer in self.founders
                or (self.admission == "allowlist" and peer in self.allow))

    def joiners(self) -> frozenset[str] | None:
        """The non-members whose join requests gossip may carry; None: anyone's."""
        return None if self.admission == "open" else self.founders | self.allow


@dataclass(frozen=True)
class Roster:
    """The member set before a block, and the chain's record of silence and departures."""

    members: tuple[str, ...]
    #: trainers silent in the last blocks in a row, and how many (only those with >= 1)
    silent: Mapping[str, int] = field(default_factory=dict)
    #: departed peers and the height of the block that recorded their leaving (the last time)
    departed: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of_genesis(cls, members: Iterable[str]) -> Roster:
        return cls(tuple(sorted(members)))

    def after(self, block: Block) -> Roster:
        """The roster after a valid block: its silence counted, its changes applied."""
        silent = self.silent_after(block.trainers, named_trainers(block.score_vectors))
        members, departed = set(self.members), dict(self.departed)
        for change in block.membership:
            if change.kind == "join":
                members.add(change.peer)
            else:
                members.discard(change.peer)
                silent.pop(change.peer, None)
                departed[change.peer] = block.height
        return Roster(tuple(sorted(members)), silent, departed)

    def silent_after(self, trainers: Iterable[str], named: set[str]) -> dict[str, int]:
        """Silence counts once a block with these trainers and these named in score vectors is
        added: a silent trainer counts one more, anyone else starts again from zero."""
        return {t: self.silent.get(t, 0) + 1 for t in trainers if t not in named}


def named_trainers(score_vectors: Iterable[bytes]) -> set[str]:
    """Trainers at least one of a block's score vectors names (shape already checked)."""
    named: set[str] = set()
    for raw in score_vectors:
        payload = decode_envelope(raw).payload
        # a score vector's entries, or the updates a judge's vote vector judged
        named |= {entry[0] for entry in payload.get("scores", payload.get("judged", []))}
    return named


def departures(rules: MembershipRules, roster: Roster, committee: tuple[str, ...],
               trainers: tuple[str, ...], named: set[str]) -> list[str]:
    """The trainers a block records as leaving: silent for `leave_after` blocks in a row,
    in id order, as many as leave at least one trainer in the pool."""
    if rules.leave_after == 0:
        return []
    due = sorted(t for t, n in roster.silent_after(trainers, named).items()
                 if n >= rules.leave_after)
    room = len(roster.members) - len(committee) - 1
    return due[:max(room, 0)]


def join_request(network_id: bytes, height: int, addrs: Iterable[str] = ()) -> Envelope:
    """The (unsigned) join envelope a peer signs to ask to join at `height`."""
    return Envelope("join", network_id, height, "",
                    {"addrs": [a for a in addrs if len(a) <= MAX_ADDR_CHARS][:MAX_JOIN_ADDRS]})


def check_join(rules: MembershipRules, roster: Roster, network_id: bytes, height: int,
               raw: bytes) -> Envelope:
    """The join request `raw` if a block at `height` may admit its sender; BlockError says why
    not."""
    try:
        env = decode_envelope(raw, MAX_JOIN_BYTES)
    except EnvelopeError as exc:
        raise BlockError(f"join request: {exc}") from None
    who = env.sender[-8:]
    if env.kind != "join" or env.network_id != network_id:
        raise BlockError("join request is not a join of this network")
    body = env.payload
    if not (isinstance(body, dict) and set(body) == {"addrs"} and isinstance(body["addrs"], list)
            and len(body["addrs"]) <= MAX_JOIN_ADDRS
            and all(isinstance(a, str) and len(a) <= MAX_ADDR_CHARS for a in body["addrs"])):
        raise BlockError(f"join request of {who} has a malformed body")
    if not env.has_valid_signature():
        raise BlockError(f"join request of {who} has a forged signature")
    if env.sender in roster.members:
        raise BlockError(f"join request of {who}: already a member")
    if env.round > height or env.round + JOIN_WINDOW < height:
        raise BlockError(f"join request of {who} is for round {env.round}, not within "
                         f"{JOIN_WINDOW} rounds before {height}")
    if env.sender in roster.departed and env.round <= roster.departed[env.sender]:
        raise BlockError(f"join request of {who} is a replay: older than its leaving at "
                         f"height {roster.departed[env.sender]}")
    if not rules.admits(env.sender):
        raise BlockError(f"join request of {who}: the {rules.admission} admission policy "
                         "does not admit it")
    return env


def admissible_joins(rules: MembershipRules, roster: Roster, network_id: bytes, height: int,
                     requests: Iterable[bytes]) -> tuple[bytes, ...]:
    """What a proposer records: of the requests it holds, the valid ones, the newest per peer,
    the first MAX_JOINS_PER_BLOCK in peer id order (the rest wait for a later block)."""
    newest: dict[str, Envelope] = {}
    for raw in requests:
        try:
            env = check_join(rules, roster, network_id, height, raw)
        except BlockError:
            continue
        held = newest.get(env.sender)
        if held is None or (env.round, env.encode()) > (held.round, held.encode()):
            newest[env.sender] = env
    return tuple(newest[p].encode() for p in sorted(newest)[:MAX_JOINS_PER_BLOCK])


def derive_changes(rules: MembershipRules, roster: Roster, network_id: bytes, height: int,
                   committee: tuple[str, ...], trainers: tuple[str, ...], named: set[str],
                   joins: Iterable[bytes]) -> tuple[MembershipChange, ...]:
    """A block's membership changes, sorted: the departures the chain implies and an admission
    per join request. BlockError if a request is invalid, repeated or one too many."""
    admitted: dict[str, bytes] = {}
    for raw in joins:
        env = check_join(rules, roster, network_id, height, raw)
        if env.sender in admitted:
            raise BlockError(f"two join requests of {env.sender[-8:]}")
        admitted[env.sender] = raw
    if len(admitted) > MAX_JOINS_PER_BLOCK:
        raise BlockError(f"{len(admitted)} joins, at most {MAX_JOINS_PER_BLOCK} per block")
    changes = [MembershipChange("join", p, r) for p, r in admitted.items()]
    changes += [MembershipChange("leave", p)
                for p in departures(rules, roster, committee, trainers, named)]
    return tuple(sorted(changes, key=lambda c: (c.kind, c.peer)))


def join_requests(block: Block) -> tuple[bytes, ...]:
    """The join requests a block records (what re-deriving its membership starts from)."""
    return tuple(c.request for c in block.membership if c.kind == "join")
