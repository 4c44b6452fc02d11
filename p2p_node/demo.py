"""`p2p-node demo`: a local network of real peer processes on loopback, some of them malicious.

It creates a key per peer, writes a genesis naming them, starts one `p2p-node run` process per
peer, prints each committed round as it happens, checks at the end that every peer holds the same
chain, and writes a summary and plots to the output folder.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from chain.genesis import Genesis
from p2p_node.identity import load_or_create_identity
from p2p_node.node import chain_summary


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
    if cfg.attackers >= cfg.peers - cfg.committee_size:
        print("demo: need more honest trainers than attackers", file=sys.stderr)
        return 2
    if cfg.out.exists():
        shutil.rmtree(cfg.out)
    cfg.out.mkdir(parents=True)
    dirs = [cfg.out / f"peer-{i}" for i in range(cfg.peers)]
    ids = [load_or_create_identity(d).peer_id for d in dirs]
    label = {pid: f"p{i}" for i, pid in enumerate(ids)}
    # Attackers are the last peers: trainers in round 0 (the committee is the first peers).
    attackers = set(ids[cfg.peers - cfg.attackers:])
    genesis = Genesis(name="demo", members=tuple(ids), committee=tuple(ids[:cfg.committee_size]),
                      seed=cfg.seed,
                      data={"dataset": "digits", "partition": cfg.partition, "alpha": 0.5,
                            "test_fraction": 0.2})
    genesis.save(cfg.out / "genesis.json")
    ports = free_ports(cfg.peers)
    addrs = [f"/ip4/127.0.0.1/tcp/{p}/p2p/{pid}" for p, pid in zip(ports, ids)]

    print(f"demo: {cfg.peers} peers ({cfg.attackers} attacking with {cfg.attack}: "
          f"{', '.join(label[a] for a in sorted(attackers, key=ids.index))}), "
          f"committee of {cfg.committee_size}, {cfg.rounds} rounds, digits ({cfg.partition})")
    print(f"demo: network id {genesis.network_id.hex()[:16]}, output in {cfg.out}/")
    procs = []
    for i, d in enumerate(dirs):
        cmd = [sys.executable, "-m", "p2p_node", "run", "--data-dir", str(d),
               "--genesis", str(cfg.out / "genesis.json"), "--listen", addrs[i].split("/p2p/")[0],
               "--rounds", str(cfg.rounds), "--start-wait", "120",
               "--min-peers", str(cfg.peers - 1)]
        for j in range(i):  # each pair connects once: the later peer dials the earlier one
            cmd += ["--bootstrap", addrs[j]]
        if ids[i] in attackers:
            cmd += ["--attack", cfg.attack]
            cmd += [a for other in sorted(attackers - {ids[i]}) for a in ("--colluder", other)]
        log = open(d / "node.log", "w")
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))

    print(f"{'height':>6}  {'committee':<18} {'selected (of trainers)':<28} {'accuracy':>8} "
          f"{'round s':>8}")
    shown = 0
    rows: list[dict] = []
    started = time.monotonic()
    last_progress = started
    try:
        while shown < cfg.rounds:
            by_height: dict[int, list[dict]] = {}
            for d in dirs:
                for e in _read_events(d / "events.jsonl"):
                    if e.get("event") == "committed":
                        by_height.setdefault(e["height"], []).append(e)
            while shown in by_height and len(by_height[shown]) == cfg.peers:
                events = by_height[shown]
                e = events[0]
                committee = " ".join(_mark(label[p], p in attackers) for p in e["committee"])
                trainers = len(set(ids) - set(e["committee"]))
                selected = " ".join(_mark(label[p], p in attackers) for p in e["selected"])
                row = {"height": shown, "hash": e["hash"],
                       "accuracy": e["accuracy"],
                       "round_seconds": max(x["round_seconds"] for x in events),
                       "committee": [label[p] for p in e["committee"]],
                       "selected": [label[p] for p in e["selected"]],
                       "attackers_selected": sum(p in attackers for p in e["selected"]),
                       "hashes_agree": len({x["hash"] for x in events}) == 1}
                rows.append(row)
                print(f"{shown:>6}  {committee:<18} {selected + f' ({trainers})':<28} "
                      f"{e['accuracy']:>8.3f} {row['round_seconds']:>8.2f}", flush=True)
                shown += 1
                last_progress = time.monotonic()
            if all(p.poll() is not None for p in procs) and shown < cfg.rounds:
                break
            if time.monotonic() - last_progress > cfg.round_timeout + 120 * (shown == 0):
                print(f"demo: no progress for {cfg.round_timeout:.0f}s; stopping",
                      file=sys.stderr)
                break
            time.sleep(0.3)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.terminate()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()

    chains = [chain_summary(d) for d in dirs]
    heads = {c["head"] for c in chains}
    same = len(heads) == 1 and chains[0]["blocks"] == cfg.rounds
    elapsed = time.monotonic() - started
    final = rows[-1]["accuracy"] if rows else None
    summary = {"peers": cfg.peers, "attackers": cfg.attackers, "attack": cfg.attack,
               "rounds": cfg.rounds, "committed": len(rows), "final_accuracy": final,
               "chains_equal": same, "head": chains[0]["head"], "seconds": round(elapsed, 1),
               "rounds_detail": rows,
               "peer_exit_codes": [p.returncode for p in procs]}
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _plot(rows, cfg)
    print(f"demo: {len(rows)}/{cfg.rounds} rounds committed in {elapsed:.0f}s; final accuracy "
          f"{final} (chance is 0.10); attackers' updates selected "
          f"{sum(r['attackers_selected'] for r in rows)} times")
    print(f"demo: every peer holds the same chain: {same} "
          f"(head {(chains[0]['head'] or '')[:16]}, {chains[0]['blocks']} blocks)")
    print(f"demo: summary in {cfg.out / 'summary.json'}, plot in {cfg.out / 'accuracy.png'}, "
          f"peer logs in {cfg.out}/peer-*/node.log")
    ok = same and len(rows) == cfg.rounds and all(p.returncode == 0 for p in procs)
    return 0 if ok else 1


def _mark(name: str, attacker: bool) -> str:
    return name + ("!" if attacker else "")


def _plot(rows: list[dict], cfg: DemoConfig) -> None:
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    heights = [r["height"] for r in rows]
    ax1.plot(heights, [r["accuracy"] for r in rows], marker="o")
    ax1.axhline(0.1, color="grey", linestyle=":", label="chance")
    ax1.set(xlabel="round (block height)", ylabel="test accuracy of the global model",
            title=f"{cfg.peers} peers, {cfg.attackers} x {cfg.attack}", ylim=(0, 1))
    ax1.legend()
    ax2.bar(heights, [r["round_seconds"] for r in rows])
    ax2.set(xlabel="round (block height)", ylabel="seconds", title="round time")
    fig.tight_layout()
    fig.savefig(cfg.out / "accuracy.png", dpi=100)
    plt.close(fig)
