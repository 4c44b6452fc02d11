"""Privacy bench: DP-SGD noise level -> epsilon, accuracy, gradient-inversion quality, robustness.

For no DP (plain `train_local`) and each noise multiplier it measures
  * epsilon at delta=1e-5 each peer has spent after a federated run (Opacus RDP accountant),
    and the run's final test accuracy (FedAvg of every peer, so DP is the only thing varied);
  * what a curious committee member reconstructs (`learning.inversion`) from a trainer's
    update of one local step on a small batch (the attack's best case), with the same
    noise and clipping: PSNR, SSIM and label recovery against the real samples;
then, without DP, how the attack degrades with local steps and batch size, and, with DP, how
CMFL scoring and selection treat DP-noised honest updates next to sign-flip attackers.

Writes docs/results/privacy.md, privacy*.csv and privacy_*.png.

    nice -n 10 python -m bench.privacy            # 15 minutes on a busy 2-core machine
    python -m bench.privacy --quick               # a smoke run, under a minute
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from learning.aggregation import aggregate_weighted
from learning.cmfl import RoundConfig, select_round
from learning.data import Dataset, load_digits_split, shard_indices, subset
from learning.inversion import InversionConfig, attack_update, reconstruction_quality
from learning.model import ModelSpec, initial_state
from learning.privacy import (
    DEFAULT_DELTA,
    DpReport,
    PrivacyAccountant,
    noise_consistent,
    noise_debiased_distance,
    round_epsilon,
    train_local_dp,
    update_noise_variance,
)
from learning.scoring import combine_scores, score_updates
from learning.selection import select_lowest_distance
from learning.tensors import ModelState
from learning.training import evaluate, train_local

OUT_DIR = Path(__file__).resolve().parent.parent / "docs" / "results"
SPEC = ModelSpec()
#: S1 (CMFL as published), auto (the project's robust setting), S1 on noise-debiased distances
ROBUST_RULES = ("S1", "auto", "S1-debiased")


@dataclass(frozen=True)
class Settings:
    """Every knob of the bench; --quick shrinks the counts."""

    sigmas: tuple[float, ...] = (0.0, 0.01, 0.03, 0.1, 0.5, 1.0, 2.0)
    max_grad_norm: float = 1.0
    peers: int = 10
    rounds: int = 20
    epochs: int = 2
    lr: float = 0.1
    batch_size: int = 16
    seeds: int = 2
    #: batch sizes of the one-step update the attack column inverts
    attack_batches: tuple[int, ...] = (1, 4)
    attack_trials: int = 5
    inversion: InversionConfig = InversionConfig(restarts=1)
    #: (samples held, batch size, epochs) of the no-DP degradation sweep
    degradation: tuple[tuple[int, int, int], ...] = (
        (1, 1, 1), (4, 4, 1), (8, 8, 1), (16, 16, 1),
        (4, 4, 2), (4, 4, 8), (4, 1, 1), (8, 2, 1), (16, 4, 1),
    )
    robust_sigmas: tuple[float, ...] = (0.0, 0.3, 1.0)
    robust_peers: int = 12
    robust_committee: int = 4
    robust_attackers: int = 2
    robust_rounds: int = 10
    robust_seeds: int = 1


QUICK = Settings(sigmas=(0.0, 0.01, 1.0), rounds=4, seeds=1, attack_batches=(1,),
                 attack_trials=2, inversion=InversionConfig(iterations=150, restarts=1),
                 degradation=((1, 1, 1), (4, 4, 1), (4, 4, 4)), robust_sigmas=(0.0, 1.0),
                 robust_rounds=3)


def _train(mspec: ModelSpec, base: ModelState, data: Dataset, s: Settings, sigma: float,
           seed: int, epochs: int | None = None, batch_size: int | None = None,
           lr: float | None = None) -> ModelState:
    """train_local without DP (sigma 0), else DP-SGD with the bench's clipping norm."""
    epochs = s.epochs if epochs is None else epochs
    batch_size = s.batch_size if batch_size is None else batch_size
    lr = s.lr if lr is None else lr
    if sigma == 0:
        return train_local(mspec, base, data, epochs, lr, batch_size, seed)
    state, _ = train_local_dp(mspec, base, data, epochs, lr, batch_size, seed, sigma,
                              s.max_grad_norm)
    return state


# --- epsilon and accuracy ------------------------------------------------------------------

def federated_run(s: Settings, sigma: float, seed: int) -> tuple[float, float]:
    """(final test accuracy, each peer's total epsilon) of a FedAvg run with DP on every peer."""
    train, test = load_digits_split(seed)
    parts = shard_indices(train.y.numpy(), s.peers, seed, "iid")
    data = [subset(train, p) for p in parts]
    state = initial_state(SPEC, seed)
    accountants = [PrivacyAccountant() for _ in data]
    for rnd in range(s.rounds):
        trained = {}
        for i, d in enumerate(data):
            trained[f"p{i:02d}"] = _train(SPEC, state, d, s, sigma,
                                          seed * 1_000_003 + rnd * 1_009 + i)
            if sigma > 0:
                n = len(d)
                accountants[i].spend(sigma, min(1.0, s.batch_size / n),
                                     s.epochs * math.ceil(n / s.batch_size))
        samples = {f"p{i:02d}": len(d) for i, d in enumerate(data)}
        state = aggregate_weighted(state, trained, samples)
    eps = max(a.epsilon(DEFAULT_DELTA) for a in accountants) if sigma > 0 else math.inf
    return evaluate(SPEC, state, test), eps


# --- the attack ----------------------------------------------------------------------------

@functools.cache
def attacker_data() -> torch.Tensor:
    """The curious member's own inputs (the held-out split: no trainer's sample is in it)."""
    return load_digits_split(0)[1].x


def attack_trial(s: Settings, sigma: float, n: int, batch: int, epochs: int, trial: int,
                 train: Dataset, base: ModelState) -> tuple[float, float, float]:
    """(PSNR, SSIM, label rate) of inverting one trainer's update over n real samples."""
    rng = np.random.default_rng([trial, n, batch, epochs])
    d = subset(train, rng.choice(len(train), size=n, replace=False))
    trained = _train(SPEC, base, d, s, sigma, seed=trial, epochs=epochs, batch_size=batch)
    rec = attack_update(SPEC, base, trained, n, seed=trial, own_x=attacker_data(),
                        config=s.inversion, max_grad_norm=s.max_grad_norm if sigma > 0 else None)
    q = reconstruction_quality(rec.x, rec.y, d.x, d.y)
    return q.psnr, q.ssim, q.label_rate


def prior_baseline(train: Dataset, n: int, trials: int) -> tuple[float, float]:
    """(PSNR, SSIM) of guessing the mean training image for every sample: no update needed."""
    mean = train.x.mean(0, keepdim=True)
    ps, ss = [], []
    for trial in range(trials):
        rng = np.random.default_rng([trial, n, 99])
        d = subset(train, rng.choice(len(train), size=n, replace=False))
        q = reconstruction_quality(mean.repeat(n, 1), d.y, d.x, d.y)
        ps.append(q.psnr)
        ss.append(q.ssim)
    return statistics.fmean(ps), statistics.fmean(ss)


# --- robustness ----------------------------------------------------------------------------

def robustness_run(s: Settings, sigma: float, dp_share: str, attacker_noise: bool, rule: str,
                   seed: int) -> dict:
    """CMFL rounds with sign-flip attackers among the trainers and DP on some honest peers.

    The committee is fixed (the first peers, honest). Attackers send base - (trained - base)
    and declare the DP parameters of the honest DP peers; with attacker_noise they also train
    with that noise (so their update holds the noise they declare), else without."""
    train, test = load_digits_split(seed)
    ids = [f"p{i:02d}" for i in range(s.robust_peers)]
    parts = shard_indices(train.y.numpy(), len(ids), seed, "iid")
    data = {p: subset(train, parts[i]) for i, p in enumerate(ids)}
    committee = ids[: s.robust_committee]
    attackers = set(ids[-s.robust_attackers:])
    honest = [p for p in ids if p not in attackers]
    dp = (set(honest) if dp_share == "all" else set(honest[::2])) if sigma > 0 else set()
    trainers = [p for p in ids if p not in committee]
    config = RoundConfig(rule="auto", scoring="median", election="trusted")
    k = math.ceil(0.5 * len(trainers))
    state = initial_state(SPEC, seed)
    picked: dict[str, int] = {p: 0 for p in trainers}
    for rnd in range(s.robust_rounds):
        sent, var = {}, {}
        for i, p in enumerate(ids):
            noisy = p in dp or (p in attackers and attacker_noise and sigma > 0)
            seed_i = seed * 1_000_003 + rnd * 1_009 + i
            if noisy:
                trained, report = train_local_dp(SPEC, state, data[p], s.epochs, s.lr,
                                                 s.batch_size, seed_i, sigma, s.max_grad_norm)
            else:
                trained = train_local(SPEC, state, data[p], s.epochs, s.lr, s.batch_size, seed_i)
                # What a no-DP peer declares: nothing; an attacker: the honest DP peers' noise.
                report = DpReport(0.0, s.max_grad_norm, 1.0, 0, 0.0)
                if p in attackers and sigma > 0:
                    n = len(data[p])
                    report = DpReport(sigma, s.max_grad_norm, min(1.0, s.batch_size / n),
                                      s.epochs * math.ceil(n / s.batch_size), 0.0)
            var[p] = update_noise_variance(report, s.lr, len(data[p]))
            if p in attackers:
                trained = {k: state[k] - (trained[k] - state[k]) for k in sorted(trained)}
            sent[p] = trained
        updates = {t: sent[t] for t in trainers}
        if rule == "S1":
            vectors = {m: score_updates(sent[m], updates) for m in committee}
            combined = combine_scores([vectors[m] for m in committee], "sum")
            selected = select_lowest_distance(combined, k)
        elif rule == "auto":
            vectors = {m: score_updates(sent[m], updates) for m in committee}
            selected = list(select_round(vectors, config).selected)
        else:  # S1 on noise-debiased distances, refusing updates that lack their noise
            vectors = {m: {t: noise_debiased_distance(updates[t], sent[m], var[t], var[m])
                           if noise_consistent(state, updates[t], var[t]) else math.inf
                           for t in trainers} for m in committee}
            combined = combine_scores([vectors[m] for m in committee], "sum")
            selected = select_lowest_distance(combined, k)
        for t in selected:
            picked[t] += 1
        state = aggregate_weighted(state, {t: updates[t] for t in selected},
                                   {t: len(data[t]) for t in selected})

    def rate(group: list[str]) -> float:
        return statistics.fmean(picked[t] / s.robust_rounds for t in group) if group else math.nan

    return {
        "attackers": rate([t for t in trainers if t in attackers]),
        "honest_dp": rate([t for t in trainers if t in dp]),
        "honest_plain": rate([t for t in trainers if t not in dp and t not in attackers]),
        "accuracy": evaluate(SPEC, state, test),
    }


# --- report --------------------------------------------------------------------------------

def _fmt_eps(e: float) -> str:
    if math.isinf(e):
        return "inf"
    return f"{e:.3g}" if e < 1e4 else f"{e:.1e}"


def _sigma_name(sigma: float) -> str:
    return "no DP" if sigma == 0 else f"{sigma:g}"


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plot(main: list[dict], degradation: list[dict], s: Settings, out: Path,
         baselines: dict[int, tuple[float, float]], suffix: str = "") -> None:
    """privacy_tradeoff.png (epsilon vs accuracy, sigma vs attack PSNR) and
    privacy_degradation.png (attack PSNR without DP vs samples and steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    dp_rows = [r for r in main if r["sigma"] > 0]
    ax = axes[0]
    ax.semilogx([r["epsilon"] for r in dp_rows], [r["accuracy"] for r in dp_rows], "o-",
                label="DP-SGD")
    for r in dp_rows:
        ax.annotate(f"σ={r['sigma']:g}", (r["epsilon"], r["accuracy"]), fontsize=7,
                    textcoords="offset points", xytext=(3, 3))
    no_dp = [r for r in main if r["sigma"] == 0]
    if no_dp:
        ax.axhline(no_dp[0]["accuracy"], color="grey", ls="--", label="no DP")
    ax.set_xlabel(f"ε at δ={DEFAULT_DELTA:g} per peer after {s.rounds} rounds (RDP)")
    ax.set_ylabel("final test accuracy")
    ax.set_title("privacy vs accuracy (FedAvg, digits)")
    ax.legend()
    ax = axes[1]
    xs = [max(r["sigma"], 1e-3 / 3) for r in main]
    for b in s.attack_batches:
        ax.semilogx(xs, [r[f"psnr_b{b}"] for r in main], "o-", label=f"attack, batch {b}")
        ax.axhline(baselines[b][0], ls=":", color=ax.lines[-1].get_color(),
                   label=f"mean-image guess, batch {b}")
    ax.set_xlabel("noise multiplier σ (leftmost point: no DP)")
    ax.set_ylabel("reconstruction PSNR (dB)")
    ax.set_title("gradient inversion of a one-step update")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"privacy_tradeoff{suffix}.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    one_epoch = [r for r in degradation if r["epochs"] == 1 and r["batch"] == r["samples"]]
    ax.plot([r["samples"] for r in one_epoch], [r["psnr"] for r in one_epoch], "o-",
            label="one step, batch = all samples")
    for n in sorted({r["samples"] for r in degradation}):
        rows = sorted((r for r in degradation if r["samples"] == n and r["steps"] > 1),
                      key=lambda r: r["steps"])
        if rows:
            ax.plot([n] * len(rows), [r["psnr"] for r in rows], "x", ms=8,
                    label=f"{n} samples, more steps")
            for r in rows:
                ax.annotate(f"{r['steps']} st", (n, r["psnr"]), fontsize=7,
                            textcoords="offset points", xytext=(4, 0))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("samples in the update")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title("gradient inversion without DP")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"privacy_degradation{suffix}.png", dpi=120)
    plt.close(fig)


def plot_examples(s: Settings, train: Dataset, base: ModelState, out: Path,
                  suffix: str = "") -> None:
    """Real samples of one batch of 4 and their reconstructions at each noise level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = 4
    rng = np.random.default_rng([0, n, n, 1])
    d = subset(train, rng.choice(len(train), size=n, replace=False))
    rows = [("real", d.x)]
    for sigma in s.sigmas:
        trained = _train(SPEC, base, d, s, sigma, seed=0, epochs=1, batch_size=n)
        rec = attack_update(SPEC, base, trained, n, seed=0, own_x=attacker_data(),
                            config=s.inversion, max_grad_norm=s.max_grad_norm if sigma else None)
        # Show each real sample's matched reconstruction in the real sample's column.
        cost = ((d.x[:, None, :] - rec.x[None, :, :]) ** 2).mean(2).numpy()
        r_idx, c_idx = linear_sum_assignment(cost)
        name = "no DP" if sigma == 0 else f"σ={sigma:g}"
        rows.append((name, rec.x[c_idx[np.argsort(r_idx)]]))
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 1.2, len(rows) * 1.2))
    for i, (name, xs) in enumerate(rows):
        for j in range(n):
            ax = axes[i][j]
            ax.imshow(xs[j].view(8, 8).numpy(), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.suptitle("one-step update of a batch of 4", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"privacy_reconstructions{suffix}.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run with tiny counts")
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    # Tiny sigmas push Opacus' optimal RDP order to the grid's edge; the epsilon is still a
    # valid (loose) upper bound, and far past any meaningful budget anyway.
    warnings.filterwarnings("ignore", message="Optimal order is the smallest alpha")
    s = QUICK if args.quick else Settings()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train, _ = load_digits_split(0)
    base = initial_state(SPEC, 0)
    baselines = {b: prior_baseline(train, b, s.attack_trials) for b in s.attack_batches}

    main_rows = []
    for sigma in s.sigmas:
        runs = [federated_run(s, sigma, seed) for seed in range(s.seeds)]
        row: dict = {"sigma": sigma, "epsilon": runs[0][1],
                     "accuracy": statistics.fmean(a for a, _ in runs)}
        for b in s.attack_batches:
            trials = [attack_trial(s, sigma, b, b, 1, t, train, base)
                      for t in range(s.attack_trials)]
            row[f"step_epsilon_b{b}"] = (round_epsilon(sigma, 1.0, 1) if sigma else math.inf)
            row[f"psnr_b{b}"] = statistics.fmean(t[0] for t in trials)
            row[f"ssim_b{b}"] = statistics.fmean(t[1] for t in trials)
            row[f"labels_b{b}"] = statistics.fmean(t[2] for t in trials)
        main_rows.append(row)
        print(f"sigma {_sigma_name(sigma):>6}: eps {_fmt_eps(row['epsilon']):>8} "
              f"acc {row['accuracy']:.3f} " + " ".join(
                  f"b{b}: psnr {row[f'psnr_b{b}']:.1f} ssim {row[f'ssim_b{b}']:.2f} "
                  f"labels {row[f'labels_b{b}']:.2f}" for b in s.attack_batches), flush=True)

    degradation = []
    for n, b, e in s.degradation:
        trials = [attack_trial(s, 0.0, n, b, e, t, train, base) for t in range(s.attack_trials)]
        degradation.append({"samples": n, "batch": b, "epochs": e,
                            "steps": e * math.ceil(n / b),
                            "psnr": statistics.fmean(t[0] for t in trials),
                            "ssim": statistics.fmean(t[1] for t in trials),
                            "labels": statistics.fmean(t[2] for t in trials),
                            "baseline_psnr": prior_baseline(train, n, s.attack_trials)[0]})
        print(f"no DP, {n} samples, batch {b}, {e} epoch(s): psnr {degradation[-1]['psnr']:.1f}",
              flush=True)

    robust = []
    for sigma in s.robust_sigmas:
        cases = [("all", False), ("all", True), ("half", False)] if sigma > 0 else [
            ("none", False)]
        for share, attacker_noise in cases:
            for rule in ROBUST_RULES:
                runs = [robustness_run(s, sigma, share, attacker_noise, rule, seed)
                        for seed in range(s.robust_seeds)]
                row = {"sigma": sigma, "dp_peers": share,
                       "attacker_noise": "dp" if attacker_noise else "none", "rule": rule}
                for k in runs[0]:
                    vals = [r[k] for r in runs if not math.isnan(r[k])]
                    row[k] = statistics.fmean(vals) if vals else math.nan
                robust.append(row)
                print(f"robustness sigma {sigma:g} dp {share} attacker noise {attacker_noise} "
                      f"{rule}: attackers {row['attackers']:.2f} honest dp "
                      f"{row['honest_dp']:.2f} plain {row['honest_plain']:.2f} "
                      f"acc {row['accuracy']:.3f}", flush=True)

    seconds = time.perf_counter() - started
    suffix = "_quick" if args.quick else ""
    write_csv(out / f"privacy{suffix}.csv", main_rows)
    write_csv(out / f"privacy_degradation{suffix}.csv", degradation)
    write_csv(out / f"privacy_robustness{suffix}.csv", robust)
    plot(main_rows, degradation, s, out, baselines, suffix)
    plot_examples(s, train, base, out, suffix)
    report = render(main_rows, degradation, robust, s, baselines, seconds, args.quick)
    (out / f"privacy{suffix}.md").write_text(report)
    print()
    print(report)
    return 0


def render(main_rows: list[dict], degradation: list[dict], robust: list[dict], s: Settings,
           baselines: dict[int, tuple[float, float]], seconds: float, quick: bool) -> str:
    """The markdown report."""
    cmd = "nice -n 10 python -m bench.privacy" + (" --quick" if quick else "")
    lines = [
        "# Privacy: DP-SGD, gradient inversion and robustness", "",
        f"Written by `{cmd}` in {seconds / 60:.1f} min (one thread). Digits, MLP 64-64-10, "
        f"{s.peers} peers (IID), {s.rounds} rounds of FedAvg over every peer, "
        f"{s.epochs} local epochs, lr {s.lr}, batch {s.batch_size}; DP-SGD clips per sample "
        f"to C={s.max_grad_norm:g} and draws Poisson batches (rate batch/n). Accuracy is the "
        f"mean over {s.seeds} seed(s).", "",
        f"ε: what each peer has spent after the run, at δ={DEFAULT_DELTA:g} (Opacus RDP). "
        "The attack columns invert a *one-step update of a single batch* of B samples with "
        "the row's σ and C (the attack's best case; ε of that one step in brackets), "
        f"mean over {s.attack_trials} batches: PSNR in dB (capped at 60), SSIM, share of "
        "labels recovered.", "",
    ]
    head = "| σ | ε (run) | accuracy |"
    sep = "|---|---|---|"
    for b in s.attack_batches:
        head += f" B={b}: PSNR / SSIM / labels (step ε) |"
        sep += "---|"
    lines += [head, sep]
    for r in main_rows:
        line = f"| {_sigma_name(r['sigma'])} | {_fmt_eps(r['epsilon'])} | {r['accuracy']:.3f} |"
        for b in s.attack_batches:
            line += (f" {r[f'psnr_b{b}']:.1f} / {r[f'ssim_b{b}']:.2f} / "
                     f"{r[f'labels_b{b}']:.2f} ({_fmt_eps(r[f'step_epsilon_b{b}'])}) |")
        lines.append(line)
    lines += ["", "No update at all (guess the mean training image): " + ", ".join(
        f"B={b}: PSNR {p:.1f} / SSIM {q:.2f}" for b, (p, q) in baselines.items()) + ".", ""]
    lines += ["## The attack without DP: local steps and batch size", "",
              "| samples | batch | epochs | steps | PSNR | SSIM | labels | mean-image PSNR |",
              "|---|---|---|---|---|---|---|---|"]
    for r in degradation:
        lines.append(f"| {r['samples']} | {r['batch']} | {r['epochs']} | {r['steps']} | "
                     f"{r['psnr']:.1f} | {r['ssim']:.2f} | {r['labels']:.2f} | "
                     f"{r['baseline_psnr']:.1f} |")
    lines += ["", "## DP and robust selection", "",
              f"{s.robust_peers} peers, committee of {s.robust_committee} (fixed, honest), "
              f"{s.robust_peers - s.robust_committee} trainers of which "
              f"{s.robust_attackers} sign-flip attackers, {s.robust_rounds} rounds, "
              f"{s.robust_seeds} seed(s). DP on every honest peer (all) or every second one "
              "(half). The attackers declare the honest peers' DP parameters; their own noise "
              "is none (a sign-flipped clean update) or dp (a sign-flipped DP-SGD update). "
              "Rates: share of rounds a trainer of the group was selected (S1 selects half of "
              "the trainers, so 0.5 is chance). S1 = sum + `select_lowest_distance`; auto = "
              "`learning.cmfl.select_round` (median, outlier filter); S1-debiased = S1 on "
              "`noise_debiased_distance`, updates failing `noise_consistent` refused.", "",
              "| σ | DP peers | attackers' noise | rule | attackers selected | "
              "honest DP selected | honest no-DP selected | accuracy |",
              "|---|---|---|---|---|---|---|---|"]
    for r in robust:
        def f(x: float) -> str:
            return "-" if math.isnan(x) else f"{x:.2f}"
        lines.append(f"| {_sigma_name(r['sigma'])} | {r['dp_peers']} | {r['attacker_noise']} | "
                     f"{r['rule']} | "
                     f"{f(r['attackers'])} | {f(r['honest_dp'])} | {f(r['honest_plain'])} | "
                     f"{r['accuracy']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
