"""The robustness harness's runs: seeded, reproducible, and CMFL keeps zeros out."""

from learning.simulation import RunSpec, choose_attackers, genesis_committee, run

TINY = dict(n_peers=8, committee_size=3, rounds=2, epochs=1)


def test_run_is_reproducible_and_attackers_are_seeded():
    spec = RunSpec(rule="cmfl-auto", attack="zeros", fraction=0.25, **TINY)
    assert run(spec).accuracy == run(spec).accuracy
    assert len(choose_attackers(spec)) == 2 and len(genesis_committee(spec)) == 3


def test_cmfl_auto_never_aggregates_zeros_and_fedavg_suffers():
    spec = RunSpec(rule="cmfl-auto", attack="zeros", fraction=0.25, **TINY)
    res = run(spec)
    assert res.attackers_selected == [0, 0]
    fed = run(RunSpec(rule="fedavg", attack="zeros", fraction=0.25, **TINY))
    assert fed.accuracy[-1] < res.accuracy[-1]


def test_colluding_attack_and_every_baseline_run():
    for rule in ("cmfl-s1", "krum", "multikrum", "median", "trimmed_mean"):
        res = run(RunSpec(rule=rule, attack="alie", fraction=0.25, **TINY))
        assert len(res.accuracy) == 2 and all(0.0 <= a <= 1.0 for a in res.accuracy)


def test_cmfl_robust_is_reproducible_and_drops_identical_copies():
    spec = RunSpec(rule="cmfl-robust", attack="sybil_flip", fraction=0.25, **TINY)
    res = run(spec)
    assert res.accuracy == run(spec).accuracy
    # both attackers train (neither is on the committee of seed 0) and send one update
    if not set(genesis_committee(spec)) & choose_attackers(spec):
        assert res.attackers_selected[0] == 0


def test_the_harness_runs_the_credit_task_by_institution_with_label_flip():
    """RunSpec.task: the credit task's own model and data, split by institution (purpose),
    AUC/KS per round; label flipping flips within its two classes (it used to map y to 9 - y
    and crash cross-entropy on a binary model)."""
    import math

    from learning.builtin_tasks import CreditTask
    from learning.simulation import _local_data

    spec = RunSpec(task="credit", rule="cmfl-robust2", attack="label_flip", fraction=0.25,
                   partition="dirichlet", **TINY)
    res = run(spec)
    assert res.metrics == run(spec).metrics  # reproducible
    assert len(res.metrics) == 2
    assert all(set(m) == {"auc", "ks", "accuracy"} for m in res.metrics)
    assert all(0.0 <= m["auc"] <= 1.0 and not math.isnan(m["ks"]) for m in res.metrics)
    assert res.accuracy == [m["accuracy"] for m in res.metrics]
    # by institution: the peers' shards differ in their mix of loan purposes
    train, _, groups = CreditTask().demo_data(0, {"test_fraction": 0.2})
    data = _local_data(spec, train, frozenset(), None, groups)
    assert len(data) == 8 and sum(len(d) for d in data.values()) == len(train)
    fed = run(RunSpec(task="credit", rule="fedavg", attack="none", fraction=0.0, **TINY))
    assert len(fed.metrics) == 2 and fed.metrics[-1]["auc"] > 0.5
