"""Byzantine committee behaviours for the attack lab: what a malicious member says instead.

Pure functions over message bodies; `p2p-node run --byzantine ...` applies them in the driver so
a real peer misbehaves on the wire exactly as the simulator's Byzantine replicas do.
"""

from __future__ import annotations

import hashlib
from typing import Any

#: equivocate, equivocate_votes and silent are committee behaviours; withhold is a trainer's: it
#: announces a large update by reference and then serves none of its bytes
BEHAVIOURS = ("none", "equivocate", "equivocate_votes", "silent", "withhold")


def conflicting_proposal(body: dict[str, Any]) -> dict[str, Any]:
    """The same pre-prepare/new-view body proposing a different value (its last byte flipped).

    Sent beside the real proposal, it is an equivocation: two signed proposals for one view.
    """
    value = bytes(body["value"])
    other = value[:-1] + bytes([value[-1] ^ 0x01]) if value else b"\x00"
    return {**body, "value": other, "value_hash": hashlib.sha256(other).digest()}


def conflicting_vote(body: dict[str, Any]) -> dict[str, Any]:
    """The same prepare/commit body for another value hash, one every equivocating member derives
    alike from the real one (so colluders' second votes pile up on one value).

    Sent beside the real vote, it is an equivocation: two signed votes for one view."""
    other = hashlib.sha256(b"equivocation" + bytes(body["value_hash"])).digest()
    return {**body, "value_hash": other}
