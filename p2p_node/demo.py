"""`p2p-node demo`: a local network of real peer processes on loopback, some of them malicious.

It creates a key per peer, writes a genesis naming them, starts one `p2p-node run` process per
peer, prints each committed round as it happens, checks at the end that every peer holds the same
chain, and writes a summary and plots to the output folder. With `--compare` it then runs a
second network (no attackers, or plain FedAvg under the same attack) and plots both.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chain.genesis import SELECTION_PRESETS, Genesis
from p2p_node.identity import load_or_create_identity
from p2p_node.node import chain_summary

#: Genesis `selection` of the FedAvg comparison: every scored update, averaged by sample count.
FEDAVG_SELECTION = {"rule": "S2", "fraction": 1.0, "scoring": "sum", "election": "middle",
                    "outlier_ratio": 1.3}
#: How the comparison run differs from the main one, for titles and legends.
COMPARISONS = {"no-attack": "no attackers (CMFL)", "fedavg": "FedAvg, same attackers"}


@dataclass
class DemoConfig:
    out: Path
    peers: int = 10
    attackers: int = 2
    attack: str = "sign_flip"
    rounds: int = 8
    committee_size: int = 4
    seed: int = 0
    partition: str = "iid"
    round_timeout: float = 90.0
    #: none, no-attack or fedavg: a second network to run and plot against the first
    compare: str = "none"
    #: hidden layer widths of the MLP (64 inputs, 10 classes); wider layers make updates larger
    #: than one gossip message, which then travel as blob references (p2p_node/round_machine.py)
    hidden: tuple[int, ...] = (64,)
    #: the built-in task to train (learning.task.BUILTIN_TASKS); digits keeps the unpinned MLP
    task: str = "digits"
    #: the genesis `compression` map (learning.compression), {} for none
    compression: dict[str, Any] = field(default_factory=dict)
    #: who signs certificates: the committee or every member (chain.genesis.Genesis.consensus)
    consensus: str = "committee"
    #: who can read an update: "none" or "validators" (chain.genesis.Genesis.sealing)
    sealing: str = "none"
    #: the genesis rule (chain.genesis.SELECTION_PRESETS)
    rule: str = "cmfl-choose-clipped"
    #: the genesis `training` map (epochs, lr, batch_size), {} for the genesis default
    training: dict[str, Any] = field(default_factory=dict)


@dataclass
class NetworkResult:
    """What one demo network did: a row per committed round and the end state of every peer."""

    name: str
    rows: list[dict] = field(default_factory=list)
    chains_equal: bool = False
    head: str | None = None
    blocks: int = 0
    seconds: float = 0.0
    exit_codes: list[int | None] = field(default_factory=list)

    @property
    def final_accuracy(self) -> float | None:
        return self.rows[-1]["accuracy"] if self.rows else None

    @property
    def attackers_selected(self) -> int:
        return sum(r["attackers_selected"] for r in self.rows)


def free_ports(n: int) -> list[int]:
    """n TCP ports on loopback that are free right now."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written right now
    return events


def run_demo(cfg: DemoConfig) -> int:
    """Run the demo; 0 when every peer committed every round and all chains are equal."""
    if cfg.attackers < 0 or cfg.attackers >= cfg.peers - cfg.committee_size:
        print("p2p-node: error: demo needs more honest trainers than attackers "
              f"(peers - committee size = {cfg.peers - cfg.committee_size} trainers)",
              file=sys.stderr)
        return 2
    if cfg.out.exists():
        shutil.rmtree(cfg.out)
    cfg.out.mkdir(parents=True)
    main = _run_network(cfg, cfg.out, cfg.attackers, None, "main")
    results = [main]
    if cfg.compare != "none":
        attackers = 0 if cfg.compare == "no-attack" else cfg.attackers
        selection = FEDAVG_SELECTION if cfg.compare == "fedavg" else None
        print(f"\ndemo: comparison run: {COMPARISONS[cfg.compare]}")
        results.append(_run_network(cfg, cfg.out / f"compare-{cfg.compare}", attackers,
                                    selection, cfg.compare))

    summary: dict[str, Any] = {
        "peers": cfg.peers, "attackers": cfg.attackers, "attack": cfg.attack,
        "rounds": cfg.rounds, "committed": len(main.rows),
        "final_accuracy": main.final_accuracy, "chains_equal": main.chains_equal,
        "head": main.head, "seconds": round(main.seconds, 1), "rounds_detail": main.rows,
        "peer_exit_codes": main.exit_codes}
    if len(results) > 1:
        other = results[1]
        summary["comparison"] = {
            "kind": cfg.compare, "committed": len(other.rows),
            "final_accuracy": other.final_accuracy, "chains_equal": other.chains_equal,
            "seconds": round(other.seconds, 1), "rounds_detail": other.rows,
            "peer_exit_codes": other.exit_codes}
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot = _plot(results, cfg)

    print()
    _print_result(main, cfg, cfg.attackers)
    if len(results) > 1:
        other = results[1]
        _print_result(other, cfg, 0 if cfg.compare == "no-attack" else cfg.attackers,
                      prefix=f"demo ({COMPARISONS[cfg.compare]})")
        if main.final_accuracy is not None and other.final_accuracy is not None:
            print(f"demo: final accuracy {main.final_accuracy:.3f} (CMFL, {cfg.attackers} x "
                  f"{cfg.attack}) vs {other.final_accuracy:.3f} ({COMPARISONS[cfg.compare]})")
    print(f"demo: summary in {cfg.out / 'summary.json'}"
          + (f", plots in {plot}" if plot else "")
          + f", peer logs in {cfg.out}/peer-*/node.log")
    ok = all(r.chains_equal and len(r.rows) == cfg.rounds and
             all(code == 0 for code in r.exit_codes) for r in results)
    return 0 if ok else 1


def _print_result(result: NetworkResult, cfg: DemoConfig, attackers: int,
                  prefix: str = "demo") -> None:
    final = "none" if result.final_accuracy is None else f"{result.final_accuracy:.4f}"
    line = (f"{prefix}: {len(result.rows)}/{cfg.rounds} rounds committed in "
            f"{result.seconds:.0f}s; final accuracy {final} (chance is 0.10)")
    if attackers:
        line += f"; attackers' updates selected {result.attackers_selected} times"
    print(line)
    print(f"{prefix}: every peer holds the same chain: {result.chains_equal} "
          f"(head {(result.head or '')[:16]}, {result.blocks} blocks)")
    failed = [i for i, code in enumerate(result.exit_codes) if code != 0]
    if failed:
        print(f"{prefix}: peers that did not exit cleanly: "
              f"{', '.join(f'p{i} (exit {result.exit_codes[i]})' for i in failed)}; "
              f"see their node.log")


def _run_network(cfg: DemoConfig, out: Path, n_attackers: int,
                 selection: dict | None, name: str) -> NetworkResult:
    """Start cfg.peers processes in `out`, print rounds as they commit, stop, check chains."""
    out.mkdir(parents=True, exist_ok=True)
    dirs = [out / f"peer-{i}" for i in range(cfg.peers)]
    ids = [load_or_create_identity(d).peer_id for d in dirs]
    label = {pid: f"p{i}" for i, pid in enumerate(ids)}
    # Attackers are the last peers: trainers in round 0 (the committee is the first peers).
    attackers = set(ids[cfg.peers - n_attackers:]) if n_attackers else set()
    extra: dict[str, Any] = {"selection": selection or dict(SELECTION_PRESETS[cfg.rule])}
    if tuple(cfg.hidden) != (64,):
        extra["model"] = {"layers": [64, *cfg.hidden, 10]}
    if cfg.compression:
        extra["compression"] = dict(cfg.compression)
    if cfg.training:
        extra["training"] = dict(cfg.training)
    if cfg.task != "digits":
        from learning.task import load_task

        task = load_task(cfg.task)
        extra.update(task=task.pin(), model=dict(task.settings))
    genesis = Genesis(name=f"demo-{name}", members=tuple(ids),
                      committee=tuple(ids[:cfg.committee_size]), seed=cfg.seed,
                      data={"dataset": "digits", "partition": cfg.partition, "alpha": 0.5,
                            "test_fraction": 0.2}, consensus=cfg.consensus,
                      sealing=cfg.sealing, **extra)
    genesis.save(out / "genesis.json")
    ports = free_ports(cfg.peers)
    addrs = [f"/ip4/127.0.0.1/tcp/{p}/p2p/{pid}" for p, pid in zip(ports, ids)]

    who = (f"{n_attackers} attacking with {cfg.attack}: "
           f"{', '.join(label[a] for a in sorted(attackers, key=ids.index))}"
           if attackers else "no attackers")
    rule = "FedAvg (every update)" if selection else \
        f"judged rounds ({cfg.rule}: every peer trains and judges)" \
        if cfg.rule.startswith("cmfl-choose") else "CMFL selection"
    if cfg.consensus == "members":
        rule += ", every member signs certificates"
    if cfg.sealing != "none":
        rule += f", updates sealed to the {cfg.sealing}"
    print(f"demo: {cfg.peers} peers ({who}), "
          + ("" if cfg.rule.startswith("cmfl-choose") and not selection
             else f"committee of {cfg.committee_size}, ") +
          f"{cfg.rounds} rounds, task {cfg.task} ({cfg.partition}), {rule}")
    print(f"demo: network id {genesis.network_id.hex()[:16]}, output in {out}/")
    procs = []
    for i, d in enumerate(dirs):
        cmd = [sys.executable, "-m", "p2p_node", "run", "--data-dir", str(d),
               "--genesis", str(out / "genesis.json"), "--listen", addrs[i].split("/p2p/")[0],
               "--rounds", str(cfg.rounds), "--start-wait", "120",
               "--min-peers", str(cfg.peers - 1)]
        for j in range(i):  # each pair connects once: the later peer dials the earlier one
            cmd += ["--bootstrap", addrs[j]]
        if ids[i] in attackers:
            cmd += ["--attack", cfg.attack]
            cmd += [a for other in sorted(attackers - {ids[i]}) for a in ("--colluder", other)]
        log = open(d / "node.log", "w")
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
    print(f"demo: started {cfg.peers} peer processes; each loads torch and the data, then "
          f"they connect (about 20 s on 2 cores)...", flush=True)

    result = NetworkResult(name)
    shown = 0
    listening_reported = False
    started = time.monotonic()
    last_progress = last_notice = started
    try:
        while shown < cfg.rounds:
            peer_events = [_read_events(d / "events.jsonl") for d in dirs]
            listening = sum(any(e.get("event") == "listening" for e in events)
                            for events in peer_events)
            by_height, synced = rounds_held(peer_events)
            if not listening_reported and listening == cfg.peers:
                listening_reported = True
                print(f"demo: all {cfg.peers} peers listening after "
                      f"{time.monotonic() - started:.0f}s; forming the gossip mesh and running "
                      "round 0", flush=True)
                print(f"{'height':>6}  {'committee':<18} {'selected (of trainers)':<28} "
                      f"{'global test acc':>15} {'round s':>8}  federated (own held-out data: "
                      "mean / worst peer)", flush=True)
                last_notice = time.monotonic()
            while shown in by_height and len(
                    {e["peer"] for e in by_height[shown]} | synced.get(shown, set())) == cfg.peers:
                late = synced.get(shown, set()) - {e["peer"] for e in by_height[shown]}
                result.rows.append(_row(shown, by_height[shown], ids, label, attackers,
                                        len(late)))
                shown += 1
                last_progress = last_notice = time.monotonic()
            if all(p.poll() is not None for p in procs) and shown < cfg.rounds:
                print("demo: every peer process has exited; see their node.log",
                      file=sys.stderr)
                break
            now = time.monotonic()
            if now - last_progress > cfg.round_timeout + 120 * (shown == 0):
                print(f"demo: no progress for {now - last_progress:.0f}s; stopping",
                      file=sys.stderr)
                break
            if now - last_notice > 20:
                stage = (f"waiting for round {shown}" if listening_reported else
                         f"{listening}/{cfg.peers} peers listening")
                print(f"demo: ... {stage} ({now - started:.0f}s so far)", flush=True)
                last_notice = now
            time.sleep(0.3)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.terminate()
                p.wait(timeout=30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    chains = [chain_summary(d) for d in dirs]
    result.chains_equal = (len({c["head"] for c in chains}) == 1 and
                           chains[0]["blocks"] == cfg.rounds)
    result.head, result.blocks = chains[0]["head"], chains[0]["blocks"]
    result.seconds = time.monotonic() - started
    result.exit_codes = [p.returncode for p in procs]
    return result


def rounds_held(peer_events: list[list[dict]]) -> tuple[dict[int, list[dict]],
                                                        dict[int, set[str]]]:
    """From each peer's events: the "committed" events by height, and by height the peers
    that stored that block by sync instead (a peer that missed a round's block on gossip
    catches up with `synced`, holding the block without a "committed" event for it)."""
    by_height: dict[int, list[dict]] = {}
    synced: dict[int, set[str]] = {}
    for events in peer_events:
        for e in events:
            if e.get("event") == "committed":
                by_height.setdefault(e["height"], []).append(e)
            elif e.get("event") == "synced" and isinstance(e.get("from"), int) \
                    and isinstance(e.get("height"), int):
                for h in range(e["from"], e["height"] + 1):
                    synced.setdefault(h, set()).add(e.get("peer"))
    return by_height, synced


def _row(height: int, events: list[dict], ids: list[str], label: dict[str, str],
         attackers: set[str], synced: int = 0) -> dict:
    """Print one committed round and return it as a summary row (`synced`: how many peers
    stored its block by sync instead of committing it in the round)."""
    e = events[0]
    judged = set(e["committee"]) == set(ids)  # judged rounds: every member trains and judges
    committee = "all judge" if judged else \
        " ".join(_mark(label[p], p in attackers) for p in e["committee"])
    trainers = len(ids) if judged else len(set(ids) - set(e["committee"]))
    selected = " ".join(_mark(label[p], p in attackers) for p in e["selected"])
    row = {"height": height, "hash": e["hash"], "accuracy": e["accuracy"],
           "round_seconds": max(x["round_seconds"] for x in events),
           "committee": [label[p] for p in e["committee"]],
           "selected": [label[p] for p in e["selected"]],
           "attackers_selected": sum(p in attackers for p in e["selected"]),
           "hashes_agree": len({x["hash"] for x in events}) == 1, "synced_peers": synced}
    fed = _federated(events)
    row["federated"] = fed
    acc = "-" if e.get("accuracy") is None else f"{e['accuracy']:.3f}"
    print(f"{height:>6}  {committee:<18} {selected + f' ({trainers})':<28} "
          f"{acc:>15} {row['round_seconds']:>8.2f}  "
          + " ".join(f"{k} {v['mean']:.3f}/{v['worst']:.3f}" for k, v in fed.items())
          + (f"  ({synced} peer{'s' if synced > 1 else ''} caught up by sync)" if synced else ""),
          flush=True)
    return row


def _federated(events: list[dict]) -> dict[str, dict[str, float]]:
    """Mean and worst (lowest) over peers of each metric they measured on their own held-out
    data (every metric of the built-in tasks is higher-is-better)."""
    names = sorted({k for e in events for k in (e.get("local_metrics") or {})})
    out = {}
    for k in names:
        vals = [e["local_metrics"][k] for e in events if k in (e.get("local_metrics") or {})]
        out[k] = {"mean": sum(vals) / len(vals), "worst": min(vals)}
    return out


def _mark(name: str, attacker: bool) -> str:
    return name + ("!" if attacker else "")


def _plot(results: list[NetworkResult], cfg: DemoConfig) -> Path | None:
    """accuracy.png: accuracy and round time per round, one curve per network run."""
    if not any(r.rows for r in results):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = {"main": (f"CMFL, {cfg.attackers} x {cfg.attack}" if cfg.attackers else "CMFL"),
             **COMPARISONS}
    for result, style in zip(results, ("o-", "s--")):
        heights = [r["height"] for r in result.rows]
        ax1.plot(heights, [r["accuracy"] for r in result.rows], style,
                 label=names[result.name])
        ax2.plot(heights, [r["round_seconds"] for r in result.rows], style,
                 label=names[result.name])
    ax1.axhline(0.1, color="grey", linestyle=":", label="chance")
    ax1.set(xlabel="round (block height)", ylabel="test accuracy of the global model",
            title=f"accuracy per round ({cfg.peers} peers)", ylim=(0, 1))
    ax1.legend(loc="lower right")
    ax2.set(xlabel="round (block height)", ylabel="seconds (slowest peer)",
            title="round time (round 0 includes mesh set-up)")
    ax2.set_ylim(bottom=0)
    if len(results) > 1:
        ax2.legend(loc="upper right")
    for ax in (ax1, ax2):
        ax.set_xticks(range(cfg.rounds))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = cfg.out / "accuracy.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
