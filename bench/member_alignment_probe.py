"""Harness-only probe: the alignment test judged by committee members' own deltas (median over
members of the cosine of a trainer's delta with the member's) on top of cmfl-clip-far.

    python -m bench.member_alignment_probe mal0 clip_push_near,none dirichlet 1
"""
import dataclasses, math, statistics, sys
from concurrent.futures import ProcessPoolExecutor
import numpy as np, torch
import learning.cmfl as cm, learning.aggregation as ag, learning.simulation as sim
from learning.simulation import RunSpec, run, choose_attackers

G = {"refs": [], "base": None, "att": frozenset(), "thr": 0.0}
orig_score = sim.score_updates
def score_patch(reference, updates, *a, **k):
    G["refs"].append(reference)
    return orig_score(reference, updates, *a, **k)

def misaligned(base, ups):
    ids = sorted(ups)
    refs = G["refs"][-5:]
    G["refs"] = []
    d = {t: ag._flat_delta(base, ups[t]) for t in ids}
    rd = [ag._flat_delta(base, r) for r in refs]
    out = []
    for t in ids:
        cos = []
        for r in rd:
            c = ag._exact_dot(d[t], r) / (math.sqrt(ag._exact_dot(d[t], d[t]) * ag._exact_dot(r, r)) + 1e-30)
            cos.append(c)
        if statistics.median(cos) <= G["thr"]:
            out.append(t)
    return () if len(out) == len(ids) else tuple(out)

def one(spec):
    torch.set_num_threads(1)
    label = spec.rule
    G["thr"] = {"mal0": 0.0, "mal1": 0.1}[label]
    sim.score_updates = score_patch
    cm.find_misaligned = misaligned
    spec2 = dataclasses.replace(spec, rule="cmfl-clip-far")
    r = run(spec2)
    n = max(len(r.attackers_selected), 1)
    return label, spec, r.accuracy[-1], min(r.accuracy[len(r.accuracy)//2:])

def main() -> None:
    rules, attacks, parts = (a.split(",") for a in sys.argv[1:4]); seeds = int(sys.argv[4])
    specs = [RunSpec(rule=r, attack=a, fraction=0.0 if a == "none" else 0.3, partition=p, alpha=0.5, seed=s, rounds=40)
             for a in attacks for p in parts for r in rules for s in range(seeds)]
    with ProcessPoolExecutor(2) as ex:
        for label, sp, acc, lo in ex.map(one, specs):
            print(f"{label:10s} {sp.attack:22s} {sp.partition:9s} s{sp.seed} acc={acc:.3f} min2h={lo:.3f}", flush=True)


if __name__ == "__main__":
    main()
