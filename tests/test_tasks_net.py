"""Tasks on real peers: the worked example of docs/tasks.md run as written (a task file outside
the package, a CSV per peer, three `p2p-node run` processes), and the built-in `cnn` and `credit`
tasks on in-process libp2p hosts over loopback TCP."""

from __future__ import annotations

import pytest
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import torch
import trio

from chain.verify import verify_store
from learning.task import load_task
from learning.tensors import state_from_bytes
from p2p_node.control import NodeStatus, federated_text
from p2p_node.demo import free_ports
from p2p_node.metrics import NodeMetrics
from tests.cluster import Cluster, EventLog
from tests.process_cluster import read_events

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "tasks.md"
EXAMPLE_TASK = ROOT / "docs" / "examples" / "tumour_task.py"
EXAMPLE_PEERS = ("alice", "bob", "carol")


def worked_example() -> tuple[str, str]:
    """The worked example's Python block (the task file) and shell block, from the doc."""
    text = DOC.read_text()
    section = text.split("## Worked example", 1)[1].split("\n## ", 1)[0]
    python = re.search(r"```python\n(.*?)```", section, re.S)
    shell = re.search(r"```sh\n(.*?)```", section, re.S)
    assert python and shell, "the worked example lost its python or sh block"
    return python.group(1), shell.group(1)


def test_worked_example_task_file_is_the_one_in_the_doc():
    task, shell = worked_example()
    assert task == EXAMPLE_TASK.read_text()
    assert "--task docs/examples/tumour_task.py" in shell


@pytest.mark.slow  # ~20-90 s of peer processes; its doc text is checked in the default tier
def test_worked_example_runs_as_written_on_three_peer_processes(tmp_path):
    _, script = worked_example()
    ports = free_ports(3)
    for doc_port, port in zip(("4001", "4002", "4003"), ports):  # ports aside, as written
        assert f"tcp/{doc_port}" in script
        script = script.replace(f"tcp/{doc_port}", f"tcp/{port}")
    # `p2p-node` and `python` as a user's PATH would give them after scripts/setup-env.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, args in (("p2p-node", "-m p2p_node"), ("python", "")):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec nice {sys.executable} {args} "$@"\n')
        shim.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    (work / "docs").symlink_to(ROOT / "docs")  # "from the repository root"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    out = tmp_path / "out.log"
    with open(out, "wb") as log:
        proc = subprocess.Popen(["bash", "-euc", script], cwd=work, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f"the worked example did not finish:\n{_tail(out)}") from None
    output = out.read_text(errors="replace")
    assert code == 0, f"the worked example failed ({code}):\n{_tail(out)}"
    assert "chain ok" in output.lower() or "verified" in output.lower(), _tail(out)

    events = {p: read_events(work / p) for p in EXAMPLE_PEERS}
    ids = {e["peer"] for evs in events.values() for e in evs}
    assert len(ids) == 3
    for height in (0, 1, 2):
        hashes = {e["hash"] for evs in events.values() for e in evs
                  if e["event"] == "committed" and e["height"] == height}
        assert len(hashes) == 1, f"height {height}: peers hold {len(hashes)} blocks"
    for peer, evs in events.items():
        committed = [e for e in evs if e["event"] == "committed"]
        assert [e["height"] for e in committed] == [0, 1, 2], peer
        # Its own CSV's held-out quarter: the task's named metrics, no global test split.
        assert all(set(e["local_metrics"]) == {"auc", "ks", "accuracy"} for e in committed)
        assert all(e["global_test"] is None and e["accuracy"] is None for e in committed)
        assert "own rows from alice.csv" in output or peer != "alice"
        # Every peer gathered the other peers' signed reports of the last block.
        last = [e for e in evs if e["event"] == "federated_metrics" and e["height"] == 2]
        assert last and max(e["peers"] for e in last) == 3, (peer, last)
        summary = max(last, key=lambda e: e["peers"])
        assert summary["other_block"] == 0
        assert set(summary["mean"]) == {"auc", "ks", "accuracy"}
        assert summary["worst"]["auc"]["peer"] in ids
        assert 0.5 < summary["mean"]["auc"] <= 1.0


def _tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# built-in tasks on in-process peers -------------------------------------------------------------
def run_builtin_task(tmp_path: Path, task_name: str, rounds: int = 3) -> tuple[list, EventLog]:
    """Five real peers (libp2p hosts on loopback TCP, a committee of 3) training a built-in
    task on its bundled data for `rounds` blocks; checks that they agree and verify."""
    task = load_task(task_name)
    cluster = Cluster(tmp_path, size=5, committee_size=3,
                      genesis_fields={"task": task.pin(), "model": dict(task.settings)})
    log = EventLog()
    everyone = set(cluster.ids)

    async def main() -> list:
        with trio.fail_after(180):
            async with trio.open_nursery() as nursery:  # the peers stop after `rounds` blocks
                return await cluster.run(rounds=rounds, log=log, nursery=nursery)

    nodes = trio.run(main)
    for height in range(rounds):
        assert log.peers_at("committed", height) == everyone
        hashes = {e["hash"] for e in log.events
                  if e["event"] == "committed" and e["height"] == height}
        assert len(hashes) == 1, f"height {height}: peers committed {len(hashes)} blocks"
    for node in nodes:
        assert type(node.task) is type(task)
        report = verify_store(cluster.genesis, node.store, node.models)
        assert report.ok and report.blocks == rounds, report.summary()
    return nodes, log


def spread_of(log: EventLog, height: int) -> dict[str, dict]:
    """Each peer's latest federated_metrics summary of `height`."""
    latest: dict[str, dict] = {}
    for e in log.events:
        if e["event"] == "federated_metrics" and e["height"] == height:
            latest[e["peer"]] = e
    return latest


def check_spread(log: EventLog, everyone: set[str], rounds: int, names: set[str]) -> None:
    """Every peer reported on every block: a block before the last one has, at every peer,
    the reports of all five (the last one's may still be on the way when peers stop)."""
    for height in range(rounds - 1):
        spread = spread_of(log, height)
        assert set(spread) == everyone, f"height {height}: no summary at some peer"
        for e in spread.values():
            assert e["peers"] == len(everyone) and e["other_block"] == 0, e
            assert set(e["mean"]) == names and set(e["worst"]) == names
            for k in names:
                assert e["worst"][k]["peer"] in everyone
                assert e["worst"][k]["value"] <= e["mean"][k] + 1e-12
    assert spread_of(log, rounds - 1), "no summary of the last block"


def test_cnn_task_commits_on_real_peers_with_batch_norm_state(tmp_path):
    nodes, log = run_builtin_task(tmp_path, "cnn")
    everyone = {n.me for n in nodes}
    check_spread(log, everyone, 3, {"accuracy"})
    committed = [e for e in log.events if e["event"] == "committed"]
    assert all(set(e["global_test"]) == {"accuracy"} for e in committed)  # labelled apart
    # Batch norm's buffers are in every committed model; its counter stays at the initial
    # value (learning.task.keep_counters), the running statistics are learned.
    base = nodes[0].task.initial_state(nodes[0].genesis.seed)
    head = state_from_bytes(nodes[0].models.get(nodes[0].store.get(2).block.model_hash))
    counters = [k for k in head if k.endswith("num_batches_tracked")]
    assert counters and all(torch.equal(head[k], base[k]) for k in counters)
    assert any(k.endswith("running_var") for k in head)


def test_credit_task_commits_on_real_peers_and_reports_auc_ks(tmp_path):
    nodes, log = run_builtin_task(tmp_path, "credit")
    everyone = {n.me for n in nodes}
    check_spread(log, everyone, 3, {"auc", "ks", "accuracy"})
    committed = [e for e in log.events if e["event"] == "committed"]
    # Each peer's own held-out metrics, and the demo's global test split labelled apart.
    assert all(set(e["local_metrics"]) == {"auc", "ks", "accuracy"} for e in committed)
    assert all(set(e["global_test"]) == {"auc", "ks", "accuracy"} for e in committed)
    assert all(0.5 < e["global_test"]["auc"] <= 1.0 for e in committed if e["height"] == 2)
    # What `p2p-node status` and Prometheus show, fed each peer's events as `run` feeds them.
    for peer in everyone:
        status, metrics = NodeStatus(), NodeMetrics()
        for e in log.events:
            if e["peer"] == peer:
                status.on_event(e)
                metrics.on_event(e)
        spread = status.federated
        assert spread is not None and spread["height"] >= 1, spread
        sample = metrics.registry.get_sample_value
        assert sample("cmfl_federated_height") == spread["height"]
        assert sample("cmfl_federated_peers") == spread["peers"]
        for name in ("auc", "ks"):
            m = spread["metrics"][name]
            assert m["worst_peer"] in everyone and 0.0 <= m["worst"] <= m["mean"] <= 1.0
            for stat in ("mean", "weighted_mean", "worst"):
                assert sample("cmfl_federated_metric", {"metric": name, "stat": stat}) == m[stat]
            assert f"{name} mean {m['mean']:.3f} worst {m['worst']:.3f}" in federated_text(spread)
            assert sample("cmfl_local_metric", {"metric": name}) == \
                status.last_commit["local_metrics"][name]
