"""What honest peers forward: per-forwarder peak messages and bytes in one second.

    PYTHONPATH=. .venv/bin/python scripts/measure_honest_rates.py [--peers 6] [--rounds 4]
        [--hidden 64]   # --hidden 420,200: ~1 MiB inline updates (just under the cap)

Runs an in-process cluster (tests/cluster.py, real hosts on loopback) and prints, over every
(receiver, forwarder) pair, the largest count of messages and bytes one forwarder sent one
receiver within one whole second (gossip.inbound_policy.RateMeter). The budgets in
gossip/inbound_policy.py are sized from these.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import trio

from tests.cluster import Cluster, EventLog


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peers", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--hidden", default="", help="hidden layer sizes, e.g. 420,200")
    args = parser.parse_args()
    fields = {}
    if args.hidden:
        layers = [64, *[int(h) for h in args.hidden.split(",")], 10]
        fields = {"model": {"layers": layers}}
    with tempfile.TemporaryDirectory() as root:
        cluster = Cluster(Path(root), size=args.peers, genesis_fields=fields)
        nodes = []

        async def run() -> None:
            async with trio.open_nursery() as nursery:
                nodes.extend(await cluster.run(args.rounds, EventLog(), nursery))

        trio.run(run)
        msgs = [v for n in nodes for v in n._pubsub.rates.peak_messages.values()]
        size = [v for n in nodes for v in n._pubsub.rates.peak_bytes.values()]
        heights = [n.store.head()[0] + 1 if n.store.head() else 0 for n in nodes]
        print(f"{args.peers} peers, {min(heights)} rounds committed: peak per forwarder in one "
              f"second: {max(msgs)} messages (median {sorted(msgs)[len(msgs) // 2]}), "
              f"{max(size) / 2**20:.2f} MiB (median {sorted(size)[len(size) // 2] / 2**20:.2f})")


if __name__ == "__main__":
    main()
