"""Byzantine committee behaviours for the attack lab: what a malicious member says instead.

Pure functions over message bodies; `p2p-node run --byzantine ...` applies them in the driver so
a real peer misbehaves on the wire exactly as the simulator's Byzantine replicas do.
"""

from __future__ import annotations

import hashlib
from typing import Any

#: equivocate and silent are committee behaviours; withhold is a trainer's: it announces a large
#: update by reference and then serves none of its bytes
BEHAVIOURS = ("none", "equivocate", "silent", "withhold")


def conflicting_proposal(body: dict[str, Any]) -> dict[str, Any]:
    """The same pre-prepare/new-view body proposing a different value (its last byte flipped).

    Sent beside the real proposal, it is an equivocation: two signed proposals for one view.
    """
    value = bytes(body["value"])
    other = value[:-1] + bytes([value[-1] ^ 0x01]) if value else b"\x00"
    return {**body, "value": other, "value_hash": hashlib.sha256(other).digest()}
