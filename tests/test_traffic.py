"""The byte ledger behind a round's `bytes` event field and the cmfl_bytes metric."""

from p2p_node.metrics import NodeMetrics
from p2p_node.traffic import TrafficLedger


def test_round_counts_reset_and_totals_keep():
    ledger = TrafficLedger()
    ledger.add("gossip", "in", 100, "peer-aaaaaaaa")
    ledger.add("gossip", "in", 50, "peer-bbbbbbbb")
    ledger.add("gossip", "published", 30)
    ledger.add("blob", "in", 4000, "peer-aaaaaaaa")
    ledger.add("blob", "out", 2000, "peer-bbbbbbbb")
    first = ledger.take_round()
    assert first["in"] == 4150 and first["out"] == 2030
    assert first["by_peer"] == {"aaaaaaaa": {"gossip_in": 100, "blob_in": 4000},
                                "bbbbbbbb": {"gossip_in": 50, "blob_out": 2000}}
    ledger.add("gossip", "in", 7, "peer-aaaaaaaa")
    second = ledger.take_round()
    assert second["in"] == 7 and second["out"] == 0 and second["blob_in"] == 0
    assert ledger.total[("gossip", "in")] == 157


def test_metrics_count_bytes_from_committed_events():
    metrics = NodeMetrics()
    ledger = TrafficLedger()
    ledger.add("blob", "in", 4096, "p")
    ledger.add("gossip", "published", 10)
    event = {"event": "committed", "round_seconds": 1.0, "stages": {}, "bytes": ledger.take_round()}
    metrics.on_event(event)
    metrics.on_event(event)
    get = metrics.registry.get_sample_value
    assert get("cmfl_bytes_total", {"kind": "blob", "direction": "in"}) == 8192
    assert get("cmfl_bytes_total", {"kind": "gossip", "direction": "published"}) == 20
    assert get("cmfl_round_bytes", {"direction": "in"}) == 4096
