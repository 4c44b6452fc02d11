"""One-shot committee agreement: each member votes for at most one block per height.

This is the walking skeleton's agreement, safe but not live under a faulty leader: two
conflicting certificates would need two quorums, which share at least f+1 members, so more than
f members would have to vote twice. There is no view change: a silent leader stalls the round.
The pBFT core (pre-prepare, prepare, commit, view change) replaces this class.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bft.quorum import quorum_size
from chain.block import CommitCertificate


@dataclass
class VoteAgreement:
    """Votes of one height's committee; pure: the caller verifies signatures before `on_vote`."""

    committee: tuple[str, ...]
    me: str
    voted_for: bytes | None = None
    _votes: dict[bytes, dict[str, bytes]] = field(default_factory=dict)
    _first_vote_of: dict[str, bytes] = field(default_factory=dict)

    @property
    def is_member(self) -> bool:
        return self.me in self.committee

    def vote_for(self, block_hash: bytes) -> bool:
        """Whether this member should now cast a vote for `block_hash` (once per height)."""
        if not self.is_member or self.voted_for is not None:
            return False
        self.voted_for = block_hash
        return True

    def on_vote(self, member: str, block_hash: bytes, signature: bytes) -> str:
        """Record a verified vote; returns "" or a reason it was not counted."""
        if member not in self.committee:
            return "vote from a non-committee peer"
        first = self._first_vote_of.setdefault(member, block_hash)
        if first != block_hash:
            # Equivocation: only the first vote counts; evidence handling comes with pBFT.
            return f"{member[-8:]} voted for two blocks"
        self._votes.setdefault(block_hash, {})[member] = signature
        return ""

    def certificate(self, block_hash: bytes) -> CommitCertificate | None:
        """A commit certificate for `block_hash` once a quorum voted for it."""
        votes = self._votes.get(block_hash, {})
        if len(votes) < quorum_size(len(self.committee)):
            return None
        return CommitCertificate(tuple(sorted(votes.items())))
