"""Prometheus metrics of a running peer, served over HTTP on an opt-in port (`--metrics-port`).

Two sources feed them: the node's events (a committed round: its time by stage, accuracy) and a
snapshot of its state (height, peers, mesh, rejections) that the trio thread refreshes every
second. The HTTP server runs in prometheus_client's own thread, so it only ever reads that
snapshot, never the node (whose SQLite handle and dicts belong to the trio thread).
"""

from __future__ import annotations

import math
from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from p2p_node.traffic import KINDS as TRAFFIC_KINDS

#: Round-time buckets in seconds: a loopback round takes ~3 s, a stalled one hits timeouts.
ROUND_BUCKETS = (0.5, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89)


class _SnapshotCollector:
    """Exposes the latest state snapshot (a dict from control.NodeStatus.snapshot)."""

    def __init__(self) -> None:
        self.snapshot: dict[str, Any] = {}

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        if not s:
            return
        yield _gauge("cmfl_chain_height", "height of the newest committed block (-1: none)",
                     -1 if s["height"] is None else s["height"])
        yield _gauge("cmfl_chain_blocks", "blocks in the local chain", s["blocks"])
        yield _gauge("cmfl_round", "round (height) the peer is working on",
                     -1 if s["round"] is None else s["round"])
        yield _gauge("cmfl_peers", "connected libp2p peers", s["peers"])
        mesh = GaugeMetricFamily("cmfl_mesh_peers", "gossipsub mesh peers per topic",
                                 labels=["topic"])
        for topic, size in s["mesh"].items():
            mesh.add_metric([topic], size)
        yield mesh
        rejected = CounterMetricFamily(
            "cmfl_rejected_messages", "messages refused, by reason (gossip admission codes; "
            "invalid-KIND: refused by the round rules)", labels=["reason"])
        for reason, count in s["rejections"].items():
            rejected.add_metric([reason], count)
        yield rejected
        yield _gauge("cmfl_evidence_held", "equivocation proofs this peer holds",
                     s["evidence_held"])


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class NodeMetrics:
    """The peer's metrics in their own registry (nothing process-global is exported)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._snapshot = _SnapshotCollector()
        self.registry.register(self._snapshot)
        self.rounds = Counter("cmfl_rounds_committed", "rounds this peer committed",
                              registry=self.registry)
        self.round_seconds = Histogram("cmfl_round_seconds", "time from round start to commit",
                                       buckets=ROUND_BUCKETS, registry=self.registry)
        self.stage_seconds = Gauge(
            "cmfl_round_stage_seconds", "last committed round: seconds since its start when "
            "each stage ended (trained, collected, proposed, committed) and durations "
            "(train_seconds, score_seconds, store_seconds)", ["stage"], registry=self.registry)
        self.accuracy = Gauge("cmfl_model_accuracy",
                              "test accuracy of the last committed model on this peer's test set",
                              registry=self.registry)
        self.local_metric = Gauge(
            "cmfl_local_metric", "last committed model: this peer's metrics on its own held-out "
            "data, by name (accuracy, auc, ks, ...; the task's)", ["metric"],
            registry=self.registry)
        self.federated_metric = Gauge(
            "cmfl_federated_metric", "newest block reported: every reporting peer's metric on "
            "its own held-out data, as mean, weighted_mean (by held-out samples) and worst (the "
            "worst peer's value)", ["metric", "stat"], registry=self.registry)
        self.federated_height = Gauge("cmfl_federated_height", "height of the block "
                                      "cmfl_federated_metric describes (-1: none yet)",
                                      registry=self.registry)
        self.federated_height.set(-1)
        self._federated_at = -1
        self.federated_peers = Gauge("cmfl_federated_peers", "peers whose reports on that "
                                     "block agree on its hash", registry=self.registry)
        self.evidence = Counter("cmfl_equivocations_seen", "equivocations this peer detected",
                                registry=self.registry)
        self.bytes = Counter(
            "cmfl_bytes", "payload bytes moved, by kind (gossip, blob) and direction (in; "
            "published: handed to gossipsub once, before its fan-out; out: blob bytes served); "
            "framing and encryption not included", ["kind", "direction"],
            registry=self.registry)
        self.round_bytes = Gauge("cmfl_round_bytes", "last committed round: payload bytes "
                                 "in and out", ["direction"], registry=self.registry)
        self.epsilon_total = Gauge("cmfl_dp_epsilon_total", "privacy this peer has spent in "
                                   "total (DP-SGD epsilon at the genesis delta; DP networks only)",
                                   registry=self.registry)
        self.epsilon_round = Gauge("cmfl_dp_epsilon_round", "privacy this peer spent training "
                                   "the last committed round (0 if it did not train)",
                                   registry=self.registry)

    def on_event(self, event: dict) -> None:
        """Feed every `Node.on_event` event here."""
        if event["event"] == "committed":
            self.rounds.inc()
            self.round_seconds.observe(event["round_seconds"])
            for stage, seconds in event.get("stages", {}).items():
                self.stage_seconds.labels(stage).set(seconds)
            moved = event.get("bytes")
            if moved:
                for kind, direction in TRAFFIC_KINDS:
                    self.bytes.labels(kind, direction).inc(moved[f"{kind}_{direction}"])
                self.round_bytes.labels("in").set(moved["in"])
                self.round_bytes.labels("out").set(moved["out"])
            if event.get("accuracy") is not None:
                self.accuracy.set(event["accuracy"])
            if "dp" in event:
                self.epsilon_total.set(event["dp"]["epsilon_total"])
                self.epsilon_round.set(event["dp"]["epsilon_round"])
            if "local_metrics" in event:
                self.local_metric.clear()  # a metric the new model lacks (NaN AUC) goes
                for name, value in event["local_metrics"].items():
                    if math.isfinite(value):
                        self.local_metric.labels(name).set(value)
        elif event["event"] == "federated_metrics":
            self._on_federated(event)
        elif event["event"] == "evidence":
            self.evidence.inc()

    def _on_federated(self, event: dict) -> None:
        """Show the newest height's spread; an older height's late report changes nothing."""
        height = event["height"]
        if height < self._federated_at:
            return
        if height > self._federated_at:
            self.federated_metric.clear()
            self._federated_at = height
            self.federated_height.set(height)
        self.federated_peers.set(event["peers"])
        for name in event["mean"]:
            self.federated_metric.labels(name, "mean").set(event["mean"][name])
            self.federated_metric.labels(name, "weighted_mean").set(
                event["weighted_mean"][name])
            self.federated_metric.labels(name, "worst").set(event["worst"][name]["value"])

    def update(self, snapshot: dict[str, Any]) -> None:
        """Replace the state snapshot (one dict swap: safe against the server's thread)."""
        self._snapshot.snapshot = snapshot

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Serve /metrics in a daemon thread; OSError if the port is taken."""
        start_http_server(port, addr=host, registry=self.registry)
