"""Federated evaluation: each peer scores the committed model on its own held-out data and
publishes the metrics, signed, as a `metrics` envelope (docs/tasks.md); every peer gathers the
reports of a height and summarises the spread (mean, worst peer). Pure: no network, no torch."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable

#: at most this many named metrics in one report, names at most this long
MAX_METRICS = 16
MAX_NAME = 32
#: heights whose reports are kept (older ones are forgotten)
KEPT_HEIGHTS = 16


class ReportError(ValueError):
    """A metrics report that is not well formed; the text says why."""


def report_payload(height: int, block_hash: bytes, samples: int,
                   metrics: dict[str, float]) -> dict[str, Any]:
    """The payload of our `metrics` envelope (NaN metrics, e.g. AUC on one class, left out)."""
    return {"height": height, "block": block_hash, "samples": samples,
            "metrics": {k: float(v) for k, v in sorted(metrics.items()) if math.isfinite(v)}}


def decode_report(payload: Any) -> tuple[int, bytes, int, dict[str, float]]:
    """(height, block hash, samples, metrics) of a received report; ReportError if malformed."""
    if not isinstance(payload, dict) or set(payload) != {"height", "block", "samples", "metrics"}:
        raise ReportError("a report is a map of height, block, samples, metrics")
    height, block, samples, metrics = (payload[k] for k in ("height", "block", "samples",
                                                            "metrics"))
    if not (isinstance(height, int) and height >= 0 and isinstance(block, bytes)
            and len(block) == 32 and isinstance(samples, int) and samples > 0):
        raise ReportError("bad height, block hash or sample count")
    if not isinstance(metrics, dict) or len(metrics) > MAX_METRICS or not all(
            isinstance(k, str) and 0 < len(k) <= MAX_NAME and isinstance(v, float)
            and math.isfinite(v) for k, v in metrics.items()):
        raise ReportError(f"metrics must be at most {MAX_METRICS} finite floats by short name")
    return height, block, samples, dict(metrics)


class FederatedEvaluation:
    """The reports of recent heights, one per peer (the first kept), and their spread."""

    def __init__(self, worse: Callable[[str, float, float], bool]) -> None:
        self._worse = worse
        self.reports: dict[int, dict[str, tuple[bytes, int, dict[str, float]]]] = \
            defaultdict(dict)

    def add(self, peer: str, payload: Any, *, envelope_round: int | None = None,
            current_round: int | None = None) -> dict[str, Any] | None:
        """Record a report; the height's new summary, or None if it repeats one we hold.

        A report must be about its envelope's round and within the kept heights below the
        current round: else one member could evict every honest report with a far height, or
        fill memory with old ones."""
        height, block, samples, metrics = decode_report(payload)
        if envelope_round is not None and height != envelope_round:
            raise ReportError("report height differs from its envelope's round")
        if current_round is not None and not current_round - KEPT_HEIGHTS <= height <= current_round:
            raise ReportError("report height outside the kept window")
        if peer in self.reports[height]:
            return None
        self.reports[height][peer] = (block, samples, metrics)
        for old in [h for h in self.reports if h < height - KEPT_HEIGHTS]:
            del self.reports[old]
        return self.summary(height)

    def summary(self, height: int) -> dict[str, Any]:
        """Mean (plain and weighted by samples) and worst peer of each metric at height;
        reports about a block hash other than the most reported one are counted apart."""
        reports = self.reports.get(height, {})
        hashes = [b for b, _, _ in reports.values()]
        block = max(set(hashes), key=lambda b: (hashes.count(b), b)) if hashes else b""
        agree = {p: (n, m) for p, (b, n, m) in reports.items() if b == block}
        names = sorted({k for _, m in agree.values() for k in m})
        mean, weighted, worst = {}, {}, {}
        for k in names:
            vals = [(p, n, m[k]) for p, (n, m) in sorted(agree.items()) if k in m]
            mean[k] = sum(v for _, _, v in vals) / len(vals)
            weighted[k] = sum(n * v for _, n, v in vals) / sum(n for _, n, _ in vals)
            p, _, v = vals[0]
            for q, _, w in vals[1:]:
                if self._worse(k, w, v):
                    p, v = q, w
            worst[k] = {"value": v, "peer": p}
        return {"height": height, "block": block.hex(), "peers": len(agree),
                "other_block": len(reports) - len(agree), "mean": mean,
                "weighted_mean": weighted, "worst": worst}
