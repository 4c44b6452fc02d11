"""Our network side by side with Flower 1.42 on the demo's workload, alternating runs.

Three systems, each as real processes on loopback, on the same workload (10 clients, the
demo's shards of the digits data, the same initial model, the genesis's epochs, lr and batch
size, the same number of rounds; 6 of the 10 train each round, as the 6 trainers of our
10-peer network with a committee of 4; every client evaluates on its held-out shard and the
global model on the test split each round, as our peers do before they report a round):

- `grpc`: Flower's gRPC server/client API (`flwr.server.start_server`, `flwr.client.start_client`:
  one server and 10 long-lived client processes), FedAvg;
- `deployment`: Flower's deployment engine (`flower-superlink`, 10 `flower-supernode`s, a
  ServerApp and a ClientApp submitted with `flwr run`), FedAvg, default isolation;
- `ours`: 10 `p2p-node run` processes as `scripts/demo` starts them (no attackers), CMFL
  selection and pBFT agreement of the default genesis.

    python bench/vs_flower.py [--runs 2] [--rounds 8] [--workload demo|heavy|both]
        [--systems grpc,deployment,ours] [--heavy-epochs 100]

`--workload heavy` is the `cnn` task (two convolutions) with more epochs, so that local training
takes >= 1 s: there the fixed overhead of each system should vanish into training time.

For each system: seconds per round (median, min-max, over the rounds after the first of every
run), time to the first round (from starting the first process), CPU seconds per round (all the
system's processes, between the end of its first and its last round), peak RSS per process (by
role) and the ratios to ours. Flower lives only in the bench venv: `scripts/setup-bench-env`
makes `.venv-bench`; without it only `ours` can run, and the bench says so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
if not __package__:  # run as a script: bench/ is sys.path[0], and bench/gossip.py would shadow
    sys.path[0] = str(ROOT)  # the gossip package
BENCH_VENV = ROOT / ".venv-bench"
BENCH_BIN = BENCH_VENV / "bin"
CLIENTS = 10
COMMITTEE = 4  # the demo's committee: 10 - 4 = 6 trainers a round


@dataclass(frozen=True)
class Workload:
    """What every system trains: a built-in task, the genesis training settings."""

    name: str
    task: str
    epochs: int
    lr: float = 0.1
    batch_size: int = 16

    @property
    def training(self) -> dict:
        return {"epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size}


@dataclass
class RunResult:
    """One run of one system: when its rounds ended, its CPU and memory."""

    system: str
    ends: list[float] = field(default_factory=list)  # wall time each round was done
    launched: float = 0.0
    cpu_at: list[float] = field(default_factory=list)  # all processes' CPU s at each end
    peak_rss: dict[str, list[int]] = field(default_factory=dict)  # role -> bytes per process
    train_seconds: list[float] = field(default_factory=list)
    accuracy: float | None = None
    error: str | None = None

    @property
    def round_seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.ends, self.ends[1:])]

    @property
    def first_round(self) -> float | None:
        return self.ends[0] - self.launched if self.ends else None

    @property
    def cpu_per_round(self) -> float | None:
        if len(self.cpu_at) < 2:
            return None
        return (self.cpu_at[-1] - self.cpu_at[0]) / (len(self.cpu_at) - 1)


# process accounting ---------------------------------------------------------------------------
def _role(cmdline: list[str]) -> str:
    text = " ".join(cmdline)
    for key, role in (("p2p_node", "peer"), ("legacy-server", "server"),
                      ("legacy-client", "client"), ("flower-superlink", "superlink"),
                      ("flower-supernode", "supernode"), ("flower-superexec", "superexec"),
                      ("flwr-serverapp", "serverapp"), ("flwr-clientapp", "clientapp"),
                      ("flwr run", "flwr-cli"), ("bin/flwr", "flwr-cli")):
        if key in text:
            return role
    return "other"


def _peak_rss(pid: int) -> int | None:
    """The process's high-water RSS (VmHWM), in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class ProcessWatch:
    """Samples every descendant of this process: own CPU seconds and peak RSS, by pid.

    Processes are kept after they exit (their last sample), so short-lived ones (a ClientApp
    per message) count; the at most one sampling interval of CPU a process spends after its
    last sample is lost."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.seen: dict[int, dict] = {}  # pid -> role, cpu, rss
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> ProcessWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            self.sample(me)
            self._stop.wait(self.interval)

    def sample(self, me: psutil.Process | None = None) -> None:
        me = me or psutil.Process()
        try:
            children = me.children(recursive=True)
        except psutil.Error:
            return
        for p in children:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    cpu = t.user + t.system
                    key = (p.pid, p.create_time())
                    row = self.seen.get(key)
                    if row is None:
                        row = {"role": _role(p.cmdline()), "cpu": 0.0, "rss": 0}
                rss = _peak_rss(p.pid) or 0
            except psutil.Error:
                continue
            with self._lock:
                row["cpu"] = max(row["cpu"], cpu)
                row["rss"] = max(row["rss"], rss)
                self.seen[key] = row

    def cpu(self) -> float:
        with self._lock:
            return sum(r["cpu"] for r in self.seen.values())

    def peaks(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        with self._lock:
            for r in self.seen.values():
                if r["rss"]:
                    out.setdefault(r["role"], []).append(r["rss"])
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_group(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    """Stop the process groups we started (each Popen with start_new_session), by their ids."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.1, deadline - time.monotonic()))
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)  # what is left of the group (its children)
        p.wait()


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows


class RoundClock:
    """Turns a growing list of round-end times into CPU samples taken as each round ends."""

    def __init__(self, watch: ProcessWatch, result: RunResult) -> None:
        self.watch, self.result = watch, result

    def update(self, ends: list[float]) -> None:
        while len(self.result.ends) < len(ends):
            self.watch.sample()
            self.result.cpu_at.append(self.watch.cpu())
            self.result.ends.append(ends[len(self.result.ends)])


# the three systems ----------------------------------------------------------------------------
def _flower_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PATH=f"{BENCH_BIN}:{os.environ['PATH']}")
    env.update(extra or {})
    return env


def _wait_rounds(marks: Path, clock: RoundClock, rounds: int, deadline: float,
                 procs: list[subprocess.Popen], what: str) -> str | None:
    """Follow a Flower server's marks file until `rounds` rounds; None or an error."""
    while True:
        rows = _read_jsonl(marks)
        clock.update([r["time"] for r in rows])
        if len(rows) >= rounds:
            clock.result.accuracy = rows[-1].get("accuracy")
            clock.result.train_seconds = [r["train_seconds"] for r in rows
                                          if r.get("train_seconds") is not None]
            return None
        if time.monotonic() > deadline:
            return f"{what}: {len(rows)}/{rounds} rounds before the deadline"
        if procs[0].poll() is not None:
            return f"{what}: the server exited ({procs[0].returncode}) after {len(rows)} rounds"
        time.sleep(0.1)


def run_grpc(w: Workload, rounds: int, out: Path, watch: ProcessWatch,
             timeout: float) -> RunResult:
    result = RunResult("grpc")
    clock = RoundClock(watch, result)
    address = f"127.0.0.1:{free_port()}"
    marks = out / "marks.jsonl"
    common = [str(BENCH_BIN / "python"), "-m", "bench.flower_side", "--address", address,
              "--task", w.task, "--epochs", str(w.epochs), "--lr", str(w.lr),
              "--batch-size", str(w.batch_size), "--clients", str(CLIENTS),
              "--rounds", str(rounds), "--train-fraction", str((CLIENTS - COMMITTEE) / CLIENTS),
              "--marks", str(marks)]
    env = _flower_env()
    result.launched = time.time()
    procs = [subprocess.Popen(common[:3] + ["legacy-server"] + common[3:], env=env, cwd=out,
                              stdout=open(out / "server.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)]
    for i in range(CLIENTS):
        procs.append(subprocess.Popen(
            common[:3] + ["legacy-client"] + common[3:] + ["--index", str(i)], env=env, cwd=out,
            stdout=open(out / f"client-{i}.log", "w"), stderr=subprocess.STDOUT,
            start_new_session=True))
    try:
        result.error = _wait_rounds(marks, clock, rounds, time.monotonic() + timeout, procs,
                                    "grpc")
        if result.error is None:  # the clients leave when the server ends
            for p in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(30)
    finally:
        watch.sample()
        _stop_group(procs)
    result.peak_rss = watch.peaks()
    return result


APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "cmflbench"
version = "1.0.0"
description = "bench/vs_flower.py: the demo workload on Flower's deployment engine"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "cmfl"

[tool.flwr.app.components]
serverapp = "benchapp:serverapp"
clientapp = "benchapp:clientapp"

[tool.flwr.app.config]
task = "{task}"
epochs = {epochs}
lr = {lr}
batch-size = {batch_size}
clients = {clients}
rounds = {rounds}
train-fraction = {fraction}
marks = "{marks}"
"""

APP_MODULE = """\
# The Flower App's entry points: bench/flower_side.py (the repository is on PYTHONPATH).
from bench.flower_side import make_apps

APPS = make_apps()
serverapp = APPS[0]
clientapp = APPS[1]
"""


def run_deployment(w: Workload, rounds: int, out: Path, watch: ProcessWatch,
                   timeout: float) -> RunResult:
    result = RunResult("deployment")
    clock = RoundClock(watch, result)
    marks = out / "marks.jsonl"
    app, home = out / "app", out / "flwr-home"
    app.mkdir()
    home.mkdir()
    (app / "pyproject.toml").write_text(APP_PYPROJECT.format(
        task=w.task, epochs=w.epochs, lr=w.lr, batch_size=w.batch_size, clients=CLIENTS,
        rounds=rounds, fraction=(CLIENTS - COMMITTEE) / CLIENTS, marks=marks))
    (app / "benchapp.py").write_text(APP_MODULE)
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{port}"\n'
        "insecure = true\n")
    env = _flower_env({"FLWR_HOME": str(home)})
    result.launched = time.time()
    procs = [subprocess.Popen([str(BENCH_BIN / "flower-superlink"), "--insecure", "--port",
                               str(port)], env=env, cwd=out,
                              stdout=open(out / "superlink.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)]
    for i in range(CLIENTS):
        procs.append(subprocess.Popen(
            [str(BENCH_BIN / "flower-supernode"), "--insecure", "--superlink",
             f"127.0.0.1:{port}", "--port", str(free_port()),
             "--node-config", f"partition-id={i} num-partitions={CLIENTS}"],
            env=env, cwd=out, stdout=open(out / f"supernode-{i}.log", "w"),
            stderr=subprocess.STDOUT, start_new_session=True))
    deadline = time.monotonic() + timeout
    try:
        while True:  # submit the run once the SuperLink answers
            submit = subprocess.run([str(BENCH_BIN / "flwr"), "run", str(app)], env=env,
                                    cwd=out, capture_output=True, text=True)
            (out / "flwr-run.log").open("a").write(submit.stdout + submit.stderr)
            if "Successfully started run" in submit.stdout + submit.stderr:
                break
            if time.monotonic() > deadline:
                result.error = "deployment: `flwr run` never reached the SuperLink"
                return result
            time.sleep(1.0)
        result.error = _wait_rounds(marks, clock, rounds, deadline, procs, "deployment")
    finally:
        watch.sample()
        _stop_group(procs)
        result.peak_rss = watch.peaks()
    return result


def run_ours(w: Workload, rounds: int, out: Path, watch: ProcessWatch,
             timeout: float) -> RunResult:
    from p2p_node.demo import DemoConfig, run_demo

    result = RunResult("ours")
    clock = RoundClock(watch, result)
    cfg = DemoConfig(out=out / "demo", peers=CLIENTS, attackers=0, rounds=rounds,
                     committee_size=COMMITTEE, task=w.task, training=w.training)
    done = threading.Event()
    code: list[int] = []

    def demo() -> None:
        try:
            with open(out / "demo.log", "w") as log, contextlib.redirect_stdout(log):
                code.append(run_demo(cfg))
        finally:
            done.set()

    result.launched = time.time()
    thread = threading.Thread(target=demo, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    committed: list[dict] = []
    while True:
        committed = [e for d in sorted(cfg.out.glob("peer-*"))
                     for e in _read_jsonl(d / "events.jsonl") if e.get("event") == "committed"]
        by_height: dict[int, list[float]] = {}
        for e in committed:
            by_height.setdefault(e["height"], []).append(e["time"])
        ends = []
        for h in range(rounds):  # a round is done when every peer committed it
            if len(by_height.get(h, ())) < CLIENTS:
                break
            ends.append(max(by_height[h]))
        clock.update(ends)
        if done.is_set() or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    thread.join(60)
    result.peak_rss = watch.peaks()
    result.train_seconds = [e["stages"]["train_seconds"] for e in committed
                            if "train_seconds" in e.get("stages", {})]
    last = [e for e in committed if e["height"] == rounds - 1]
    if last and last[0].get("accuracy") is not None:
        result.accuracy = last[0]["accuracy"]
    if len(result.ends) < rounds:
        result.error = f"ours: {len(result.ends)}/{rounds} rounds (demo exit {code or '?'})"
    elif code and code[0] != 0:
        result.error = f"ours: the demo exited {code[0]} (see {out / 'demo.log'})"
    return result


SYSTEMS = {"grpc": run_grpc, "deployment": run_deployment, "ours": run_ours}
LABELS = {"grpc": "Flower gRPC (start_server/start_client)",
          "deployment": "Flower deployment engine (SuperLink/SuperNode)",
          "ours": "ours (10 p2p-node processes)"}


def bench_venv_problem() -> str | None:
    """Why the bench venv cannot run Flower, or None."""
    python = BENCH_BIN / "python"
    if not python.exists():
        return f"{BENCH_VENV} is missing"
    probe = subprocess.run([str(python), "-c", "import flwr, torch; print(flwr.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"{BENCH_VENV} cannot import flwr: {probe.stderr.strip().splitlines()[-1:]}"
    if not probe.stdout.strip().startswith("1.42"):
        return f"{BENCH_VENV} has flwr {probe.stdout.strip()}, not 1.42"
    return None


# report ---------------------------------------------------------------------------------------
def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def summarise(runs: list[RunResult]) -> dict:
    ok = [r for r in runs if r.error is None and len(r.ends) >= 2]
    rounds = [s for r in ok for s in r.round_seconds]
    firsts = [r.first_round for r in ok if r.first_round is not None]
    cpus = [r.cpu_per_round for r in ok if r.cpu_per_round is not None]
    peaks: dict[str, list[int]] = {}
    for r in ok:
        for role, values in r.peak_rss.items():
            peaks.setdefault(role, []).extend(values)
    train = [s for r in ok for s in r.train_seconds]
    return {
        "runs": len(runs), "ok": len(ok), "errors": [r.error for r in runs if r.error],
        "round_median": statistics.median(rounds) if rounds else None,
        "round_min": min(rounds) if rounds else None,
        "round_max": max(rounds) if rounds else None,
        "first_round": statistics.median(firsts) if firsts else None,
        "cpu_per_round": statistics.median(cpus) if cpus else None,
        "peak_rss_mib": {role: (max(v) / 2**20, statistics.fmean(v) / 2**20, len(v))
                         for role, v in sorted(peaks.items())},
        "train_median": statistics.median(train) if train else None,
        "accuracy": [r.accuracy for r in ok],
    }


def report(workload: Workload, summaries: dict[str, dict], load: tuple[float, float]) -> None:
    ours = summaries.get("ours", {})
    print(f"\n== workload {workload.name}: task {workload.task}, {workload.epochs} epochs, "
          f"lr {workload.lr}, batch {workload.batch_size}, {CLIENTS} clients "
          f"({CLIENTS - COMMITTEE} train a round); load {load[0]:.1f} -> {load[1]:.1f}")
    print(f"{'system':<48} {'s/round median (min-max)':>26} {'first round s':>14} "
          f"{'CPU s/round':>12} {'local train s':>14} {'final acc':>9}")
    for name, s in summaries.items():
        spread = (f"{_fmt(s['round_median'], 3)} ({_fmt(s['round_min'], 3)}-"
                  f"{_fmt(s['round_max'], 3)})")
        acc = "/".join(f"{a:.3f}" for a in s["accuracy"] if a is not None) or "-"
        print(f"{LABELS[name]:<48} {spread:>26} {_fmt(s['first_round'], 1):>14} "
              f"{_fmt(s['cpu_per_round']):>12} {_fmt(s['train_median'], 3):>14} {acc:>9}")
    print("peak RSS per process, MiB (max / mean over processes, count):")
    for name, s in summaries.items():
        roles = ", ".join(f"{role} {mx:.0f}/{mean:.0f} (x{n})"
                          for role, (mx, mean, n) in s["peak_rss_mib"].items())
        print(f"  {name:<11} {roles or '-'}")
    if ours.get("round_median"):
        print("ratios to ours (system / ours):")
        for name, s in summaries.items():
            if name == "ours" or s.get("round_median") is None:
                continue
            parts = [f"s/round {s['round_median'] / ours['round_median']:.3f}x"]
            if s["first_round"] and ours.get("first_round"):
                parts.append(f"first round {s['first_round'] / ours['first_round']:.2f}x")
            if s["cpu_per_round"] and ours.get("cpu_per_round"):
                parts.append(f"CPU/round {s['cpu_per_round'] / ours['cpu_per_round']:.3f}x")
            print(f"  {name:<11} " + ", ".join(parts))
        if ours.get("train_median") is not None:
            print(f"  ours: overhead beyond local training "
                  f"{ours['round_median'] - ours['train_median']:.3f} s a round")
    for name, s in summaries.items():
        for err in s["errors"]:
            print(f"  {name}: run failed: {err}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2, help="runs of each system (alternated)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds a run (the demo's 8)")
    parser.add_argument("--workload", choices=("demo", "heavy", "both"), default="demo")
    parser.add_argument("--systems", default="grpc,deployment,ours")
    parser.add_argument("--heavy-epochs", type=int, default=100,
                        help="epochs of the cnn workload (local training >= 1 s)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds one run of one system may take")
    parser.add_argument("--out", type=Path, help="keep every run's folder here")
    args = parser.parse_args()
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {sorted(SYSTEMS)}")
    flower = [s for s in systems if s != "ours"]
    problem = bench_venv_problem() if flower else None
    if problem:
        print(f"vs_flower: the bench extra is missing: {problem}.\n"
              f"vs_flower: create it with `scripts/setup-bench-env` (torch 2.13.0 CPU, then "
              f"flwr 1.42, in {BENCH_VENV}), or run `--systems ours` alone.", file=sys.stderr)
        return 2
    workloads = {"demo": [Workload("demo", "digits", 2)],
                 "heavy": [Workload("heavy", "cnn", args.heavy_epochs)]}
    chosen = (workloads["demo"] + workloads["heavy"] if args.workload == "both"
              else workloads[args.workload])
    out = (args.out or Path(tempfile.mkdtemp(prefix="vs-flower-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)  # our peers run `python -m p2p_node` from here: this tree's code
    results: dict = {}
    for w in chosen:
        by_system: dict[str, list[RunResult]] = {s: [] for s in systems}
        load_before = os.getloadavg()[0]
        for run in range(args.runs):
            order = systems[run % len(systems):] + systems[:run % len(systems)]
            for system in order:
                folder = out / w.name / f"{system}-{run}"
                folder.mkdir(parents=True)
                print(f"vs_flower: {w.name} run {run + 1}/{args.runs}: {system} "
                      f"(load {os.getloadavg()[0]:.1f}) ...", flush=True)
                with ProcessWatch() as watch:
                    r = SYSTEMS[system](w, args.rounds, folder, watch, args.timeout)
                by_system[system].append(r)
                print(f"vs_flower:   {len(r.ends)} rounds, rounds after the first: "
                      f"{', '.join(f'{s:.2f}' for s in r.round_seconds)} s"
                      + (f"; {r.error}" if r.error else ""), flush=True)
        summaries = {s: summarise(by_system[s]) for s in systems}
        report(w, summaries, (load_before, os.getloadavg()[0]))
        results[w.name] = {"workload": w.__dict__, "systems": summaries,
                           "runs": {s: [r.__dict__ for r in rs] for s, rs in by_system.items()}}
    (out / "vs_flower.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nvs_flower: every run's logs and vs_flower.json in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
