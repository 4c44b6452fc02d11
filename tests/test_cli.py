"""The `p2p-node` command as an operator meets it: every call is a real subprocess.

Fast checks (help, flags, config, data directory) need no network; one test runs two real peers
and drives `status`, `peers`, metrics, a second `run` on a busy data directory, and SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from p2p_node.cli import RUN_OPTIONS, build_parser
from p2p_node.control import ControlError, query
from p2p_node.demo import free_ports
from chain.genesis import SELECTION_PRESETS

#: the scored rule (an elected committee scores) these tests exercise; judged rounds, the
#: default, are tests/test_judged_round.py and tests/test_judged_net.py
SCORED = SELECTION_PRESETS["cmfl-clip-far"]

COMMANDS = [["init"], ["id"], ["genesis", "new"], ["run"], ["status"], ["peers"],
            ["chain", "show"], ["chain", "verify"], ["demo"]]


def cli(*args: str, cwd: Path, env: dict | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "p2p_node", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, no traceback, and the last stderr line is the error naming the problem."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "error:" in last, result.stderr
    for fragment in fragments:
        assert fragment in last, (fragment, last)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two initialised data directories, a and b, and g.json naming them (committee: a)."""
    from chain.genesis import Genesis

    root = tmp_path_factory.mktemp("cli")
    ids = []
    for name in ("a", "b"):
        result = cli("init", "--data-dir", name, cwd=root)
        assert result.returncode == 0, result.stderr
        ids.append(result.stdout.strip())
    # Built in-process: a `genesis new` subprocess would cost a torch import (seconds here).
    Genesis(name="cli-test", members=tuple(ids), committee=(ids[0],), seed=1,
            selection=SCORED).save(
        root / "g.json")
    return root


def test_every_command_has_help_that_lists_its_flags(tmp_path: Path) -> None:
    top = cli("--help", cwd=tmp_path)
    assert top.returncode == 0
    for command in ["init", "id", "genesis", "run", "status", "peers", "chain", "demo"]:
        assert f"    {command} " in top.stdout, command
    parser = build_parser()
    helps = {}
    for command in COMMANDS:
        result = cli(*command, "--help", cwd=tmp_path)
        helps[" ".join(command)] = result.stdout
        assert result.returncode == 0, command
        assert result.stdout.startswith(f"usage: p2p-node {' '.join(command)}"), command
        sub = parser._subparsers._group_actions[0].choices[command[0]]  # type: ignore[union-attr]
        if len(command) == 2:
            sub = sub._subparsers._group_actions[0].choices[command[1]]  # type: ignore
        for action in sub._actions:
            for flag in action.option_strings:
                assert flag in result.stdout, (command, flag)
    run_help = helps["run"]
    for option in RUN_OPTIONS.values():
        assert option.env in run_help.replace("\n", " ").replace("  ", ""), option.env
    assert "sign_flip" in run_help  # the attack names, read from learning.attacks


def test_init_writes_key_and_config_and_id_prints_it(tmp_path: Path) -> None:
    result = cli("init", "--data-dir", "p", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    peer_id = result.stdout.strip()
    assert peer_id.startswith("12D3KooW")
    assert (tmp_path / "p" / "identity.key").stat().st_mode & 0o077 == 0
    assert "# collect-timeout = 20.0" in (tmp_path / "p" / "config.toml").read_text()
    again = cli("init", "--data-dir", "p", cwd=tmp_path)
    assert again.stdout.strip() == peer_id and "kept the existing key" in again.stderr
    (tmp_path / "p" / "listen_addrs").write_text("/ip4/10.0.0.1/tcp/4001\n")
    shown = cli("id", "--data-dir", "p", cwd=tmp_path)
    assert shown.stdout.split() == [peer_id, f"/ip4/10.0.0.1/tcp/4001/p2p/{peer_id}"]


@pytest.mark.parametrize("args, fragments", [
    (["run", "--data-dir", "a", "--collect-timeout", "-1"], ["--collect-timeout"]),
    (["run", "--data-dir", "a", "--no-such-flag"], ["--no-such-flag"]),
    (["run", "--data-dir", "a", "--byzantine", "nope"], ["--byzantine", "equivocate"]),
    (["run", "--data-dir", "a", "--genesis", "g.json", "--listen", "not-an-addr"],
     ["bad multiaddr"]),
    (["run", "--data-dir", "a", "--genesis", "g.json", "--bootstrap", "/ip4/127.0.0.1/tcp/4001"],
     ["/p2p/"]),
    (["run", "--data-dir", "a"], ["genesis file not found: a/genesis.json"]),
    (["run", "--data-dir", "nowhere"], ["no identity in nowhere", "p2p-node init"]),
    (["status", "--data-dir", "a"], ["no running peer"]),
    (["chain", "show", "--data-dir", "a"], ["no chain in a"]),
    (["frobnicate"], ["invalid choice"]),
])
def test_bad_input_gives_one_line_error(net: Path, args: list[str], fragments: list[str]) -> None:
    assert_one_line_error(cli(*args, cwd=net), *fragments)


def test_missing_or_bad_genesis(net: Path) -> None:
    assert_one_line_error(cli("run", "--data-dir", "a", "--genesis", "none.json", cwd=net),
                          "genesis file not found: none.json")
    (net / "bad.json").write_text('{"name": "x", "members": ["nobody"]')
    assert_one_line_error(cli("run", "--data-dir", "a", "--genesis", "bad.json", cwd=net),
                          "not valid JSON")


def test_damaged_data_directory(net: Path, tmp_path: Path) -> None:
    assert cli("init", "--data-dir", str(tmp_path / "d"), cwd=net).returncode == 0
    (tmp_path / "d" / "chain.sqlite").write_bytes(os.urandom(4096))
    assert_one_line_error(cli("run", "--data-dir", str(tmp_path / "d"), "--genesis", "g.json",
                              cwd=net), "chain.sqlite is damaged")
    (tmp_path / "d" / "identity.key").write_text("not a key\n")
    assert_one_line_error(cli("run", "--data-dir", str(tmp_path / "d"), cwd=net),
                          "identity.key is damaged")


def test_port_in_use(net: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_one_line_error(cli("run", "--data-dir", "a", "--genesis", "g.json", "--listen",
                                  f"/ip4/127.0.0.1/tcp/{port}", cwd=net), "already in use")
        assert_one_line_error(cli("run", "--data-dir", "a", "--genesis", "g.json",
                                  "--metrics-port", str(port), cwd=net), "--metrics-port")


def test_config_file_and_environment(net: Path) -> None:
    (net / "bad.toml").write_text("collect-timeout = \n")
    assert_one_line_error(cli("run", "--data-dir", "a", "--config", "bad.toml", cwd=net),
                          "not valid TOML")
    (net / "unknown.toml").write_text("colect-timeout = 5\n")
    assert_one_line_error(cli("run", "--data-dir", "a", "--config", "unknown.toml", cwd=net),
                          "unknown setting 'colect-timeout'")
    # The file's listen address is taken; the environment's (which wins) is not valid.
    (net / "ok.toml").write_text('listen = ["/ip4/127.0.0.1/tcp/1"]\n')
    assert_one_line_error(cli("run", "--data-dir", "a", "--config", "ok.toml", "--genesis",
                              "g.json", cwd=net,
                              env={"P2P_NODE_LISTEN": "garbage"}), "bad multiaddr 'garbage'")
    assert_one_line_error(cli("run", "--data-dir", "a", cwd=net,
                              env={"P2P_NODE_START_WAIT": "soon"}), "P2P_NODE_START_WAIT")


def test_unreachable_bootstrap_peer_fails_after_start_wait(net: Path) -> None:
    (port,) = free_ports(1)
    b_id = cli("id", "--data-dir", "b", cwd=net).stdout.split()[0]
    result = cli("run", "--data-dir", "a", "--genesis", "g.json", "--start-wait", "1",
                 "--listen", "/ip4/127.0.0.1/tcp/0",
                 "--bootstrap", f"/ip4/127.0.0.1/tcp/{port}/p2p/{b_id}", cwd=net)
    assert_one_line_error(result, "no bootstrap peer reachable within --start-wait 1s")
    assert not (net / "a" / "control.sock").exists()


def _wait_for(predicate, timeout: float, what: str):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_peers_status_peers_metrics_and_clean_sigterm(net: Path) -> None:
    metrics_port, port_a = free_ports(2)
    a_id = cli("id", "--data-dir", "a", cwd=net).stdout.split()[0]
    common = ["--genesis", "g.json", "--collect-timeout", "5", "--propose-timeout", "2"]
    runs = [["--data-dir", "a", "--listen", f"/ip4/127.0.0.1/tcp/{port_a}", "--min-peers", "1",
             "--metrics-port", str(metrics_port)],
            ["--data-dir", "b", "--log-json",  # b retries until a is up
             "--bootstrap", f"/ip4/127.0.0.1/tcp/{port_a}/p2p/{a_id}"]]
    procs = [subprocess.Popen([sys.executable, "-m", "p2p_node", "run", *common, *run],
                              cwd=net, stderr=subprocess.PIPE, text=True) for run in runs]
    try:
        def status() -> dict | None:
            try:  # polled in-process; the CLI's own `status` is checked once below
                return query(net / "a", "status")
            except ControlError:
                return None

        s = _wait_for(lambda: (s := status()) and (s["height"] or -1) >= 1 and s, 120,
                      "two blocks")
        assert s["peers"] == 1 and s["role"] in ("leader", "committee", "trainer")
        assert set(s["mesh"]) == {"blocks", "committee", "membership", "updates"}
        assert s["head"] and s["round"] >= s["height"]
        human = cli("status", "--data-dir", "a", cwd=net).stdout
        assert f"peer:       {a_id}" in human and "rejections:" in human
        # Its own and the other peer's reports on a committed block: the federated spread.
        assert s["federated"]["height"] >= 0 and "accuracy" in s["federated"]["metrics"]
        assert "federated:  height " in human and "accuracy mean " in human

        peers = json.loads(cli("peers", "--data-dir", "b", "--json", cwd=net).stdout)
        assert [(p["peer"], p["member"]) for p in peers] == [(a_id, True)]
        assert peers[0]["topics"] == ["blocks", "committee", "membership", "updates"]
        assert a_id in cli("peers", "--data-dir", "b", cwd=net).stdout

        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
        for name in ("cmfl_chain_height", "cmfl_rounds_committed_total", "cmfl_peers 1.0",
                     "cmfl_round_seconds_bucket", 'cmfl_round_stage_seconds{stage="trained"}',
                     'cmfl_mesh_peers{topic="updates"}', "cmfl_model_accuracy",
                     'cmfl_federated_metric{metric="accuracy",stat="worst"}',
                     'cmfl_local_metric{metric="accuracy"}'):
            assert name in text, name

        # A second peer process on a's data directory would sign with a's key: refused.
        assert_one_line_error(cli("run", "--data-dir", "a", "--genesis", "g.json", cwd=net),
                              "another p2p-node is running with this data directory")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        outputs = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "received SIGTERM: stopping" in outputs[0]
    assert "stopped at height" in outputs[0].strip().splitlines()[-1]
    last_b = json.loads(outputs[1].strip().splitlines()[-1])  # --log-json: a JSON object a line
    assert last_b["level"] == "INFO" and last_b["msg"].startswith("stopped at height")
    assert not (net / "a" / "control.sock").exists()

    shown = [json.loads(cli("chain", "show", "--data-dir", d, "--json", cwd=net).stdout)
             for d in ("a", "b")]
    assert shown[0]["blocks"] >= 2
    # Each stopped between rounds or mid-round: their chains agree up to the shorter one.
    common_height = min(s["height"] for s in shown)
    hashes = [{b["height"]: b["hash"] for b in s["last_blocks"]} for s in shown]
    assert hashes[0][common_height] == hashes[1][common_height]


def test_the_demo_counts_a_block_stored_by_sync_as_held() -> None:
    """A peer that missed a round's block on gossip and stored it by sync holds it: the demo
    shows that round (it used to wait for a "committed" event that never comes)."""
    from p2p_node.demo import rounds_held

    def committed(peer: str, h: int) -> dict:
        return {"event": "committed", "peer": peer, "height": h, "hash": f"h{h}"}

    a = [committed("a", 0), committed("a", 1), committed("a", 2)]
    b = [committed("b", 0), {"event": "synced", "peer": "b", "height": 2, "from": 1,
                             "blocks": 2, "hash": "h2"}]
    c = [committed("c", 0), {"event": "synced", "peer": "c", "height": "x", "from": 1}]
    by_height, synced = rounds_held([a, b, c])
    assert sorted(by_height) == [0, 1, 2] and len(by_height[0]) == 3
    assert synced == {1: {"b"}, 2: {"b"}}  # a malformed synced event counts for nothing
