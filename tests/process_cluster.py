"""Real `p2p-node run` processes on loopback, watched through the files they write.

A peer process talks to a test only through its data directory: `events.jsonl` (one line per
round, commit and sync, written after the store commit), `node.log`, and its control socket.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from p2p_node.control import ControlError, query
from p2p_node.demo import free_ports
from tests.cluster import Cluster


def read_events(data_dir: Path) -> list[dict]:
    """The events a peer wrote; a line torn by a kill is not an event."""
    try:
        lines = (data_dir / "events.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def held_height(data_dir: Path) -> int:
    """The highest block a peer acknowledged (committed or synced), -1 for none."""
    return max((e["height"] for e in read_events(data_dir)
                if e["event"] in ("committed", "synced")), default=-1)


def held_hashes(data_dir: Path) -> dict[int, str]:
    """Height -> block hash of every block a peer acknowledged."""
    return {e["height"]: e["hash"] for e in read_events(data_dir)
            if e["event"] in ("committed", "synced") and "hash" in e}


def rss_bytes(pid: int) -> int:
    """Resident memory of a live process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class ProcessCluster:
    """`p2p-node run` processes of a Cluster's members on loopback, each bootstrapping from all
    the others. `run_args` are extra `p2p-node run` flags for every peer."""

    def __init__(self, root: Path, size: int = 6, committee_size: int = 4,
                 run_args: tuple[str, ...] = ("--collect-timeout", "3", "--propose-timeout", "2",
                                              "--view-timeout", "8", "--start-wait", "30",
                                              "--min-peers", "3")) -> None:
        self.cluster = Cluster(root, size=size, committee_size=committee_size)
        self.size = size
        ports = free_ports(size)
        self.listen = [f"/ip4/127.0.0.1/tcp/{p}" for p in ports]
        self.addrs = [f"{a}/p2p/{pid}" for a, pid in zip(self.listen, self.cluster.ids)]
        self.run_args = run_args
        self.procs: dict[int, subprocess.Popen] = {}
        #: the peers each one bootstraps from (default: all the others)
        self.bootstrap_from = set(range(size))

    @property
    def dirs(self) -> list[Path]:
        return self.cluster.dirs

    def start(self, i: int) -> None:
        d = self.cluster.dirs[i]
        bootstrap = [x for j, a in enumerate(self.addrs) if j != i and j in self.bootstrap_from
                     for x in ("--bootstrap", a)]
        args = [sys.executable, "-m", "p2p_node", "--log-level", "INFO", "run",
                "--data-dir", str(d), "--genesis", str(self.cluster.root / "genesis.json"),
                "--listen", self.listen[i], *bootstrap, *self.run_args]
        with open(d / "node.log", "ab") as log:
            self.procs[i] = subprocess.Popen(["nice", *args], stdout=log,
                                             stderr=subprocess.STDOUT)

    def start_all(self) -> None:
        for i in range(self.size):
            self.start(i)

    def kill9(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait()

    def dead(self) -> dict[int, int | None]:
        """Peers whose process ended, and how (return code)."""
        return {i: p.returncode for i, p in self.procs.items() if p.poll() is not None}

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def network_height(self) -> int:
        return max(held_height(d) for d in self.cluster.dirs)

    def heights(self) -> list[int]:
        """Each started peer's acknowledged height, in start order of index."""
        return [held_height(self.cluster.dirs[i]) for i in sorted(self.procs)]

    def status(self, i: int) -> dict | None:
        """The running peer's `p2p-node status` answer, None if it does not answer."""
        try:
            return query(self.cluster.dirs[i], "status", timeout=20)
        except ControlError:
            return None

    def log_tail(self, i: int, lines: int = 30) -> str:
        try:
            text = (self.cluster.dirs[i] / "node.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = 150.0,
                   allow_sigkill: bool = True) -> None:
        """Poll the peers' event files (the processes' only channel to us) until `condition`;
        fails at once if a peer process ended on its own."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what} (heights {self.heights()})")
            for i, proc in self.procs.items():
                ok = proc.poll() is None or (allow_sigkill and proc.returncode == -signal.SIGKILL)
                assert ok, (f"peer {i} exited with {proc.returncode}:\n{self.log_tail(i)}")
            time.sleep(0.2)
