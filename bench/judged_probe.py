"""Prototype: every member judges every update on its own data (issue 14, fifth pass).

    python -m bench.judged_probe VARIANTS ATTACKS dirichlet|iid SEEDS [rounds]
    python -m bench.judged_probe choose VARIANTS ATTACKS dirichlet|iid SEEDS [rounds]

Superseded by the harness rules `cmfl-choose*` (learning.choice, learning.simulation), whose
liars (attacks.lie_votes) are stronger than this probe's: the probe's liars of the `choose`
mode back the candidate with the most colluders even when it cannot win, which flattered the
rule (docs/learning.md, issue 14 fifth pass). Kept as the record of what was tried.

Each round every peer trains (as in learning.simulation); every peer but the trainer itself
votes on each update t: v_jt = L_j(base) - L_j(base + u_t), the loss change on judge j's own
data. Attacking judges lie at the edge of the honest votes (colluders get the highest honest
vote, honest trainers the lowest). A variant then turns the votes into an aggregate.
"""
from __future__ import annotations

import math
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from learning.attacks import Omniscient, RoundView, make_attack, _deltas
from learning.baselines import aggregate_baseline
from learning.data import load_digits_split
from learning.model import ModelSpec, build_model, initial_state, load_state
from learning.simulation import (JudgeLosses, RunSpec, _local_data, _round_models,
                                 choose_attackers)
from learning.baselines import flatten_state, unflatten_state
from learning.training import evaluate


@dataclass(frozen=True)
class Variant:
    #: how votes over judges are combined: "trim" (trimmed mean, f each side), "median",
    #: "low" (the (f+1)-th lowest vote)
    stat: str = "trim"
    #: accept updates whose combined vote is > 0 ("pos") or the top half ("half")
    accept: str = "pos"
    #: aggregate: "mean" of accepted, "normclip" (each scaled to the median accepted norm),
    #: "cclip" (centered clipping around the accepted coordinate median)
    agg: str = "normclip"
    #: judges: "all" every peer; "committee" 5 seats drawn at random each round
    judges: str = "all"
    #: votes judge the step eps * u_t (1/n: an update's share of a mean), per unit of eps
    eps: float = 0.05


VARIANTS = {
    "trim-pos-nc": Variant(),
    "trim-pos-mean": Variant(agg="mean"),
    "trim-pos-cc": Variant(agg="cclip"),
    "med-pos-nc": Variant(stat="median"),
    "low-pos-nc": Variant(stat="low"),
    "trim-half-nc": Variant(accept="half"),
    "trim-pos-nc-full": Variant(eps=1.0),
    "med-half-nc": Variant(stat="median", accept="half"),
}


class Judge(JudgeLosses):
    """Fast per-judge losses of many candidate models (learning.simulation.JudgeLosses)."""

    def losses(self, state) -> dict[str, float]:
        return self(state)


def combine(votes: list[float], stat: str, f: int) -> float:
    v = sorted(votes)
    n = len(v)
    if stat == "median":
        return float(np.median(v))
    if stat == "low":
        return v[min(f, n - 1)]
    k = min(f, (n - 1) // 2)
    mid = v[k:n - k]
    return math.fsum(mid) / len(mid)


# --- attacks aimed at the judged rule -------------------------------------------------------

def judged_edge(view: RoundView, judge: Judge, colluder_ids: list[str], f: int, stat: str,
                oracle: bool, rng: np.random.Generator, spread: float = 0.3) -> dict:
    """Each colluder sends mean + gamma * (-mean unit) (+ own noise), gamma the largest whose
    combined vote, estimated on the colluders' own data (oracle: on every judge's data), stays
    above a small margin: as harmful as the acceptance test allows."""
    d = _deltas(view, sorted(view.honest))
    mean = d.mean(dim=0)
    p = -mean / (mean.norm() + 1e-12)
    base = flatten_state(view.base)
    base_l = judge.losses(view.base)
    who = judge.ids if oracle else colluder_ids
    out = {}
    for i, c in enumerate(colluder_ids):
        noise = torch.from_numpy(rng.standard_normal(mean.numel())).to(mean.dtype)
        noise = noise / (noise.norm() + 1e-12) * float(mean.norm()) * spread

        def ok(g: float) -> bool:
            st = unflatten_state(base + mean + g * float(mean.norm()) * p + noise, view.base)
            ls = judge.losses(st)
            votes = [base_l[j] - ls[j] for j in who if j != c]
            return combine(votes, stat, 0 if not oracle else f) > 1e-4

        lo, hi = 0.0, 4.0
        if not ok(lo):
            out[c] = mean + noise
            continue
        for _ in range(12):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
        out[c] = mean + lo * float(mean.norm()) * p + noise
    return out


def run_one(args):
    vname, attack_name, partition, seed, rounds = args
    torch.set_num_threads(1)
    var = VARIANTS[vname] if vname in VARIANTS else None
    spec = RunSpec(rule="cmfl-clip-far", attack="none" if attack_name.startswith("judged")
                   else attack_name, fraction=0.0 if attack_name == "none" else 0.3,
                   partition=partition, alpha=0.5, seed=seed, rounds=rounds)
    train, test = load_digits_split(seed)
    mspec = ModelSpec(spec.layers)
    attackers = choose_attackers(spec)
    attack = make_attack(spec.attack)
    data = _local_data(spec, train, attackers, attack)
    samples = {p: len(d) for p, d in data.items()}
    judge = Judge(mspec, data)
    state = initial_state(mspec, seed)
    n = spec.n_peers
    f = int(round(0.3 * n))
    accs, att_in, honest_out = [], [], []
    for rnd in range(rounds):
        if attack_name.startswith("judged"):
            trained, _ = _round_models(spec, rnd, state, data, attackers, None)
            view = RoundView(state, {p: s for p, s in trained.items() if p not in attackers},
                             {p: s for p, s in trained.items() if p in attackers})
            crafted = judged_edge(view, judge, sorted(attackers), f,
                                  var.stat if var else "trim", attack_name == "judged_oracle",
                                  np.random.default_rng([seed, rnd, 7]))
            base = flatten_state(state)
            sent = dict(trained)
            for c, dlt in crafted.items():
                sent[c] = unflatten_state(base + dlt, state)
        else:
            sent, _ = _round_models(spec, rnd, state, data, attackers, attack)
        if var is None:
            state = aggregate_baseline(vname, sent, samples, len(attackers))
            accs.append(evaluate(mspec, state, test))
            continue
        base_l = judge.losses(state)
        base_f = flatten_state(state)
        cand = {t: judge.losses(unflatten_state(base_f + var.eps * (flatten_state(sent[t]) - base_f),
                                                state)) for t in sorted(sent)}
        combined = {}
        for t in sorted(sent):
            honest_votes = [(base_l[j] - cand[t][j]) / var.eps for j in judge.ids
                            if j != t and j not in attackers]
            votes = list(honest_votes)
            for j in sorted(attackers):
                if j == t:
                    continue
                votes.append(max(honest_votes) if t in attackers else min(honest_votes))
            combined[t] = combine(votes, var.stat, f)
        if var.accept == "pos":
            acc_ids = [t for t in sorted(combined) if combined[t] > 0]
        else:
            order = sorted(combined, key=lambda t: (-combined[t], t))
            acc_ids = sorted(order[: max(1, len(order) // 2)])
        if not acc_ids:
            accs.append(evaluate(mspec, state, test))
            att_in.append(0)
            honest_out.append(n - len(attackers))
            continue
        base = flatten_state(state).to(torch.float64)
        deltas = {t: flatten_state(sent[t]).to(torch.float64) - base for t in acc_ids}
        w = {t: samples[t] for t in acc_ids}
        tot = sum(w.values())
        if var.agg == "cclip":
            from learning.aggregation import aggregate_clipped
            state = aggregate_clipped(state, {t: sent[t] for t in acc_ids}, w)
        else:
            if var.agg == "normclip":
                norms = {t: float(deltas[t].norm()) for t in acc_ids}
                r = float(np.median(list(norms.values())))
                deltas = {t: deltas[t] * min(1.0, r / max(norms[t], 1e-12)) for t in acc_ids}
            step = sum((w[t] / tot) * deltas[t] for t in acc_ids)
            state = unflatten_state((base + step).to(torch.float32), state)
        accs.append(evaluate(mspec, state, test))
        att_in.append(len(set(acc_ids) & attackers))
        honest_out.append(sum(1 for t in sent if t not in attackers and t not in acc_ids))
    return args, accs, att_in, honest_out


def main(args: list[str], work, extra: str) -> None:
    """Run the grid VARIANTS ATTACKS PARTITIONS SEEDS [ROUNDS] through `work`, one line per
    run; `extra` names the run's last result (honest updates left out, or candidates chosen)."""
    variants, attacks, parts = (a.split(",") for a in args[:3])
    seeds = int(args[3])
    rounds = int(args[4]) if len(args) > 4 else 40
    jobs = [(v, a, p, s, rounds) for a in attacks for p in parts for v in variants
            for s in range(seeds)]
    with ProcessPoolExecutor(2) as ex:
        for (v, a, p, s, _), accs, att_in, last in ex.map(work, jobs):
            k = max(len(att_in), 1)
            shown = f"{sum(last) / k:.1f}" if isinstance(last, list) else last
            print(f"{v:14s} {a:24s} {p:9s} s{s} acc={accs[-1]:.3f} "
                  f"min2h={min(accs[len(accs) // 2:]):.3f} att_in={sum(att_in) / k:.2f} "
                  f"{extra}={shown}", flush=True)


# --- the candidate-choice variant: judges pick among candidate aggregates -------------------

@dataclass(frozen=True)
class Choice:
    #: random subsets of this many trainers (FedAvg of each) beside the full-set candidates
    subsets: int = 16
    size: int = 5
    #: the statistic over the judges' loss decreases: "low" the (f+1)-th lowest, "median"
    stat: str = "low"
    #: full-set candidates: fedavg, clipped (centered clipping), median (coordinate-wise)
    full: tuple[str, ...] = ("fedavg", "clipped", "median")


CHOICES = {
    "choose": Choice(),
    "choose-med": Choice(stat="median"),
    "choose-s7": Choice(size=7),
    "choose-s3": Choice(size=3),
    "choose-32": Choice(subsets=32),
    "choose-trim": Choice(stat="trim"),
    "choose-med32": Choice(stat="median", subsets=32),
    "choose-med-s7": Choice(stat="median", size=7),
    "choose-med-s3": Choice(stat="median", size=3, subsets=32),
}


def candidates(state, sent: dict, samples: dict, ch: Choice, rng: np.random.Generator
               ) -> list[tuple[str, object, tuple[str, ...]]]:
    from learning.aggregation import aggregate_clipped, aggregate_weighted
    ids = sorted(sent)
    out = [("base", state, ())]
    for name in ch.full:
        if name == "fedavg":
            out.append((name, aggregate_weighted(state, sent, samples), tuple(ids)))
        elif name == "clipped":
            out.append((name, aggregate_clipped(state, sent, samples), tuple(ids)))
        elif name == "median":
            out.append((name, aggregate_baseline("median", sent, samples, 0), tuple(ids)))
    for k in range(ch.subsets):
        pick = tuple(sorted(ids[i] for i in rng.choice(len(ids), size=ch.size, replace=False)))
        out.append((f"sub{k}", aggregate_weighted(state, {t: sent[t] for t in pick},
                                                  {t: samples[t] for t in pick}), pick))
    return out


def choice_class(state, sent: dict, attackers: frozenset, data: dict, mspec: ModelSpec,
                 target: int, boost: float, lam: float = 1.0, steps: int = 30) -> dict:
    """Aimed at judges who pick by loss: from the honest mean, the colluders train on their
    pooled data to fit every class but `target` and to unlearn `target` (loss minus lam times
    its loss), then send that delta times `boost` (so one colluder carries a subset's mean).
    Judges with little of the target class see a better model than any honest candidate."""
    base = flatten_state(state)
    honest = [t for t in sorted(sent) if t not in attackers]
    mean = sum(flatten_state(sent[t]) - base for t in honest) / len(honest)
    x = torch.cat([data[a].x for a in sorted(attackers)])
    y = torch.cat([data[a].y for a in sorted(attackers)])
    model = build_model(mspec, seed=0)
    load_state(model, unflatten_state(base + mean, state))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    keep, drop = y != target, y == target
    for _ in range(steps):
        opt.zero_grad()
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out[keep], y[keep])
        if drop.any():
            bad = torch.nn.functional.cross_entropy(out[drop], y[drop])
            loss = loss - lam * torch.clamp(bad, max=5.0)
        loss.backward()
        opt.step()
    delta = flatten_state({k: v.detach() for k, v in model.state_dict().items()}) - base
    return {a: unflatten_state(base + boost * delta, state) for a in sorted(attackers)}


CHOICE_ATTACKS = {"choice_class": (3, 1.0), "choice_class_boost": (3, 5.0),
                  "choice_rotate": (None, 1.0), "choice_rotate_boost": (None, 5.0)}


def run_choice(args):
    vname, attack_name, partition, seed, rounds = args
    torch.set_num_threads(1)
    ch = CHOICES[vname]
    spec = RunSpec(rule="cmfl-clip-far",
                   attack="none" if attack_name in CHOICE_ATTACKS else attack_name,
                   fraction=0.0 if attack_name == "none" else 0.3,
                   partition=partition, alpha=0.5, seed=seed, rounds=rounds)
    train, test = load_digits_split(seed)
    mspec = ModelSpec(spec.layers)
    attackers = choose_attackers(spec)
    attack = make_attack(spec.attack)
    data = _local_data(spec, train, attackers, attack)
    samples = {p: len(d) for p, d in data.items()}
    judge = Judge(mspec, data)
    state = initial_state(mspec, seed)
    f = int(round(0.3 * spec.n_peers))
    accs, att_in, chosen_kind = [], [], []
    for rnd in range(rounds):
        sent, _ = _round_models(spec, rnd, state, data, attackers, attack)
        if attack_name in CHOICE_ATTACKS:
            target, boost = CHOICE_ATTACKS[attack_name]
            sent.update(choice_class(state, sent, attackers, data, mspec,
                                     rnd % 10 if target is None else target, boost))
        cands = candidates(state, sent, samples, ch, np.random.default_rng([seed, rnd, 11]))
        base_l = judge.losses(state)
        dec = [{j: base_l[j] - lj for j, lj in judge.losses(c).items()} for _, c, _ in cands]
        # the liars' favourite: the candidate with the most colluders in it, then the one the
        # honest judges like least (the strongest lie: all for it, against all the others)
        honest = [j for j in judge.ids if j not in attackers]
        fav = max(range(len(cands)), key=lambda i: (len(set(cands[i][2]) & attackers),
                                                    -sum(dec[i][j] for j in honest)))
        stats = []
        for i in range(len(cands)):
            votes = [dec[i][j] for j in honest]
            votes += [1e9 if i == fav else -1e9] * len(attackers & set(judge.ids))
            v = sorted(votes)
            stats.append(v[f] if ch.stat == "low" else combine(v, "trim", f)
                         if ch.stat == "trim" else float(np.median(v)))
        best = max(range(len(cands)), key=lambda i: (stats[i], -i))
        state = cands[best][1]
        accs.append(evaluate(mspec, state, test))
        att_in.append(len(set(cands[best][2]) & attackers))
        chosen_kind.append(cands[best][0] if not cands[best][0].startswith("sub") else "sub")
    kinds = {k: chosen_kind.count(k) for k in sorted(set(chosen_kind))}
    return args, accs, att_in, kinds


if __name__ == "__main__":
    if sys.argv[1] == "choose":
        main(sys.argv[2:], run_choice, "chosen")
    else:
        main(sys.argv[1:], run_one, "honest_out")
