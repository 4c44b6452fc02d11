"""Peers on separate hosts for real: one `p2p-node run` process per network namespace.

Each namespace has its own IP on a bridge (scripts/netns-lab). Every peer is given only peer 1's
address (peer 1 none at all) and finds the rest by peer exchange; the namespaces run mDNS too.
Mid-run one peer's link is cut and restored; all peers must still finish with equal chains.
Needs root and iproute2: skips, saying why, without root (or with CMFL_TEST_NO_NETNS=1); as
root it fails where a namespace cannot be made, so a broken lab cannot pass unnoticed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chain.genesis import Genesis
from p2p_node.identity import load_or_create_identity
from p2p_node.node import chain_summary
from chain.genesis import SELECTION_PRESETS

#: the scored rule (an elected committee scores) these tests exercise; judged rounds, the
#: default, are tests/test_judged_round.py and tests/test_judged_net.py
SCORED = SELECTION_PRESETS["cmfl-clip-far"]

LAB = Path(__file__).resolve().parent.parent / "scripts" / "netns-lab"
PEERS = 5
ROUNDS = 3
PORT = 4001


#: Set to 1 to run the suite as root where namespaces cannot be made (a container without
#: CAP_NET_ADMIN): the test then skips, saying so, instead of failing.
OPT_OUT = "CMFL_TEST_NO_NETNS"


def _namespaces_unavailable() -> str | None:
    """Why this machine cannot run the test (None: it can). Only a peer without root, or an
    explicit opt-out, may skip it: as root, a namespace that cannot be made fails the test."""
    if os.environ.get(OPT_OUT) == "1":
        return f"{OPT_OUT}=1"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    if shutil.which("ip") is None:
        pytest.fail(f"running as root but iproute2 (`ip`) is not installed "
                    f"(install it, or set {OPT_OUT}=1 to skip this test)")
    probe = f"cmflprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.fail(f"running as root but cannot create a network namespace: "
                    f"{made.stderr.strip()} (set {OPT_OUT}=1 to skip this test)")
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _events(d: Path) -> list[dict]:
    path = d / "events.jsonl"
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line being written right now
    return out


def _committed(d: Path) -> set[int]:
    return {e["height"] for e in _events(d) if e.get("event") == "committed"}


def _wait(predicate, timeout: float, procs, what: str) -> None:
    """Poll the peers' event files (separate processes: no in-process event to wait on)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        dead = [p.args[3] for p in procs if p.poll() not in (None, 0)]
        if dead:
            raise AssertionError(f"peer process failed in {dead} while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.25)


def test_peers_in_separate_namespaces_discover_train_survive_a_link_cut_and_agree(tmp_path):
    reason = _namespaces_unavailable()
    if reason:
        pytest.skip(f"namespace test skipped: {reason}")
    name = f"cf{os.getpid() % 10000}"  # interface names must fit in 15 characters
    subnet = f"10.213.{os.getpid() % 250}"
    dirs = [tmp_path / f"peer-{i}" for i in range(1, PEERS + 1)]
    ids = [load_or_create_identity(d).peer_id for d in dirs]
    Genesis(name="netns", members=tuple(ids), committee=tuple(ids[:4]), seed=3,
            selection=SCORED).save(tmp_path / "genesis.json")
    first = f"/ip4/{subnet}.1/tcp/{PORT}/p2p/{ids[0]}"
    procs: list[subprocess.Popen] = []
    subprocess.run([str(LAB), "down", name, str(PEERS)], capture_output=True)
    subprocess.run([str(LAB), "up", name, str(PEERS), subnet], check=True, capture_output=True)
    try:
        for i, d in enumerate(dirs, start=1):
            cmd = ["ip", "netns", "exec", f"{name}-{i}", "nice", "-n", "5", sys.executable,
                   "-m", "p2p_node", "run", "--data-dir", str(d),
                   "--genesis", str(tmp_path / "genesis.json"),
                   "--listen", f"/ip4/{subnet}.{i}/tcp/{PORT}", "--rounds", str(ROUNDS),
                   "--min-peers", str(PEERS - 1), "--start-wait", "90", "--mdns", "on",
                   "--collect-timeout", "5"]
            if i > 1:
                cmd += ["--bootstrap", first]
            log = open(d / "node.log", "w")
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                          cwd=LAB.parent.parent))

        _wait(lambda: all(0 in _committed(d) for d in dirs), 150, procs, "round 0 everywhere")
        # Cut the last peer's link for a few seconds, then restore it.
        subprocess.run([str(LAB), "cut", name, str(PEERS)], check=True)
        time.sleep(3)  # the outage itself: a duration, not a synchronisation
        subprocess.run([str(LAB), "heal", name, str(PEERS)], check=True)
        _wait(lambda: all(ROUNDS - 1 in _committed(d) for d in dirs), 150, procs,
              f"round {ROUNDS - 1} everywhere")
        for p in procs:
            p.wait(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        subprocess.run([str(LAB), "down", name, str(PEERS)], capture_output=True)

    chains = [chain_summary(d) for d in dirs]
    assert len({c["head"] for c in chains}) == 1 and chains[0]["blocks"] == ROUNDS, chains
    # Nobody was told more than peer 1's address, yet everyone met everyone.
    logs = [(d / "node.log").read_text() for d in dirs]
    assert all(p.returncode == 0 for p in procs), [log[-2000:] for log in logs]
