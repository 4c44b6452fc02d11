"""Do real peer processes learn as the harness says? The same set-up run both ways.

Runs the demo (real `p2p-node` processes over libp2p) and the in-memory robustness harness
(`learning.simulation`, the same `learning.cmfl` decision code) with the same number of peers,
attackers, attack, committee size and rounds, and prints the final accuracies side by side:
the peers' figure should fall within the harness's spread over seeds.

    python bench/peers_vs_harness.py [--peers 10] [--attackers 2] [--attack sign_flip] [--rounds 8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from learning.simulation import RunSpec, run
from p2p_node.demo import DemoConfig, run_demo


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=10)
    parser.add_argument("--attackers", type=int, default=2)
    parser.add_argument("--attack", default="sign_flip")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--committee-size", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=5, help="harness seeds")
    args = parser.parse_args()
    torch.set_num_threads(1)

    out = Path(tempfile.mkdtemp(prefix="peers-vs-harness-"))
    code = run_demo(DemoConfig(out=out, peers=args.peers, attackers=args.attackers,
                               attack=args.attack, rounds=args.rounds,
                               committee_size=args.committee_size))
    import json
    peers = json.loads((out / "summary.json").read_text())["final_accuracy"]

    finals = []
    for seed in range(args.seeds):
        spec = RunSpec(rule="cmfl-auto", attack=args.attack,
                       fraction=args.attackers / args.peers, seed=seed, n_peers=args.peers,
                       committee_size=args.committee_size, rounds=args.rounds)
        finals.append(run(spec).accuracy[-1])
        print(f"harness seed {seed}: final accuracy {finals[-1]:.3f}", flush=True)
    mean, std = statistics.fmean(finals), statistics.pstdev(finals)
    print(f"\n{args.peers} peers, {args.attackers} x {args.attack}, committee "
          f"{args.committee_size}, {args.rounds} rounds (cmfl-auto):")
    print(f"  real peer processes : {peers:.3f}")
    print(f"  harness, {args.seeds} seeds   : {mean:.3f} +- {std:.3f} "
          f"(range {min(finals):.3f}-{max(finals):.3f})")
    inside = min(finals) - std <= (peers or 0) <= max(finals) + std
    print(f"  within the harness's spread: {'yes' if inside else 'no'}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
