"""The robustness harness on a task other than digits (learning.simulation, RunSpec.task):
final test AUC (or accuracy) of each rule under each classic attack at 30% attackers, against
the same rule's clean run of the same invocation, and each rule's worst case.

    nice -n 10 python -m bench.task_robustness --task credit --jobs 2
    python -m bench.task_robustness --task credit --rounds 3 --peers 8   # a smoke run
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

from learning.attacks import CLASSIC_ATTACKS
from learning.simulation import RunSpec, run

RULES = ("cmfl-robust2", "cmfl-auto", "fedavg", "median", "multikrum")


def _work(spec: RunSpec) -> tuple[RunSpec, dict[str, float], float]:
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    res = run(spec)
    return spec, res.metrics[-1], time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="credit")
    ap.add_argument("--metric", default=None, help="default: auc if the task reports it")
    ap.add_argument("--rules", default=",".join(RULES[:3]))
    ap.add_argument("--attacks", default=",".join(CLASSIC_ATTACKS))
    ap.add_argument("--partition", default="dirichlet", help="dirichlet: by institution")
    ap.add_argument("--peers", type=int, default=20)
    ap.add_argument("--committee", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1)
    args = ap.parse_args()
    base = dict(task=args.task, partition=args.partition, n_peers=args.peers,
                committee_size=args.committee, rounds=args.rounds, seed=args.seed)
    specs = [RunSpec(rule=r, attack=a, fraction=0.0 if a == "none" else 0.3, **base)
             for r in args.rules.split(",") for a in ("none", *args.attacks.split(","))]
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(_work, specs))
    metric = args.metric or ("auc" if "auc" in results[0][1] else "accuracy")
    print(f"task {args.task} ({args.partition}), {args.peers} peers, committee "
          f"{args.committee}, {args.rounds} rounds, 30% attackers, seed {args.seed}: final "
          f"test {metric} (ratio to the rule's clean run)")
    for rule in args.rules.split(","):
        mine = {s.attack: (m[metric], sec) for s, m, sec in results if s.rule == rule}
        clean = mine["none"][0]
        cells = [f"{a} {v:.3f} ({v / clean:.2f})" for a, (v, _) in mine.items() if a != "none"]
        worst = min((v, a) for a, (v, _) in mine.items() if a != "none")
        print(f"{rule:>13}: clean {clean:.3f}; worst {worst[0]:.3f} ({worst[1]}); "
              + ", ".join(cells) + f"  [{sum(sec for _, sec in mine.values()):.0f}s]")


if __name__ == "__main__":
    main()
