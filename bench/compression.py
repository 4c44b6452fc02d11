"""Accuracy cost of update compression: the robustness harness with each genesis codec.

Runs `learning.simulation.run` (20 peers, digits MLP 64-64-10, the robustness table's bar
settings) for every codec x split x seed x attack, and prints the final accuracy per cell (mean
over seeds), its change against no compression in percentage points, and the bytes of one
update under each codec (learning.compression.encoded_size).

    python -m bench.compression [--rounds 40] [--seeds 2] [--rule cmfl-robust2]
        [--codecs none,fp16,int8,topk:0.1] [--attacks none] [--jobs 2]
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--rule", default="cmfl-robust2")
    ap.add_argument("--codecs", default="none,fp16,int8")
    ap.add_argument("--attacks", default="none", help="comma list (learning.attacks names)")
    ap.add_argument("--fraction", type=float, default=0.3, help="attackers' share when attacked")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    codecs = [UpdateCodec.from_text(c) for c in args.codecs.split(",")]
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
