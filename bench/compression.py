"""Accuracy cost of update compression: the robustness harness with each genesis codec.

Runs `learning.simulation.run` (20 peers, digits MLP 64-64-10, the robustness table's bar
settings) for every codec x split x seed x attack, and prints the final accuracy per cell (mean
over seeds), its change against no compression in percentage points, and the bytes of one
update under each codec (learning.compression.encoded_size).

    python -m bench.compression [--rounds 40] [--seeds 2] [--rule cmfl-robust2]
        [--codecs none,fp16,int8,topk:0.1] [--attacks none] [--jobs 2]

With `--network`, instead: a real network per codec (in one process: libp2p hosts on loopback
TCP, tests/cluster.py; 6 peers, committee 3) runs `--rounds` rounds, and the traffic ledger
(p2p_node/traffic.py, the `bytes` of each `committed` event) gives the payload bytes per peer
per round, rounds 1+ (round 0 includes start-up), and the chains are checked equal. Gossip
bytes count every rebroadcast (every 3 s while a round is open), so they grow with the round's
length on a loaded machine; blob bytes (updates over the envelope limit) are fetched once.

    python -m bench.compression --network --rounds 4 [--hidden 2048,1024]
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

from learning.compression import UpdateCodec, encoded_size
from learning.model import ModelSpec, initial_state
from learning.simulation import RunSpec, run

SPLITS = {"iid": ("iid", 0.5), "dirichlet": ("dirichlet", 0.5)}


def _final(spec: RunSpec) -> tuple[RunSpec, float]:
    return spec, run(spec).accuracy[-1]


def network_bytes(codec: UpdateCodec, rounds: int, hidden: tuple[int, ...]) -> dict[str, float]:
    """Mean payload bytes per peer per round (rounds 1+) of a real 6-peer network."""
    import statistics as st
    import tempfile
    from pathlib import Path

    import trio

    from tests.cluster import Cluster, EventLog

    fields: dict = {"compression": codec.to_settings()} if codec.compresses else {}
    if hidden != (64,):
        fields["model"] = {"layers": [64, *hidden, 10]}
    with tempfile.TemporaryDirectory(prefix="codec-net-") as tmp:
        cluster = Cluster(Path(tmp), size=6, committee_size=3, genesis_fields=fields)
        log = EventLog()

        async def go() -> None:
            async with trio.open_nursery() as nursery:
                # the node's default rebroadcast interval (the test cluster's is 1 s)
                await cluster.run(rounds=rounds, log=log, nursery=nursery,
                                  collect_timeout=90.0, rebroadcast_interval=3.0)

        trio.run(go)
    committed = [e for e in log.events if e["event"] == "committed"]
    heads = {e["hash"] for e in committed if e["height"] == rounds - 1}
    if len(heads) != 1 or len(committed) != 6 * rounds:
        raise SystemExit(f"{codec}: peers did not commit one chain of {rounds} blocks")
    moved = [e["bytes"] for e in committed if e["height"] > 0]
    out = {k: st.fmean(m[k] for m in moved) for k in
           ("gossip_in", "gossip_published", "blob_in", "blob_out", "in", "out")}
    out["selected"] = st.fmean(len(e["selected"]) for e in committed if e["height"] > 0)
    return out


def network_main(args: argparse.Namespace, codecs: list[UpdateCodec]) -> int:
    hidden = tuple(int(w) for w in args.hidden.split(","))
    base = initial_state(ModelSpec((64, *hidden, 10)), 0)
    print(f"6 peers (committee 3, 3 trainers), MLP 64-{'-'.join(map(str, hidden))}-10, "
          f"{args.rounds} rounds; KiB per peer per round, mean over peers and rounds 1+\n")
    print("| codec | bytes per update | gossip in | gossip published | blob in | blob out | "
          "in | out | selected |")
    print("|---|---|---|---|---|---|---|---|---|")
    for codec in codecs:
        start = time.monotonic()
        b = network_bytes(codec, args.rounds, hidden)
        print(f"| {codec} | {encoded_size(base, codec):,} | " + " | ".join(
            f"{b[k] / 1024:.1f}" for k in ("gossip_in", "gossip_published", "blob_in",
                                           "blob_out", "in", "out")) +
              f" | {b['selected']:.1f} |  ({time.monotonic() - start:.0f} s)", flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--rule", default="cmfl-robust2")
    ap.add_argument("--codecs", default="none,fp16,int8")
    ap.add_argument("--attacks", default="none", help="comma list (learning.attacks names)")
    ap.add_argument("--fraction", type=float, default=0.3, help="attackers' share when attacked")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--network", action="store_true",
                    help="bytes per round on a real network instead of accuracy")
    ap.add_argument("--hidden", default="64", help="--network: hidden widths (default 64)")
    args = ap.parse_args()
    codecs = [UpdateCodec.from_text(c) for c in args.codecs.split(",")]
    if args.network:
        return network_main(args, codecs)
    attacks = args.attacks.split(",")
    specs = [RunSpec(rule=args.rule, attack=attack, fraction=args.fraction if attack != "none"
                     else 0.0, partition=part, alpha=alpha, seed=seed, rounds=args.rounds,
                     compression=codec)
             for attack in attacks for split, (part, alpha) in SPLITS.items()
             for seed in range(args.seeds) for codec in codecs]
    start = time.monotonic()
    with ProcessPoolExecutor(args.jobs) as pool:
        finals = dict(pool.map(_final, specs))
    base = initial_state(ModelSpec((64, 64, 10)), 0)
    print(f"{args.rule}, {args.rounds} rounds, seeds 0..{args.seeds - 1}, "
          f"{time.monotonic() - start:.0f} s\n")
    print("| attack | split | codec | bytes per update | final accuracy (mean) | per seed "
          "| vs none (pp) |")
    print("|---|---|---|---|---|---|---|")
    for attack in attacks:
        for split, (part, _) in SPLITS.items():
            cell = {c: [finals[s] for s in specs if s.attack == attack and s.partition == part
                        and s.compression == c] for c in codecs}
            ref = statistics.fmean(cell[codecs[0]])
            for c in codecs:
                mean = statistics.fmean(cell[c])
                print(f"| {attack} | {split} | {c} | {encoded_size(base, c):,} | "
                      f"{mean:.4f} | {', '.join(f'{a:.4f}' for a in cell[c])} | "
                      f"{100 * (mean - ref):+.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
