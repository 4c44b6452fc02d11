"""docs/protocol.md documents every message kind, topic and stream protocol our peers use."""

from __future__ import annotations

import re
from pathlib import Path

from bft.messages import KINDS as PBFT_KINDS
from chain.sync import PROTOCOL_ID as SYNC_ID
from gossip.envelope import _DOMAIN, KINDS, MAX_ENVELOPE_BYTES
from gossip.transfer import PROTOCOL_ID as BLOB_ID
from p2p_node.discovery import PROTOCOL_ID as PEERS_ID
from p2p_node.round_core import TOPIC_KINDS

DOC = (Path(__file__).parents[1] / "docs" / "protocol.md").read_text()


def test_every_kind_in_the_code_is_documented_with_its_payload():
    kinds = set(KINDS) | set(PBFT_KINDS) | {k for ks in TOPIC_KINDS.values() for k in ks}
    assert kinds == set(KINDS)
    for kind in kinds:
        assert re.search(rf"^### `{kind}`|^\| `{kind}` \| `\{{", DOC, re.M), \
            f"kind {kind} has no section or payload row in docs/protocol.md"


def test_topic_table_matches_the_code():
    for topic, kinds in TOPIC_KINDS.items():
        row = re.search(rf"^\| `{topic}` \| (.*?) \|", DOC, re.M)
        assert row, f"topic {topic} missing"
        assert set(re.findall(r"`(\w+)`", row.group(1))) == set(kinds), topic


def test_constants_are_the_documented_ones():
    for text in (_DOMAIN, SYNC_ID, BLOB_ID, PEERS_ID, f"{MAX_ENVELOPE_BYTES:,}", "/meshsub/1.1.0",
                 "cmfl-p2p/peer-record/1"):
        assert text in DOC, text
