"""Do real peer processes learn as the harness says? The same set-up run both ways.

Runs the demo (real `p2p-node` processes over libp2p) and the in-memory robustness harness
(`learning.simulation`, the same `learning.cmfl` decision code) with the same number of peers,
attackers, attack, data split, committee size, rounds and selection rule (the demo genesis's),
and prints the final accuracies side by side: the peers' figure should fall within the
harness's spread over seeds. Omniscient attacks (min_max, cmfl_capture*, ...) run as real
colluders on the peers (docs/attack-lab.md, "Omniscient colluders on real peers").

    python -m bench.peers_vs_harness [--peers 10] [--attackers 2] [--attack sign_flip]
        [--rounds 8] [--partition dirichlet] [--consensus members]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from chain.genesis import DEFAULT_RULE, SELECTION_PRESETS, Genesis
from learning.cmfl import RoundConfig
from learning.simulation import RunSpec, run
from p2p_node.demo import DemoConfig, run_demo


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=10)
    parser.add_argument("--attackers", type=int, default=2)
    parser.add_argument("--attack", default="sign_flip")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--committee-size", type=int, default=4)
    parser.add_argument("--partition", choices=["iid", "dirichlet"], default="iid",
                        help="the data split (dirichlet: alpha 0.5, as the demo's genesis)")
    parser.add_argument("--consensus", choices=["committee", "members"], default="committee")
    parser.add_argument("--seeds", type=int, default=5, help="harness seeds")
    parser.add_argument("--rule", choices=list(SELECTION_PRESETS),
                        default=DEFAULT_RULE,
                        help=f"the genesis rule (default {DEFAULT_RULE})")
    args = parser.parse_args()
    torch.set_num_threads(1)

    out = Path(tempfile.mkdtemp(prefix="peers-vs-harness-"))
    code = run_demo(DemoConfig(out=out, peers=args.peers, attackers=args.attackers,
                               attack=args.attack, rounds=args.rounds,
                               committee_size=args.committee_size, partition=args.partition,
                               consensus=args.consensus, rule=args.rule))
    summary = json.loads((out / "summary.json").read_text())
    peers = summary["final_accuracy"]
    selected = sum(r["attackers_selected"] for r in summary["rounds_detail"])
    # The harness runs the peers' rule: the selection the demo's genesis wrote.
    genesis = Genesis.load(out / "genesis.json")
    config = RoundConfig.from_selection(genesis.selection)
    alpha = float(genesis.data.get("alpha", 0.5))

    finals, harness_selected = [], []
    for seed in range(args.seeds):
        spec = RunSpec(rule="cmfl-choose" if config.judged else "cmfl-auto", config=config, attack=args.attack,
                       fraction=args.attackers / args.peers, seed=seed, n_peers=args.peers,
                       committee_size=args.committee_size, rounds=args.rounds,
                       partition=args.partition, alpha=alpha,
                       blind_liars=config.judged and config.choice.pledged)
        result = run(spec)
        finals.append(result.accuracy[-1])
        harness_selected.append(sum(result.attackers_selected))
        print(f"harness seed {seed}: final accuracy {finals[-1]:.3f}, attackers' updates "
              f"aggregated {harness_selected[-1]} times", flush=True)
    mean, std = statistics.fmean(finals), statistics.pstdev(finals)
    print(f"\n{args.peers} peers, {args.attackers} x {args.attack}, {args.partition} data, "
          f"committee {args.committee_size}, {args.rounds} rounds, consensus "
          f"{args.consensus}, the genesis's rule ({config.to_selection()}):")
    print(f"  real peer processes : {peers:.3f} (attackers' updates aggregated {selected} "
          f"times; {summary['seconds']:.0f} s)")
    print(f"  harness, {args.seeds} seeds   : {mean:.3f} +- {std:.3f} "
          f"(range {min(finals):.3f}-{max(finals):.3f}; attackers aggregated "
          f"{statistics.fmean(harness_selected):.1f} times on average)")
    inside = min(finals) - std <= (peers or 0) <= max(finals) + std
    print(f"  within the harness's spread: {'yes' if inside else 'no'}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
