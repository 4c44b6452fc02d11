"""Bytes a peer moved, by kind, direction and peer, per round: what `events.jsonl`, the log and
the Prometheus metrics report as the cost of a round.

Counted are payload bytes at our boundary with libp2p: gossip messages as they arrive at the
validator (from the forwarding peer, accepted or not), gossip messages we hand to gossipsub
(once per publish, before its fan-out to the mesh), blob bytes fetched and served over
`/cmfl/blob/1`. Noise, yamux and gossipsub framing and gossipsub's fan-out copies are not in
these figures (see docs/operators.md, "Bytes per round").
"""

from __future__ import annotations

from collections import defaultdict

#: (kind, direction) pairs the ledger reports, in this order.
KINDS = (("gossip", "in"), ("gossip", "published"), ("blob", "in"), ("blob", "out"))


class TrafficLedger:
    """Byte counts since the last `take_round()`, and totals since start."""

    def __init__(self) -> None:
        self.total: dict[tuple[str, str], int] = defaultdict(int)
        self._round: dict[tuple[str, str], int] = defaultdict(int)
        self._round_by_peer: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def add(self, kind: str, direction: str, nbytes: int, peer: str | None = None) -> None:
        """Count `nbytes` of `kind` ("gossip", "blob") moving `direction` (to or from `peer`)."""
        self.total[(kind, direction)] += nbytes
        self._round[(kind, direction)] += nbytes
        if peer is not None:
            self._round_by_peer[peer][f"{kind}_{direction}"] += nbytes

    def take_round(self) -> dict:
        """This round's counts (and per peer, by the peer ID's last 8 characters); resets them."""
        out = {f"{k}_{d}": self._round.get((k, d), 0) for k, d in KINDS}
        out["in"] = out["gossip_in"] + out["blob_in"]
        out["out"] = out["gossip_published"] + out["blob_out"]
        out["by_peer"] = {p[-8:]: dict(c) for p, c in sorted(self._round_by_peer.items())}
        self._round.clear()
        self._round_by_peer.clear()
        return out
