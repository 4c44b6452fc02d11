"""`p2p-node` / `python -m p2p_node`: set up, run and inspect a peer, or run a local demo."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from bft.byzantine import BEHAVIOURS
from chain.genesis import Genesis, GenesisError
from chain.store import StoreError
from learning.attacks import ATTACKS
from p2p_node.identity import IdentityError, load_identity, load_or_create_identity

DESCRIPTION = """\
A peer of a serverless, Byzantine-robust federated-learning network (CMFL committee over libp2p).
Peers train a shared model round by round; a committee scores the updates, agrees on a block,
and every peer checks it and appends it to its own chain."""


def _cmd_init(args: argparse.Namespace) -> int:
    signer = load_or_create_identity(args.data_dir)
    print(signer.peer_id)
    return 0


def _cmd_id(args: argparse.Namespace) -> int:
    signer = load_identity(args.data_dir)
    print(signer.peer_id)
    addrs = args.data_dir / "listen_addrs"
    if addrs.exists():
        print(addrs.read_text().strip())
    return 0


def _cmd_genesis_new(args: argparse.Namespace) -> int:
    members = list(args.member)
    for d in args.member_dir:
        members.append(load_identity(Path(d)).peer_id)
    if not members:
        raise GenesisError("name the members with --member PEER_ID or --member-dir DATA_DIR")
    committee = members[: args.committee_size]
    genesis = Genesis(
        name=args.name, members=tuple(members), committee=tuple(committee), seed=args.seed,
        data={"dataset": "digits", "partition": args.partition, "alpha": args.alpha,
              "test_fraction": 0.2},
        selection={"rule": args.selection, "fraction": args.fraction, "scoring": args.scoring,
                   "election": args.election, "outlier_ratio": args.outlier_ratio})
    genesis.check()
    genesis.save(args.out)
    print(f"wrote {args.out}: network id {genesis.network_id.hex()}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import trio

    from p2p_node.node import Node, NodeConfig

    config = NodeConfig(
        data_dir=args.data_dir, genesis_path=args.genesis,
        listen=args.listen or ["/ip4/0.0.0.0/tcp/0"], bootstrap=args.bootstrap or [],
        attack=args.attack, colluders=args.colluder or [], byzantine=args.byzantine,
        shard_index=args.shard_index, num_shards=args.num_shards,
        rounds=args.rounds, collect_timeout=args.collect_timeout,
        propose_timeout=args.propose_timeout, view_timeout=args.view_timeout,
        start_wait=args.start_wait,
        min_peers=args.min_peers, threads=args.threads)
    events = args.data_dir / "events.jsonl"

    def on_event(event: dict) -> None:
        if event["event"] == "rejected":
            return  # already in the log; the events file records the chain's progress
        with open(events, "a") as f:
            f.write(json.dumps(event, sort_keys=True) + "\n")

    node = Node(config, on_event)
    try:
        trio.run(node.run)
    except KeyboardInterrupt:
        logging.getLogger("p2p_node").info("interrupted; committed blocks are on disk")
    return 0


def _cmd_chain_show(args: argparse.Namespace) -> int:
    from p2p_node.node import chain_summary

    summary = chain_summary(args.data_dir)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"blocks {summary['blocks']}  height {summary['height']}  head {summary['head']}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from p2p_node.demo import DemoConfig, run_demo

    return run_demo(DemoConfig(
        out=args.out, peers=args.peers, attackers=args.attackers, attack=args.attack,
        rounds=args.rounds, committee_size=args.committee_size, seed=args.seed,
        partition=args.partition))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p2p-node", description=DESCRIPTION)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def data_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", type=Path, required=True,
                       help="the peer's directory: key, chain, models, logs")

    p = sub.add_parser("init", help="create a peer's key in its data directory; print its ID")
    data_dir(p)
    p.set_defaults(func=_cmd_init)

    p = sub.add_parser("id", help="print a peer's ID (and its last listen addresses)")
    data_dir(p)
    p.set_defaults(func=_cmd_id)

    p = sub.add_parser("genesis", help="write a genesis file (a new network's identity)")
    gsub = p.add_subparsers(dest="genesis_command", required=True, metavar="ACTION")
    p = gsub.add_parser("new", help="write a genesis file for a new network")
    p.add_argument("--out", type=Path, required=True, help="the genesis JSON file to write")
    p.add_argument("--name", default="cmfl-net", help="network name")
    p.add_argument("--member", action="append", default=[], help="a member's peer ID")
    p.add_argument("--member-dir", action="append", default=[],
                   help="a member's data directory (its ID is read from its key)")
    p.add_argument("--committee-size", type=int, default=4,
                   help="round-0 committee: the first N members (n >= 3f+1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the model and data split")
    p.add_argument("--partition", choices=["iid", "dirichlet"], default="iid")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet alpha for non-IID data")
    p.add_argument("--selection", choices=["S1", "S2", "auto"], default="auto",
                   help="S1: aggregate the lowest-distance updates (under attack); "
                        "S2: the highest (non-IID, no attack); auto (default): drop outliers "
                        "when there is evidence of attack, else aggregate all")
    p.add_argument("--fraction", type=float, default=0.5,
                   help="share of scored trainers aggregated by S1/S2 (auto: at least this)")
    p.add_argument("--scoring", choices=["sum", "median"], default="median",
                   help="combine committee distances by sum (CMFL) or median (default; a "
                        "lying member cannot move it alone)")
    p.add_argument("--election", choices=["middle", "trusted"], default="trusted",
                   help="next committee: middle of the ranking (CMFL) or trusted (default: "
                        "middle of the trainers that passed this round's checks)")
    p.add_argument("--outlier-ratio", type=float, default=1.3,
                   help="auto: an update farther than this times the typical distance is an "
                        "outlier")
    p.set_defaults(func=_cmd_genesis_new)

    p = sub.add_parser("run", help="run a peer until stopped (or for --rounds blocks)")
    data_dir(p)
    p.add_argument("--genesis", type=Path, help="genesis file (default DATA_DIR/genesis.json)")
    p.add_argument("--listen", action="append",
                   help="multiaddr to listen on (default /ip4/0.0.0.0/tcp/0)")
    p.add_argument("--bootstrap", action="append",
                   help="multiaddr of a running peer, with /p2p/ID (repeatable)")
    p.add_argument("--attack", default="none", choices=["none", *ATTACKS],
                   help="simulate a malicious peer with this attack")
    p.add_argument("--colluder", action="append",
                   help="peer ID of a fellow attacker (colluding attacks such as false_scores: "
                        "a lying committee member reports its colluders at distance 0)")
    p.add_argument("--byzantine", default="none", choices=list(BEHAVIOURS),
                   help="committee misbehaviour: equivocate (as leader, propose two blocks) "
                        "or silent (send no consensus messages)")
    p.add_argument("--rounds", type=int, help="stop once the chain has this many blocks")
    p.add_argument("--shard-index", type=int, help="which data shard is this peer's "
                   "(default: its position among the sorted genesis members)")
    p.add_argument("--num-shards", type=int, help="shards the data is split into "
                   "(default: number of members)")
    p.add_argument("--collect-timeout", type=float, default=20.0,
                   help="seconds a committee member waits for updates before scoring")
    p.add_argument("--propose-timeout", type=float, default=10.0,
                   help="further seconds the leader waits for every score vector")
    p.add_argument("--view-timeout", type=float,
                   help="pBFT view timeout in seconds, doubled on each view change "
                        "(default: collect + propose timeouts + 10)")
    p.add_argument("--start-wait", type=float, default=60.0,
                   help="seconds to wait for the other members before the first round")
    p.add_argument("--min-peers", type=int,
                   help="peers that must be connected on our topics before the first round "
                        "(default: the number of --bootstrap addresses)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for local training")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("chain", help="inspect a peer's local chain")
    csub = p.add_subparsers(dest="chain_command", required=True, metavar="ACTION")
    p = csub.add_parser("show", help="print the number of blocks, height and head hash")
    data_dir(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_chain_show)

    p = sub.add_parser("demo", help="run a local network of peer processes, some malicious")
    p.add_argument("--out", type=Path, default=Path("demo-out"),
                   help="folder for peers' data, logs, results and plots (default demo-out)")
    p.add_argument("--peers", type=int, default=10, help="number of peer processes")
    p.add_argument("--attackers", type=int, default=2, help="how many peers attack")
    p.add_argument("--attack", default="sign_flip", choices=list(ATTACKS),
                   help="the attackers' attack")
    p.add_argument("--rounds", type=int, default=8, help="rounds (blocks) to run")
    p.add_argument("--committee-size", type=int, default=4, help="committee size (3f+1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--partition", choices=["iid", "dirichlet"], default="iid")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # libp2p is chatty at INFO; its warnings still show.
    for name in ("libp2p", "multiaddr", "async_service"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        return args.func(args)
    except (GenesisError, IdentityError, StoreError, ValueError) as exc:
        print(f"p2p-node: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
