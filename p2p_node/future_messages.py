"""Messages of rounds this peer has not reached yet, held until it does: bounded.

A peer a round or two ahead of us is normal (it committed first), so its messages for those
rounds are kept and replayed when our round catches up. Unbounded, that buffer was a way to fill
a peer's memory: a member's flood of well-signed, all-different messages for the next two rounds
(160 MB in a test) was held in full and stalled commits while it was. An honest member signs a
handful of messages a round (an update, a score vector, a few pBFT votes per view), and a
rebroadcast is the same envelope again, so: duplicates are dropped silently, more than `per_sender_round`
distinct messages of one sender for one round are refused as a flood, and the whole buffer is
capped in bytes. Pure: no trio, no clock.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field

from gossip.envelope import Envelope

#: Distinct messages one member may have held for one future round (an honest one sends ~6-10:
#: update, scores, and per view a pre-prepare, prepare, commit, view change, new view).
PER_SENDER_ROUND = 16
#: All held messages together, in wire bytes.
MAX_HELD_BYTES = 256 * 1024 * 1024


@dataclass
class FutureMessages:
    """Envelopes for rounds ahead of ours, by round; `hold` says why it refused one."""

    per_sender_round: int = PER_SENDER_ROUND
    max_bytes: int = MAX_HELD_BYTES
    held_bytes: int = 0
    _by_round: dict[int, list[tuple[Envelope, int]]] = field(
        default_factory=lambda: defaultdict(list))
    _digests: dict[int, set[bytes]] = field(default_factory=lambda: defaultdict(set))
    _count: dict[tuple[int, str], int] = field(default_factory=lambda: defaultdict(int))

    def hold(self, env: Envelope, wire: bytes) -> str | None:
        """Keep `env` (whose wire bytes are `wire`) for its round. None if held or a duplicate;
        else the refusal code: "future-flood" (its sender's share for that round is full,
        misbehaviour) or "future-full" (the buffer is full, not the sender's fault alone)."""
        digest = hashlib.sha256(wire).digest()
        if digest in self._digests[env.round]:
            return None
        if self._count[(env.round, env.sender)] >= self.per_sender_round:
            return "future-flood"
        if self.held_bytes + len(wire) > self.max_bytes:
            return "future-full"
        self._digests[env.round].add(digest)
        self._count[(env.round, env.sender)] += 1
        self._by_round[env.round].append((env, len(wire)))
        self.held_bytes += len(wire)
        return None

    def release(self, height: int) -> list[Envelope]:
        """The messages held for `height`, in arrival order; those of earlier rounds (skipped by
        a sync, say) are dropped."""
        out: list[Envelope] = []
        for rnd in sorted(r for r in self._by_round if r <= height):
            entries = self._by_round.pop(rnd)
            self.held_bytes -= sum(size for _, size in entries)
            self._digests.pop(rnd, None)
            if rnd == height:
                out = [env for env, _ in entries]
        for key in [k for k in self._count if k[0] <= height]:
            del self._count[key]
        return out

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_round.values())
