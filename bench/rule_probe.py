"""Quick probe: rules x attacks x splits x seeds at 30% attackers, 40 rounds; prints final accuracy,
attackers aggregated per round and capture rate (share of rounds with > 1 attacker of 5).

    python bench/rule_probe.py cmfl-robust2 cmfl_capture_spread,none dirichlet 2
"""
import sys
from concurrent.futures import ProcessPoolExecutor
from learning.simulation import RunSpec, run
rules=sys.argv[1].split(","); attacks=sys.argv[2].split(","); parts=sys.argv[3].split(","); seeds=int(sys.argv[4])
specs=[RunSpec(rule=r,attack=a,fraction=0.0 if a=="none" else 0.3,partition=p,alpha=0.5,seed=s,rounds=40) for r in rules for a in attacks for p in parts for s in range(seeds)]
def f(sp):
    r=run(sp); return sp, r.accuracy[-1], sum(r.attackers_selected)/max(len(r.attackers_selected),1), sum(x>1 for x in r.attackers_on_committee)/max(len(r.attackers_on_committee),1)
with ProcessPoolExecutor(2) as ex:
    for sp,acc,agg,cap in ex.map(f,specs):
        print(f"{sp.rule:14s} {sp.attack:24s} {sp.partition:9s} s{sp.seed} acc={acc:.3f} agg={agg:.2f} cap={cap:.0%}", flush=True)
