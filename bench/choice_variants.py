"""Variants of the judged choice (learning.choice) in the harness, side by side.

    python -m bench.choice_variants VARIANTS ATTACKS dirichlet|iid SEEDS [ROUNDS]

VARIANTS is a comma list of the names below or of any rule in learning.simulation.RULE_NAMES
(e.g. cmfl-clip-far, median), each optionally suffixed (suffixes combine, parse_variant):
  /blind     the lying judges vote before seeing the honest votes (a commit-reveal of votes)
  /revealK   under the commit-reveal they commit K different lies and reveal the subset that
             suits them; who withholds is barred from judging
  /race      the rejected first-quorum alternative: the block takes the first quorum of votes
             and the liars race it, seeing quorum - liars - 1 honest votes
  /leader    a colluding leader (members in turn, by round) counts the lies and the quorum -
             liars honest votes the liars pick (attacks.leader_quorum)
  /peekK     under a pledge of the votes the liars have seen K honest votes (/peek0 is /blind)
  /pleader   the pledge with a colluding leader: in its rounds the liars see honest -
             (quorum - 2f) votes and it picks the counted ones; in the others they see
             honest - (n - 2f)
  /worst     the liars back the candidate the honest judges like least, whoever it holds
             (attacks.LIAR_TARGETS), instead of the one holding the most colluders
Each run prints its final accuracy, the lowest accuracy of the second half of the run, the
attackers in the chosen candidate per round and which kinds of candidate were chosen.
docs/learning.md ("Issue 14, fifth pass") was measured with it.
"""
from __future__ import annotations

import sys
from concurrent.futures import ProcessPoolExecutor

from learning import simulation
from learning.choice import ChoiceConfig

VARIANTS = {
    "raw-median": ChoiceConfig(),
    "low-rel-clipped": ChoiceConfig(statistic="low", reference="clipped"),
    "low-rel-median": ChoiceConfig(statistic="low", reference="median"),
    "rel-median": ChoiceConfig(reference="median"),
    "rel-median-scaled": ChoiceConfig(reference="median", normalize="scale"),
    "rel-median-scaled-s8": ChoiceConfig(reference="median", normalize="scale", subsets=8),
    "rel-median-scaled-s0": ChoiceConfig(reference="median", normalize="scale", subsets=0),
    "rel-median-scaled-z10": ChoiceConfig(reference="median", normalize="scale", size=10),
    "rel-clipped-scaled": ChoiceConfig(reference="clipped", normalize="scale"),
    # the peers' default's choice (cmfl-choose-clipped: RECOMMENDED with subsets of clipped
    # updates; ninth and tenth passes)
    "clip-subsets": simulation.JUDGED_RULES["cmfl-choose-clipped"],
    "clip-subsets-z10": ChoiceConfig(reference="median", normalize="scale", size=10,
                                     clip_subsets=True),
    # tenth pass: against liars aiming at plain harm (fewer subsets, a statistic they
    # cannot raise)
    "clip-subsets-s8": ChoiceConfig(reference="median", normalize="scale", subsets=8,
                                    clip_subsets=True),
    "clip-blend-half": ChoiceConfig(reference="median", normalize="scale", clip_subsets=True,
                                    blend=0.5),
    "clip-low-scaled": ChoiceConfig(statistic="low", reference="median", normalize="scale",
                                    clip_subsets=True),
}
#: The default committee rule, its aggregate then judged against candidates by every peer
#: (RunSpec.judge): name -> (cmfl rule, judge config)
HYBRIDS = {
    "clip-far+low": ("cmfl-clip-far", ChoiceConfig(statistic="low", reference="committee",
                                                   normalize="scale")),
    "clip-far+median": ("cmfl-clip-far", ChoiceConfig(reference="committee",
                                                      normalize="scale")),
}


def _register() -> None:
    for name, config in VARIANTS.items():
        simulation.JUDGED_RULES.setdefault(name, config)
    simulation.RULE_NAMES = tuple(dict.fromkeys(simulation.RULE_NAMES + tuple(VARIANTS) +
                                                tuple(HYBRIDS)))


def parse_variant(name: str) -> tuple[str, dict]:
    """A variant's rule and the RunSpec fields its suffixes set (ValueError if unknown)."""
    rule, *suffixes = name.split("/")
    out: dict = {}
    for x in suffixes:
        if x == "blind":  # the liars vote before seeing the honest votes
            out["blind_liars"] = True
        elif x == "race":  # the liars race the first quorum
            out["racing_liars"] = True
        elif x == "leader":  # a colluding leader picks the counted honest votes
            out["colluding_leader"] = True
        elif x == "pleader":  # the pledge, with a colluding leader
            out["pledge_leader"] = True
        elif x == "worst":  # the liars back the candidate the honest judges like least
            out["liar_target"] = "worst"
        elif x.startswith("reveal") and (x[6:].isdigit() or x == "reveal"):
            out["selective_reveal"] = int(x[6:] or 1)  # commit K lies blind, reveal some
        elif x.startswith("peek") and x[4:].isdigit():  # the pledge: liars saw K honest votes
            out["peeking_liars"] = int(x[4:])
        else:
            raise ValueError(f"unknown suffix {x!r} in {name!r}")
    return rule, out


def run_one(job: tuple[str, str, str, int, int]) -> tuple[tuple, float, float, float, dict]:
    import torch

    torch.set_num_threads(1)
    _register()
    rule, attack, partition, seed, rounds = job
    rule, liars = parse_variant(rule)
    base_rule, judge = HYBRIDS.get(rule, (rule, None))
    res = simulation.run(simulation.RunSpec(
        rule=base_rule, attack=attack, partition=partition, seed=seed, rounds=rounds,
        fraction=0.0 if attack == "none" else 0.3, judge=judge, **liars))
    k = max(len(res.attackers_selected), 1)
    kinds = {x: res.applied.count(x) for x in sorted(set(res.applied))}
    if res.barred_judges:
        kinds["barred"] = res.barred_judges[-1]
    return (job, res.accuracy[-1], min(res.accuracy[len(res.accuracy) // 2:]),
            sum(res.attackers_selected) / k, kinds)


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("\nvariants: " + ", ".join(VARIANTS) + "\nhybrids: " + ", ".join(HYBRIDS))
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    _register()
    rules, attacks, parts = (a.split(",") for a in argv[:3])
    seeds, rounds = int(argv[3]), int(argv[4]) if len(argv) > 4 else 40
    for r in rules:
        try:
            known = parse_variant(r)[0] in simulation.RULE_NAMES
        except ValueError:
            known = False
        if not known:
            print(f"unknown variant or rule {r!r}", file=sys.stderr)
            return 2
    jobs = [(r, a, p, s, rounds) for a in attacks for p in parts for r in rules
            for s in range(seeds)]
    with ProcessPoolExecutor(2) as ex:
        for (r, a, p, s, _), acc, low, att, kinds in ex.map(run_one, jobs):
            print(f"{r:22s} {a:22s} {p:9s} s{s} acc={acc:.3f} min2h={low:.3f} "
                  f"att_in={att:.2f} {kinds}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
