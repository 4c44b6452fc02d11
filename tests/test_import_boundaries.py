"""The pure cores stay pure through their imports: each is imported in a fresh interpreter and
must not have pulled in an event loop, the network stack, a disk store, or training and data
loading code (torch tensors are fine: the rules compute on them)."""

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


@pytest.mark.parametrize("module", PURE)
def test_a_pure_core_imports_no_io_training_or_data_loading(module):
    probe = (f"import sys, {module}; forbidden = {FORBIDDEN!r}; "
             "print(' '.join(m for m in forbidden if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, check=True, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert out.stdout.split() == [], f"{module} imports {out.stdout.strip()}"
