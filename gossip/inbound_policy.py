"""What a forwarding peer may cost us: per-peer budgets, the ban list, and log throttling. Pure.

No trio, no libp2p: callers pass the time (`now`, seconds) and peer ids as strings, and carry out
the verdicts (drop, penalise, disconnect) themselves (gossip/guarded_pubsub.py).

Budget sizing (measured, docs/network.md "Inbound budgets"): an honest peer forwards each
message once per mesh peer, so its rate is the network's message rate. In the 10-peer demo
a 6-peer cluster that peaked at 26 messages in one second from one forwarder (median 24:
updates, score vectors, pBFT, blocks and their rebroadcasts) and 0.11 MiB.
With 1 MiB inline updates a forwarder passes on one 1 MiB update per trainer within a second or
two. The budgets allow 10x that message peak (and 40x the sustained rate) as a burst and a hundred 1 MiB updates in a
burst, so only floods hit them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MiB = 1024 * 1024

#: Messages (and RPC frames without messages) per second per forwarding peer, sustained.
MESSAGES_PER_SECOND = 200.0
#: ... and as a burst: a large network's round (one update per trainer at once).
MESSAGE_BURST = 1000.0
#: Bytes per second per forwarding peer, sustained: 16 inline updates of 1 MiB a second.
BYTES_PER_SECOND = 16.0 * MiB
#: ... and as a burst: 64 inline updates of 1 MiB back to back.
BYTE_BURST = 64.0 * MiB
#: A message whose origin is no member costs this many tokens of its forwarder's budget: it is
#: dropped unread, but an honest forwarder never sends one (it validated first).
NON_MEMBER_COST = 4.0
#: A message our validator refused (stale, early, malformed...) costs its forwarder this many
#: more tokens: honest peers validate before they forward, so only a trickle of late copies
#: reaches us refused, while a member's flood of well-signed stale messages (measured: 170 a
#: second per peer, under the plain budget, halved the commit rate) now runs out of budget.
REFUSED_COST = 4.0
#: A banned peer stays disconnected at least this long (and until its score is back above the
#: graylist threshold, which evidence decay decides: gossip/peer_scoring.py).
BAN_SECONDS = 120.0
#: Inbound streams one peer may hold open at once, over all protocols (pubsub needs one, sync
#: and blob transfers a few each).
MAX_INBOUND_STREAMS_PER_PEER = 32
#: Messages waiting for validation, over all peers; the read loops wait when it is full.
MAX_PENDING_MESSAGES = 256
#: Tasks validating and routing messages (validation is CPU-bound; routing awaits queues).
MESSAGE_WORKERS = 4
#: One log line per (peer, reason) at most this often; the lines in between are counted.
LOG_INTERVAL_SECONDS = 10.0


@dataclass
class TokenBucket:
    """`rate` tokens a second up to `burst`; a take that would go below zero fails."""

    rate: float
    burst: float
    tokens: float = -1.0
    stamp: float = 0.0

    def take(self, amount: float, now: float) -> bool:
        if self.tokens < 0:  # first use: full
            self.tokens, self.stamp = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if amount > self.tokens:
            return False
        self.tokens -= amount
        return True


@dataclass(frozen=True)
class Budget:
    """Per-forwarder limits; the defaults are the module constants."""

    messages_per_second: float = MESSAGES_PER_SECOND
    message_burst: float = MESSAGE_BURST
    bytes_per_second: float = BYTES_PER_SECOND
    byte_burst: float = BYTE_BURST


@dataclass
class PeerBudgets:
    """One message bucket and one byte bucket per forwarding peer."""

    budget: Budget = field(default_factory=Budget)
    _messages: dict[str, TokenBucket] = field(default_factory=dict)
    _bytes: dict[str, TokenBucket] = field(default_factory=dict)

    def charge_bytes(self, peer: str, nbytes: int, now: float) -> bool:
        """Charge a frame's bytes (before it is parsed); False: over budget, drop it unread."""
        bucket = self._bytes.get(peer)
        if bucket is None:
            bucket = self._bytes[peer] = TokenBucket(self.budget.bytes_per_second,
                                                     self.budget.byte_burst)
        return bucket.take(nbytes, now)

    def charge_messages(self, peer: str, count: float, now: float) -> bool:
        """Charge `count` messages' worth; False: over budget, drop them unread."""
        bucket = self._messages.get(peer)
        if bucket is None:
            bucket = self._messages[peer] = TokenBucket(self.budget.messages_per_second,
                                                        self.budget.message_burst)
        return bucket.take(count, now)

    def forget(self, peer: str) -> None:
        """Drop a disconnected peer's buckets (a reconnect starts full: bans stop abuse)."""
        self._messages.pop(peer, None)
        self._bytes.pop(peer, None)


@dataclass
class BanList:
    """Peers refused until a time."""

    seconds: float = BAN_SECONDS
    _until: dict[str, float] = field(default_factory=dict)

    def ban(self, peer: str, now: float) -> None:
        self._until[peer] = max(self._until.get(peer, 0.0), now + self.seconds)

    def banned(self, peer: str, now: float) -> bool:
        until = self._until.get(peer)
        if until is None:
            return False
        if now >= until:
            del self._until[peer]
            return False
        return True


@dataclass
class LogThrottle:
    """Say one line per key per interval; count what was held back, to report with the next."""

    interval: float = LOG_INTERVAL_SECONDS
    _last: dict[tuple, float] = field(default_factory=dict)
    _held: dict[tuple, int] = field(default_factory=dict)

    def allow(self, key: tuple, now: float) -> int | None:
        """None: stay quiet; else log now, mentioning the returned count of held-back lines."""
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        if len(self._last) > 4096:  # a flood of fresh keys must not grow this without bound
            self._last.clear()
            self._held.clear()
        self._last[key] = now
        return self._held.pop(key, 0)


#: Ed25519 peer ids are identity multihashes of the protobuf public key: these 6 bytes + 32.
ED25519_PEER_ID_PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])


def is_ed25519_peer_id(raw: bytes) -> bool:
    """True for the bytes of an Ed25519 peer id, the only kind our members have."""
    return len(raw) == 38 and raw.startswith(ED25519_PEER_ID_PREFIX)


@dataclass
class RateMeter:
    """Per-peer peak of messages and bytes received within one whole second (for sizing the
    budgets from real traffic: scripts/measure_honest_rates.py)."""

    _second: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    peak_messages: dict[str, int] = field(default_factory=dict)
    peak_bytes: dict[str, int] = field(default_factory=dict)

    def add(self, peer: str, messages: int, nbytes: int, now: float) -> None:
        second = int(now)
        at, count, size = self._second.get(peer, (second, 0, 0))
        if at != second:
            count, size = 0, 0
        count, size = count + messages, size + nbytes
        self._second[peer] = (second, count, size)
        if count > self.peak_messages.get(peer, 0):
            self.peak_messages[peer] = count
        if size > self.peak_bytes.get(peer, 0):
            self.peak_bytes[peer] = size
