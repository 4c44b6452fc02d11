"""The robustness campaign's grid and report, without running a campaign."""

from bench.robustness import ADAPTIVE_ATTACKS, CANDIDATE, PRESETS, grid, pbft_f, summarise
from learning.attacks import CLASSIC_ATTACKS


def test_bar_keeps_its_grid_and_robustness_runs_every_attack():
    assert PRESETS["bar"].attacks == CLASSIC_ATTACKS  # docs/results/bar.csv stays comparable
    assert set(PRESETS["robustness"].attacks) == set(CLASSIC_ATTACKS) | set(ADAPTIVE_ATTACKS)
    assert {"cmfl-robust", "cmfl-auto", "fedavg", "multikrum"} <= set(PRESETS["robustness"].rules)
    assert pbft_f(5) == 1 and pbft_f(4) == 1 and pbft_f(7) == 2
    specs = grid(PRESETS["robustness"])
    assert len({(s.rule, s.attack, s.partition, s.seed) for s in specs}) == len(specs)


def test_report_has_worst_cases_and_capture_rates():
    row = dict(fraction="0.30", split="noniid", seed=0, rounds=40, attack="ipm",
               attackers_selected_per_round="1.00", capture_rate="0.250")
    rows = [dict(row, rule=CANDIDATE, final_accuracy="0.8"),
            dict(row, rule="fedavg", final_accuracy="0.9", capture_rate="")]
    md = summarise(rows, (CANDIDATE, "fedavg"), "robustness", "cmd", None)
    assert "**0.800** (ipm)" in md and "1.00 / 25%" in md
    assert f"worst case**, noniid, 30%: fedavg 0.900 (ipm) > {CANDIDATE} 0.800" in md
