"""Quick probe of aggregation variants: variants x attacks x splits x seeds at 30% attackers.

    python -m bench.rule_variants clip,clipA none,sign_flip dirichlet 2 [rounds]
"""
import dataclasses
import sys
from concurrent.futures import ProcessPoolExecutor

import torch

import learning.cmfl as cm
from learning.aggregation import aggregate_clipped
from learning.simulation import RunSpec, run

VARIANTS = {"clip": {}, "clipQ3": {"quantile": 1 / 3}, "clipI3": {"iterations": 3}}


def one(spec: RunSpec):
    torch.set_num_threads(1)
    if spec.rule in VARIANTS:
        kw = VARIANTS[spec.rule]
        cm.aggregate_clipped = lambda b, u, s: aggregate_clipped(b, u, s, **kw)
        r = run(dataclasses.replace(spec, rule="cmfl-clip"))
    else:
        r = run(spec)
    n = max(len(r.attackers_selected), 1)
    return (spec, r.accuracy[-1], min(r.accuracy[len(r.accuracy) // 2:]),
            sum(r.attackers_selected) / n, sum(x > 1 for x in r.attackers_on_committee) / n)


def main() -> None:
    rules, attacks, parts = (a.split(",") for a in sys.argv[1:4])
    seeds = int(sys.argv[4])
    rounds = int(sys.argv[5]) if len(sys.argv) > 5 else 40
    specs = [RunSpec(rule=r, attack=a, fraction=0.0 if a == "none" else 0.3, partition=p,
                     alpha=0.5, seed=s, rounds=rounds)
             for a in attacks for p in parts for r in rules for s in range(seeds)]
    with ProcessPoolExecutor(2) as ex:
        for sp, acc, lo, agg, cap in ex.map(one, specs):
            print(f"{sp.rule:14s} {sp.attack:24s} {sp.partition:9s} s{sp.seed} acc={acc:.3f} "
                  f"min2h={lo:.3f} agg={agg:.2f} cap={cap:.0%}", flush=True)


if __name__ == "__main__":
    main()
