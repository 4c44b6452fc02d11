"""The pure cores stay pure through their imports: each is imported in a fresh interpreter and
must not have pulled in an event loop, the network stack, a disk store, or training and data
loading code (torch tensors are fine: the rules compute on them)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PURE = [
    "p2p_node.round_machine", "p2p_node.round_core", "p2p_node.future_messages",
    "chain.round_rules", "chain.verify", "chain.position", "chain.sync", "chain.block",
    "chain.membership", "chain.genesis",
    "bft.pbft", "bft.messages", "bft.quorum", "bft.byzantine",
    "gossip.validation", "gossip.envelope", "gossip.cbor_profile", "gossip.peer_record",
    "gossip.blob_ref", "gossip.sealing",
    "learning.scoring", "learning.selection", "learning.election", "learning.aggregation",
    "learning.tensors", "learning.compression", "learning.dp_accounting", "learning.dp_noise", "learning.cmfl",
    "learning.choice",
]
#: What a pure core must not load: I/O (trio, libp2p, sqlite, the blob stream protocol, the
#: block store) and training or data loading (sklearn, DP-SGD, local training, the data sets).
FORBIDDEN = [
    "trio", "libp2p", "sqlite3", "gossip.transfer", "chain.store",
    "sklearn", "learning.data", "learning.training", "learning.privacy", "learning.attacks",
    "learning.simulation",
]


#: One interpreter imports torch and numpy (allowed, and the slow part), then forks a child per
#: core that imports it and reports which forbidden modules it holds: what a fresh interpreter
#: would see (a forbidden module pulled in by torch itself would show in every child), at a
#: thirtieth of the cost of thirty interpreters.
PROBE = """
import json, os, sys
import numpy, torch
forbidden, out = FORBIDDEN, {}
for module in PURE:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            __import__(module)
            found = [m for m in forbidden if m in sys.modules]
        except BaseException as exc:
            found = [f"import failed: {exc!r}"]
        os.write(write, json.dumps(found).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        out[module] = json.loads(pipe.read() or b'["no answer"]')
    os.waitpid(pid, 0)
print(json.dumps(out))
"""


def probe(modules: list[str]) -> dict[str, list[str]]:
    """Which FORBIDDEN modules each of `modules` pulls in, by PROBE."""
    code = f"FORBIDDEN = {FORBIDDEN!r}\nPURE = {modules!r}\n" + PROBE
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def imported():
    return probe(PURE)


@pytest.mark.parametrize("module", PURE)
def test_a_pure_core_imports_no_io_training_or_data_loading(module, imported):
    assert imported[module] == [], f"{module} imports {' '.join(imported[module])}"


def test_the_probe_sees_a_forbidden_import():
    """The fork probe can fail: a module that imports trio is reported."""
    assert "trio" in probe(["p2p_node.host"])["p2p_node.host"]
