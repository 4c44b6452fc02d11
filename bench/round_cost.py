"""Where a round's time goes, for the demo's set-up: train / gossip / score / agree / store.

Runs the demo (real peer processes on loopback), reads every peer's per-round stage marks, and
prints the mean split over committee members together with the ratio of a whole round to the
local training alone (the baseline, measured in the same run). Round 0 is left out: it includes
the network's start-up.

    python bench/round_cost.py [--peers 10] [--rounds 6] [--attackers 2] [--hidden 2048,1024]
        [--compression int8]   (the genesis codec: none, fp16, int8 or topk:<fraction>)
        [--sealing validators] (updates sealed to the committee: docs/privacy.md)

`--hidden 2048,1024` makes each update ~9 MB (over 8 MiB): updates then travel as signed blob
references and are fetched over streams, so the gossip stage includes the fetches.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from learning.compression import UpdateCodec
from p2p_node.demo import DemoConfig, run_demo


def stage_split(events: list[dict]) -> dict[str, float]:
    """Mean seconds per stage over the committee members' rounds in `events`."""
    rows = []
    for e in events:
        m = e["stages"]
        if "collected" not in m or e["height"] == 0:
            continue  # not a committee member this round (or the start-up round)
        score = m.get("score_seconds", 0.0)
        store = m["store_seconds"]
        row = {
            "train": m["train_seconds"],
            "gossip": m["collected"] - m["trained"] - score,
            "score": score,
            "agree": m["committed"] - m["collected"] - store,
            "store": store,
            "round": m["committed"],
        }
        if "proposed" in m:  # agree = scores in -> pre-prepare, then prepare + commit
            row["to_proposal"] = m["proposed"] - m["collected"]
            row["to_commit"] = m["committed"] - store - m["proposed"]
        rows.append(row)
    keys = {k for r in rows for k in r}
    return {k: statistics.fmean(r[k] for r in rows if k in r) for k in keys} if rows else {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=10)
    parser.add_argument("--attackers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--hidden", default="64",
                        help="hidden layer widths, comma-separated (default 64)")
    parser.add_argument("--compression", default="none",
                        help="the genesis update codec: none, fp16, int8 or topk:<fraction>")
    parser.add_argument("--sealing", choices=["none", "validators"], default="none",
                        help="genesis sealing (docs/privacy.md)")
    parser.add_argument("--out", type=Path, help="keep the demo's folder here")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="round-cost-"))
    hidden = tuple(int(w) for w in args.hidden.split(","))
    codec = UpdateCodec.from_text(args.compression)
    code = run_demo(DemoConfig(out=out, peers=args.peers, attackers=args.attackers,
                               rounds=args.rounds, hidden=hidden,
                               compression=codec.to_settings(), sealing=args.sealing))
    events = [json.loads(line) for d in sorted(out.glob("peer-*"))
              for line in (d / "events.jsonl").read_text().splitlines()]
    split = stage_split([e for e in events if e["event"] == "committed"])
    if not split:
        print("round_cost: no rounds to measure")
        return 1
    print(f"\nround cost, {args.peers} peers, {args.rounds - 1} rounds after start-up, "
          "mean over committee members (seconds):")
    for stage in ("train", "gossip", "score", "agree", "store"):
        print(f"  {stage:<7} {split[stage]:8.3f}  {100 * split[stage] / split['round']:5.1f}%")
        if stage == "agree" and "to_proposal" in split:
            print(f"    scores -> pre-prepare {split['to_proposal']:8.3f}   "
                  f"pre-prepare -> commit {split['to_commit']:8.3f}  (members that saw one)")
    print(f"  {'round':<7} {split['round']:8.3f}")
    print(f"update codec: {args.compression}, sealing: {args.sealing}")
    print(f"ratio round / local training alone: {split['round'] / split['train']:.1f}x")
    moved = [e["bytes"] for e in events
             if e["event"] == "committed" and e["height"] > 0 and "bytes" in e]
    if moved:
        print("payload bytes per peer per round (mean over peers and rounds 1+; KiB):")
        for key in ("gossip_in", "gossip_published", "blob_in", "blob_out", "in", "out"):
            print(f"  {key:<17} {statistics.fmean(m[key] for m in moved) / 1024:10.1f}")
        for role, on in (("committee", True), ("not on the committee", False)):
            got = [e["bytes"]["in"] for e in events if e["event"] == "committed" and
                   e["height"] > 0 and "bytes" in e and (e["peer"] in e["committee"]) == on]
            if got:
                print(f"  in, {role:<21} {statistics.fmean(got) / 1024:10.1f}")
        peers_heard = statistics.fmean(len(m["by_peer"]) for m in moved)
        print(f"  (each peer received from {peers_heard:.1f} distinct peers a round)")
    fetched = [e for e in events if e["event"] == "blob_fetched" and e["height"] > 0]
    if fetched:
        size = statistics.fmean(e["bytes"] for e in fetched)
        seconds = [e["seconds"] for e in fetched]
        print(f"large updates: {len(fetched)} fetches of {size / 2**20:.1f} MiB, "
              f"mean {statistics.fmean(seconds):.2f} s, max {max(seconds):.2f} s from "
              "announcement to bytes in hand (fetches run concurrently)")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
