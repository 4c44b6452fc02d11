"""Decode cost of the CBOR profile (gossip.cbor_profile) against cbor2.loads.

Three inputs of about 1 MiB: a realistic signed update envelope (tensors as raw bytes: a few
dozen items), the most items the profile admits (100,000 small ones, near the worst it lets
through), and the attack of 1 MiB of empty arrays (refused at its head by the profile).
Prints the median of a few runs of each, in milliseconds.

    python bench/cbor_profile.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

# The repository first: bench/gossip.py would otherwise shadow the gossip package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cbor2  # noqa: E402
import torch  # noqa: E402

from gossip.cbor_profile import CborProfileError, decode_canonical  # noqa: E402
from gossip.envelope import Envelope  # noqa: E402
from gossip.peer_keys import Signer  # noqa: E402
from learning.tensors import encode_state  # noqa: E402


def _median_ms(fn: Callable[[bytes], Any], data: bytes, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        try:
            fn(data)
        except CborProfileError:
            pass
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    signer = Signer(b"\x01" * 32)
    state = {f"layer{i}": torch.randn(256, 128) for i in range(8)}  # 8 x 128 KiB of float32
    update = Envelope("update", b"\x07" * 32, 1, "", {
        "model": encode_state(state), "samples": 100, "base": b"\x02" * 32}).signed_by(signer)
    # 100,000 items of a scores-like shape: [text, bytes, float] triples in one list.
    many = cbor2.dumps({"scores": [["t", b"d", 0.5]] * 24_999}, canonical=True)
    empties = cbor2.dumps([[]] * (1024 * 1024 - 16), canonical=True)
    cases = [("realistic update envelope", update.encode(), 20),
             ("100k small items (profile's limit)", many, 5),
             ("1 MiB of empty arrays (attack)", empties, 3)]
    print(f"{'input':38} {'bytes':>9} {'profile ms':>11} {'cbor2 ms':>9}")
    for name, data, runs in cases:
        print(f"{name:38} {len(data):9d} {_median_ms(decode_canonical, data, runs):11.2f} "
              f"{_median_ms(cbor2.loads, data, runs):9.2f}")


if __name__ == "__main__":
    main()
