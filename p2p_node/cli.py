"""`p2p-node` / `python -m p2p_node`: set up, run and inspect a peer, or run a local demo.

Heavy imports (torch, libp2p) happen inside the commands that need them, so `--help` and the
inspection commands answer at once. Every error an operator can cause (a bad flag, file or data
directory, a taken port, no reachable peer) ends the process with one line on stderr and exit
code 2; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import multiaddr

from chain.store import StoreError
from p2p_node.config import (
    DEFAULT_CONFIG_FILE,
    ConfigError,
    LazyNames,
    NodeConfig,
    Option,
    attack_names,
    config_template,
    positive,
    resolve,
    run_options,
)
from p2p_node.control import (ControlError, federated_text, last_round_text, query,
                              socket_path)
from p2p_node.identity import KEY_FILE, IdentityError, load_identity, load_or_create_identity
from p2p_node.logs import setup_logging

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

log = logging.getLogger("p2p_node")

DESCRIPTION = """\
A peer of a serverless, Byzantine-robust federated-learning network (CMFL committee over libp2p).
Peers train a shared model round by round; a committee scores the updates, agrees on a block,
and every peer checks it and appends it to its own chain.

typical use: `init` a data directory per peer, collect the peer IDs into one `genesis new`
file, then `run` each peer with that genesis; `status`, `peers` and `chain show` inspect it.
`demo` does all of this on one machine."""

EPILOG = """\
exit codes: 0 done, 1 the demo's peers did not all commit the same chain, 2 an error (one line
on stderr: bad flag, bad or missing file, taken port, unreachable peer, damaged data directory)."""


class CLIError(Exception):
    """An operator error, reported as one line and exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line that point at `--help`."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


# init / id ---------------------------------------------------------------------------------------
def _cmd_init(args: argparse.Namespace) -> int:
    existed = (args.data_dir / KEY_FILE).exists()
    signer = load_or_create_identity(args.data_dir)
    config = args.data_dir / DEFAULT_CONFIG_FILE
    if not config.exists():
        config.write_text(config_template(RUN_OPTIONS))
    print(signer.peer_id)
    print(f"p2p-node: {'kept the existing' if existed else 'created a new'} key in "
          f"{args.data_dir / KEY_FILE}; settings template in {config}", file=sys.stderr)
    return 0


def _cmd_id(args: argparse.Namespace) -> int:
    signer = load_identity(args.data_dir)
    addrs_file = args.data_dir / "listen_addrs"
    addrs = addrs_file.read_text().split() if addrs_file.exists() else []
    # Dialable addresses end in /p2p/ID: what another peer passes to --bootstrap.
    addrs = [a if "/p2p/" in a else f"{a}/p2p/{signer.peer_id}" for a in addrs]
    if args.json:
        print(json.dumps({"peer": signer.peer_id, "addrs": addrs}))
        return 0
    print(signer.peer_id)
    for a in addrs:
        print(a)
    if not addrs:
        print("p2p-node: no addresses yet (they are written when `p2p-node run` starts)",
              file=sys.stderr)
    return 0


# genesis -----------------------------------------------------------------------------------------
def _cmd_genesis_new(args: argparse.Namespace) -> int:
    from chain.genesis import Genesis, GenesisError

    members = list(args.member)
    for d in args.member_dir:
        members.append(load_identity(Path(d)).peer_id)
    if not members:
        raise GenesisError("name the members with --member PEER_ID or --member-dir DATA_DIR")
    committee = members[: args.committee_size]
    membership: dict[str, Any] = {}
    if args.admission is not None or args.allow or args.leave_after is not None:
        # Only when asked for: without the field the network keeps its genesis members.
        membership = {"admission": args.admission or ("allowlist" if args.allow else "closed")}
        if args.allow:
            membership["allow"] = list(args.allow)
        if args.leave_after is not None:
            membership["leave_after"] = args.leave_after
    genesis = Genesis(
        name=args.name, members=tuple(members), committee=tuple(committee), seed=args.seed,
        data={"dataset": "digits", "partition": args.partition, "alpha": args.alpha,
              "test_fraction": 0.2},
        selection=_genesis_selection(args), membership=membership, consensus=args.consensus, sealing=args.sealing,
        **_genesis_task(args.task))
    genesis.check()
    genesis.save(args.out)
    print(f"wrote {args.out}: network id {genesis.network_id.hex()}")
    return 0


#: The named rules of `--rule` (chain.genesis.SELECTION_PRESETS; read here without torch),
#: the default (chain.genesis.DEFAULT_RULE) first.
RULES = ("cmfl-choose-clipped", "cmfl-choose-pledged", "cmfl-choose", "cmfl-clip-far")
#: The flags of a hand-made scored rule and the defaults they had before `--rule`.
CUSTOM_SELECTION = {"selection": "auto", "fraction": 0.5, "scoring": "median",
                    "election": "trusted", "outlier_ratio": 1.3}


def _genesis_selection(args: argparse.Namespace) -> dict[str, Any]:
    """The genesis `selection`: a named rule (--rule, default cmfl-choose-clipped), or the scored
    rule the custom flags (--selection, --fraction, ...) describe."""
    from chain.genesis import DEFAULT_RULE, SELECTION_PRESETS

    custom = {k: getattr(args, k) for k in CUSTOM_SELECTION if getattr(args, k) is not None}
    if custom and args.rule is not None:
        raise CLIError("give --rule or the custom selection flags (--selection, --fraction, "
                       "--scoring, --election, --outlier-ratio), not both")
    if not custom:
        return dict(SELECTION_PRESETS[args.rule or DEFAULT_RULE])
    values = {**CUSTOM_SELECTION, **custom}
    return {"rule": values["selection"], "fraction": values["fraction"],
            "scoring": values["scoring"], "election": values["election"],
            "outlier_ratio": values["outlier_ratio"]}


def _rule_option(p: argparse.ArgumentParser, custom: bool) -> None:
    p.add_argument("--rule", choices=RULES, default=None,
                   help="how a round decides its model (docs/learning.md): "
                        "cmfl-choose-clipped (default; judged rounds: every member trains, "
                        "judges the round's candidate models on its own data, pledges a hash "
                        "of its votes before revealing them, and the block is agreed by pBFT; "
                        "the random-subset candidates average updates clipped around the "
                        "median of all, so whatever the liars make win stays near it in "
                        "one round: the best mean in the harness over both aims adaptive liars "
                        "can have on non-IID data, though zeros and liars aiming at plain harm "
                        "still collapse it in some seeds), cmfl-choose-pledged (the same "
                        "without the clipping: worse against plain harm), cmfl-choose "
                        "(without the pledge either: "
                        "liars read the honest votes first, 0.63 worst case, 0.10 with a "
                        "colluding leader), or "
                        "cmfl-clip-far (an elected committee scores every update, which is "
                        "centered-clipped around the coordinate median: cheaper rounds and a "
                        "few points better on most single attacks, but adaptive colluders on "
                        "non-IID data break it)"
                        + ("; or describe a scored rule with the flags below" if custom else ""))


def _genesis_task(ref: str | None) -> dict[str, Any]:
    """The genesis fields for --task: the task's pin and its settings (none: the digits MLP,
    with no task field, as before tasks)."""
    if ref is None:
        return {}
    from learning.task import load_task

    task = load_task(ref)
    return {"task": task.pin(), "model": dict(task.settings)}


# run ---------------------------------------------------------------------------------------------
#: Every setting of `run` (flag, config key, P2P_NODE_* variable), by NodeConfig field: declared
#: once, on NodeConfig (p2p_node.config `setting`).
RUN_OPTIONS: dict[str, Option] = run_options()


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The `run` flags, one per RUN_OPTIONS entry, each saying its default and variable."""
    for option in RUN_OPTIONS.values():
        help = option.help
        if option.default is not None and option.default != []:
            help = f"{help} (default: {option.shown(option.default)})"
        p.add_argument(option.flag, dest=option.dest, type=option.parse, default=None,
                       choices=option.choices, metavar=option.metavar,
                       action="append" if option.repeated else "store",
                       help=help + f"; env {option.env}")


def _check_addresses(listen: list[str], bootstrap: list[str]) -> None:
    """One-line errors for malformed multiaddrs and for a listen port already taken."""
    for addr in [*listen, *bootstrap]:
        try:
            multiaddr.Multiaddr(addr)
        except Exception as exc:  # the multiaddr package raises several unrelated types
            raise CLIError(f"bad multiaddr {addr!r}: {exc}") from None
    for addr in bootstrap:
        if "/p2p/" not in addr:
            raise CLIError(f"bootstrap address {addr!r} must end in /p2p/<peer ID> "
                           "(`p2p-node id` on that peer prints it)")
    for addr in listen:
        ma = multiaddr.Multiaddr(addr)
        protocols = [p.name for p in ma.protocols()]
        if protocols[:2] not in (["ip4", "tcp"], ["ip6", "tcp"]):
            continue
        port = int(ma.value_for_protocol("tcp"))
        if port != 0:
            _check_port_free(ma.value_for_protocol(protocols[0]), port,
                             socket.AF_INET if protocols[0] == "ip4" else socket.AF_INET6,
                             f"listen address {addr}")


def _check_port_free(host: str, port: int, family: int, what: str) -> None:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # As the real listener will: a port in TIME_WAIT from our last run is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CLIError(f"{what}: port {port} is already in use "
                               "(another peer running? pick another port)") from None
            raise CLIError(f"{what}: cannot listen: {exc.strerror}") from None


def _run_config(args: argparse.Namespace) -> NodeConfig:
    """The node's settings: each from its flag, P2P_NODE_* variable, config file or default."""
    config_file = args.config
    if config_file is None and (args.data_dir / DEFAULT_CONFIG_FILE).exists():
        config_file = args.data_dir / DEFAULT_CONFIG_FILE
    flags = {name: getattr(args, name) for name in RUN_OPTIONS}
    return NodeConfig(data_dir=args.data_dir, **resolve(flags, RUN_OPTIONS, config_file))


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _cmd_run(args: argparse.Namespace) -> int:
    # Until trio takes the signals over (_stop_on_signal), SIGTERM stops start-up as Ctrl-C does:
    # nothing is written yet, and a supervisor sees exit 0 either way.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run(args)
    except KeyboardInterrupt:
        log.info("stopped while starting")
        return 0


def _check_data_dir(data_dir: Path) -> None:
    """Fail fast, before the slow imports, on a missing or damaged key or block store."""
    load_identity(data_dir)
    if socket_path(data_dir).exists():
        try:
            query(data_dir, "status", timeout=5)
        except ControlError:
            pass  # a socket left by a killed peer: serve_control replaces it
        else:
            raise CLIError(f"another p2p-node is running with this data directory ({data_dir})")
    path = data_dir / "chain.sqlite"
    if not path.exists():
        return
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        verdict = str(exc)
    if verdict != "ok":
        raise CLIError(f"block store {path} is damaged ({verdict}); restore it from a backup, or "
                       "move it aside to start from an empty chain")


def _run(args: argparse.Namespace) -> int:
    _check_data_dir(args.data_dir)
    config = _run_config(args)
    if not config.genesis_file.exists():  # the one genesis error worth reporting early
        raise CLIError(f"genesis file not found: {config.genesis_file} (give --genesis FILE)")
    _check_addresses(config.listen, config.bootstrap)
    if config.metrics_port is not None:
        _check_port_free(config.metrics_host, config.metrics_port, socket.AF_INET,
                         "--metrics-port")

    import trio

    from p2p_node.control import NodeStatus
    from p2p_node.node import Node

    events_file = args.data_dir / "events.jsonl"
    status = NodeStatus()
    metrics = None
    if config.metrics_port is not None:
        from p2p_node.metrics import NodeMetrics

        metrics = NodeMetrics()

    def on_event(event: dict) -> None:
        status.on_event(event)
        if metrics is not None:
            metrics.on_event(event)
        if event["event"] == "rejected":
            return  # already in the log; the events file records the chain's progress
        with open(events_file, "a") as f:  # stamped: rates and latencies read from the file
            f.write(json.dumps({"time": round(time.time(), 3), **event}, sort_keys=True) + "\n")

    node = Node(config, on_event)
    _check_models(node)
    if metrics is not None:
        try:
            metrics.serve(config.metrics_port, config.metrics_host)
        except OSError as exc:
            raise CLIError(f"--metrics-port {config.metrics_port}: {exc.strerror}") from None
        log.info("metrics on http://%s:%d/metrics", config.metrics_host, config.metrics_port)
    try:
        trio.run(_serve, node, status, metrics)
    except BaseExceptionGroup as group:
        raise _operator_error(group) from None
    head = node.store.head()
    log.info("stopped at height %s; committed blocks are on disk",
             "none" if head is None else head[0])
    return 0


def _check_models(node: Any) -> None:
    """A data directory whose head block's model is missing or damaged cannot continue."""
    head = node.store.head()
    if head is None:
        return
    block = node.store.get(head[0])
    if block is None or node.models.get(block.block.model_hash) is None:
        raise CLIError(f"data directory {node.config.data_dir} is damaged: the model of block "
                       f"{head[0]} is missing or corrupt in models/")


async def _serve(node: Any, status: Any, metrics: Any) -> None:
    """Run the node with its control socket (and metrics) until done or SIGINT/SIGTERM."""
    import trio

    from p2p_node.control import serve_control

    async with trio.open_nursery() as nursery:
        await nursery.start(_stop_on_signal, nursery.cancel_scope)
        await nursery.start(serve_control, node, status, socket_path(node.config.data_dir))
        if metrics is not None:
            nursery.start_soon(_refresh_metrics, node, status, metrics)
        if node.config.bootstrap:
            nursery.start_soon(_require_a_bootstrap_peer, node)
        await node.run()
        nursery.cancel_scope.cancel()


async def _stop_on_signal(scope: Any, task_status: Any) -> None:
    import trio

    # Cancelling is safe at any await: a block's model and row are written (fsynced) with no
    # checkpoint in between, and a committee vote is on disk before it is sent.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            log.info("received %s: stopping; committed blocks are on disk",
                     signal.Signals(signum).name)
            scope.cancel()
            return


async def _refresh_metrics(node: Any, status: Any, metrics: Any) -> None:
    import trio

    while True:
        metrics.update(status.snapshot(node))
        await trio.sleep(1.0)


async def _require_a_bootstrap_peer(node: Any) -> None:
    """Fail the run if no bootstrap peer was reachable within --start-wait.

    A peer alone cannot reach a committee quorum: waiting on would look like a hang.
    """
    import trio

    from p2p_node.control import connected_peers

    await trio.sleep(max(node.config.start_wait, 1.0))
    if not connected_peers(node):
        raise CLIError(f"no bootstrap peer reachable within --start-wait "
                       f"{node.config.start_wait:g}s (tried {', '.join(node.config.bootstrap)})")


def _operator_error(group: BaseExceptionGroup) -> BaseException:
    """The operator error inside a trio exception group, or the group itself (a bug)."""
    for leaf in _leaves(group):
        if isinstance(leaf, (CLIError, ControlError)):
            return leaf
        if isinstance(leaf, OSError) and leaf.errno == errno.EADDRINUSE:
            return CLIError(f"cannot listen: {leaf.strerror}")
    return group


def _leaves(group: BaseExceptionGroup) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


# status / peers ----------------------------------------------------------------------------------
def _cmd_status(args: argparse.Namespace) -> int:
    s = query(args.data_dir, "status")
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    rejected = ", ".join(f"{k} {v}" for k, v in s["rejections"].items()) or "none"
    mesh = ", ".join(f"{k} {v}" for k, v in s["mesh"].items()) or "none"
    last = last_round_text(s)
    for key, value in [
        ("peer", s["peer"]), ("network", s["network_id"][:16]),
        ("height", "none (empty chain)" if s["height"] is None else s["height"]),
        ("head", s["head"] or "none"),
        ("round", "not started" if s["round"] is None else s["round"]),
        ("role", s["role"] or "-"), ("peers", s["peers"]), ("mesh", mesh),
        ("last round", last), ("federated", federated_text(s.get("federated"))),
        ("rejections", rejected),
        ("attack", s["attack"]), ("uptime", f"{s['uptime_seconds']:.0f}s")]:
        print(f"{key + ':':<12}{value}")
    return 0


def _cmd_peers(args: argparse.Namespace) -> int:
    peers = query(args.data_dir, "peers")
    if args.json:
        print(json.dumps(peers, indent=2))
        return 0
    print(f"{len(peers)} connected peer(s)")
    for p in peers:
        who = "member" if p["member"] else "NOT A MEMBER"
        print(f"{p['peer']}  {who:<12} topics: {','.join(p['topics']) or '-':<24} "
              f"{' '.join(p['addrs'])}")
    return 0


# chain -------------------------------------------------------------------------------------------
def _cmd_chain_show(args: argparse.Namespace) -> int:
    from chain.store import BlockStore

    path = args.data_dir / "chain.sqlite"
    if not path.exists():
        raise CLIError(f"no chain in {args.data_dir} (no chain.sqlite; has the peer run?)")
    store = BlockStore(path)
    try:
        head = store.head()
        summary = {"blocks": 0 if head is None else head[0] + 1,
                   "height": None if head is None else head[0],
                   "head": None if head is None else head[1].hex()}
        first = max(0, summary["blocks"] - args.last)
        blocks = [store.get(h) for h in range(first, summary["blocks"])]
    finally:
        store.close()
    rows = [{"height": c.block.height, "hash": c.block.hash().hex(),
             "view": c.certificate.view, "committee": list(c.block.committee),
             "selected": list(c.block.selected), "trainers": len(c.block.trainers),
             "model": c.block.model_hash.hex(), "evidence": len(c.block.evidence)}
            for c in blocks if c is not None]
    if args.json:
        print(json.dumps({**summary, "last_blocks": rows}))
        return 0
    print(f"blocks {summary['blocks']}  height {summary['height']}  head {summary['head']}")
    if rows:
        print(f"{'height':>6}  {'hash':<16}  {'view':>4}  {'selected':>8}  evidence  committee")
    for r in rows:
        print(f"{r['height']:>6}  {r['hash'][:16]}  {r['view']:>4}  "
              f"{len(r['selected']):>3} of {r['trainers']:<2}  {r['evidence']:>8}  "
              f"{' '.join(p[-6:] for p in r['committee'])}")
    return 0


def _cmd_chain_verify(args: argparse.Namespace) -> int:
    from chain.genesis import Genesis
    from chain.store import BlockStore, ModelStore
    from chain.verify import verify_store

    path = args.data_dir / "chain.sqlite"
    if not path.exists():
        raise CLIError(f"no chain in {args.data_dir} (no chain.sqlite; has the peer run?)")
    genesis = Genesis.load(args.genesis or args.data_dir / "genesis.json")
    store = BlockStore(path)
    try:
        report = verify_store(genesis, store, ModelStore(args.data_dir / "models"))
    finally:
        store.close()
    print(report.summary())
    for note in report.notes:
        print(f"note: {note}")
    return 0 if report.ok else 1


# demo --------------------------------------------------------------------------------------------
def _cmd_demo(args: argparse.Namespace) -> int:
    from p2p_node.demo import DemoConfig, run_demo

    return run_demo(DemoConfig(
        out=args.out, peers=args.peers, attackers=args.attackers, attack=args.attack,
        rounds=args.rounds, committee_size=args.committee_size, seed=args.seed,
        partition=args.partition, compare=args.compare, hidden=tuple(args.hidden),
        task=args.task, consensus=args.consensus, sealing=args.sealing,
        rule=args.rule or RULES[0]))


#: who signs certificates in a new genesis (chain.genesis.Genesis.consensus)
DEFAULT_CONSENSUS = "committee"


def _consensus_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--consensus", choices=["committee", "members"], default=DEFAULT_CONSENSUS,
                   help="who runs pBFT on each block and signs its certificate: the round's "
                        "committee, or every member (a quorum of the whole membership, so a "
                        "captured committee cannot fork the chain: docs/consensus.md, "
                        f"\"Committee safety\"; default {DEFAULT_CONSENSUS})")


#: who can read an update in a new genesis (chain.genesis.Genesis.sealing)
DEFAULT_SEALING = "none"


def _sealing_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sealing", choices=["none", "validators"], default=DEFAULT_SEALING,
                   help="who can read an update: everyone (none: gossiped in the clear) or "
                        "only the round's validators (the committee; every member with "
                        "--consensus members): updates are encrypted to their keys, and other "
                        "peers commit on the certificate and fetch the new model by its hash "
                        f"(docs/privacy.md; default {DEFAULT_SEALING})")


def _widths(text: str) -> list[int]:
    """`--hidden 2048,1024` -> [2048, 1024]."""
    try:
        widths = [int(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated widths: {text!r}") from None
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"widths must be positive: {text!r}")
    return widths


# the parser --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    # Logging flags work before or after the command: `p2p-node --log-json run` and
    # `p2p-node run --log-json` (SUPPRESS keeps a subcommand from resetting the top-level value).
    logging_flags = Parser(add_help=False)
    logging_flags.add_argument("--log-level", default=argparse.SUPPRESS,
                               help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    logging_flags.add_argument("--log-json", action="store_true", default=argparse.SUPPRESS,
                               help="log one JSON object per line (default: human-readable)")
    parser = Parser(prog="p2p-node", description=DESCRIPTION, epilog=EPILOG,
                    parents=[logging_flags],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(log_level="INFO", log_json=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=Parser)

    def command(name: str, help: str, description: str | None = None,
                parent: Any = sub) -> argparse.ArgumentParser:
        return parent.add_parser(name, help=help, description=description or help,
                                 parents=[logging_flags])

    def data_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", type=Path, required=True,
                       help="the peer's directory: key, config, chain, models, logs")

    p = command("init", "create a peer's data directory and key; print its peer ID",
                "Create DATA_DIR with a new Ed25519 key (identity.key, owner-only: the peer's "
                "libp2p identity and signing key) and a commented config.toml listing every "
                "`run` setting; print the peer ID. Keeps an existing key.")
    data_dir(p)
    p.set_defaults(func=_cmd_init)

    p = command("id", "print a peer's ID and its addresses from its last run",
                "Print the peer ID, then the addresses the peer listened on at its last "
                "`run`, each ending in /p2p/ID: what other peers pass to --bootstrap.")
    data_dir(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_id)

    p = command("genesis", "write a genesis file (a new network's identity)")
    gsub = p.add_subparsers(dest="genesis_command", required=True, metavar="ACTION",
                            parser_class=Parser)
    p = command("new", "write a genesis file for a new network",
                "Write a genesis file: members, round-0 committee (the first "
                "--committee-size members), seed, data split and selection rule. Its hash is "
                "the network id; give the same file to every peer.", parent=gsub)
    p.add_argument("--out", type=Path, required=True, help="the genesis JSON file to write")
    p.add_argument("--name", default="cmfl-net", help="network name")
    p.add_argument("--member", action="append", default=[], help="a member's peer ID")
    p.add_argument("--member-dir", action="append", default=[],
                   help="a member's data directory (its ID is read from its key)")
    p.add_argument("--committee-size", type=positive(int), default=4,
                   help="round-0 committee: the first N members (n >= 3f+1; default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the model and data split")
    p.add_argument("--partition", choices=["iid", "dirichlet"], default="iid")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet alpha for non-IID data")
    p.add_argument("--task", default=None, metavar="TASK",
                   help="what the network trains (docs/tasks.md): a built-in (digits, cnn, "
                        "credit), package.module:Class or path/to/task.py; pinned by name, "
                        "version and source hash (default: the digits MLP, unpinned)")
    _rule_option(p, custom=True)
    p.add_argument("--selection", choices=["S1", "S2", "auto"], default=None,
                   help="custom rule: S1 aggregates the lowest-distance updates (under "
                        "attack); S2 the highest (non-IID, no attack); auto (custom default) "
                        "drops outliers when there is evidence of attack, else aggregates all")
    p.add_argument("--fraction", type=float, default=None,
                   help="custom rule: share of scored trainers aggregated by S1/S2 (auto: at "
                        "least this; default 0.5)")
    p.add_argument("--scoring", choices=["sum", "median"], default=None,
                   help="custom rule: combine committee distances by sum (CMFL) or median "
                        "(custom default; a lying member cannot move it alone)")
    p.add_argument("--election", choices=["middle", "trusted"], default=None,
                   help="custom rule: next committee from the middle of the ranking (CMFL) or "
                        "trusted (custom default: the middle of the trainers that passed this "
                        "round's checks)")
    p.add_argument("--outlier-ratio", type=float, default=None,
                   help="custom rule, auto: an update farther than this times the typical "
                        "distance is an outlier (default 1.3)")
    p.add_argument("--admission", choices=["closed", "allowlist", "open"], default=None,
                   help="who may join after genesis with a signed request: closed (no one: the "
                        "default), allowlist (the --allow peers) or open (anyone)")
    p.add_argument("--allow", action="append", default=[], metavar="PEER_ID",
                   help="a peer ID the allowlist admits (implies --admission allowlist)")
    p.add_argument("--leave-after", type=int, default=None, metavar="ROUNDS",
                   help="a trainer silent for this many rounds in a row leaves the pool (it may "
                        "join again); 0 never (default: 3 with --admission, else never)")
    _consensus_option(p)
    _sealing_option(p)
    p.set_defaults(func=_cmd_genesis_new)

    p = command("run", "run a peer until stopped (SIGINT/SIGTERM) or for --rounds blocks",
                "Run a peer: listen, connect to the bootstrap peers, then train, score, agree "
                "and commit round after round. Each setting below can also come from a TOML "
                "file (--config, default DATA_DIR/config.toml if present; keys are the flag "
                "names, e.g. collect-timeout = 5, bootstrap = [\"/ip4/...\"]) or from the "
                "environment variable named after it (lists comma-separated). A flag beats "
                "the environment, which beats the file. SIGINT or SIGTERM stops the peer "
                "cleanly (exit 0). While it runs, `p2p-node status` and `p2p-node peers` "
                "ask it through DATA_DIR/control.sock.")
    data_dir(p)
    p.add_argument("--config", type=Path,
                   help=f"TOML settings file (default: DATA_DIR/{DEFAULT_CONFIG_FILE} if it "
                        "exists)")
    add_run_options(p)
    p.set_defaults(func=_cmd_run)

    p = command("status", "ask a running peer for its height, head, round, role, peers and "
                "rejections", "Ask the peer running with DATA_DIR (through its local-only "
                "control socket DATA_DIR/control.sock) what it is doing: chain height and head, "
                "current round and its role in it, connected peers, gossip mesh, last round's "
                "time and accuracy, and messages rejected by reason.")
    data_dir(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_status)

    p = command("peers", "list the peers a running peer is connected to",
                "List the peers that the peer running with DATA_DIR is connected to: peer ID, "
                "whether the genesis names it a member, the topics it shares with us and its "
                "addresses (through DATA_DIR/control.sock).")
    data_dir(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_peers)

    p = command("chain", "inspect a peer's local chain (works while the peer runs)")
    csub = p.add_subparsers(dest="chain_command", required=True, metavar="ACTION",
                            parser_class=Parser)
    p = command("show", "print the number of blocks, height and head hash, and the last blocks",
                "Print the local chain's block count, height and head hash, then one line per "
                "recent block: height, hash, pBFT view, updates selected of trainers, "
                "equivocation proofs recorded, committee (last 6 characters of each ID).",
                parent=csub)
    data_dir(p)
    p.add_argument("--last", type=int, default=10, help="blocks to list (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_chain_show)
    p = command("verify", "verify the local chain from genesis; exit 1 at the first bad block",
                "Check every block from genesis: hash links, certificates (a quorum of the "
                "committee the previous block elected), selection and election re-derived from "
                "the signed score vectors, and each held model checkpoint against its hash. "
                "Prints 'ok: N blocks' (exit 0) or the first bad height and why (exit 1).",
                parent=csub)
    data_dir(p)
    p.add_argument("--genesis", type=Path, help="genesis file (default DATA_DIR/genesis.json)")
    p.set_defaults(func=_cmd_chain_verify)

    p = command("demo", "run a local network of peer processes, some malicious",
                "Run PEERS `p2p-node run` processes on loopback, the last ATTACKERS of them "
                "attacking; print each committed round, then a summary; write summary.json, "
                "accuracy.png (accuracy and round time per round) and every peer's data "
                "directory and node.log to OUT. Exit 0 if every peer committed the same chain.")
    p.add_argument("--out", type=Path, default=Path("demo-out"),
                   help="folder for peers' data, logs, results and plots (default demo-out)")
    p.add_argument("--peers", type=positive(int), default=10,
                   help="number of peer processes (default 10)")
    p.add_argument("--attackers", type=int, default=2, help="how many peers attack (default 2)")
    p.add_argument("--attack", default="sign_flip", metavar="ATTACK",
                   choices=LazyNames(attack_names),
                   help="the attackers' attack: %(choices)s (default sign_flip)")
    p.add_argument("--rounds", type=positive(int), default=8,
                   help="rounds (blocks) to run (default 8)")
    p.add_argument("--committee-size", type=positive(int), default=4,
                   help="committee size, 3f+1 (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the model and data (default 0)")
    p.add_argument("--partition", choices=["iid", "dirichlet"], default="iid",
                   help="how the digits are split among peers (default iid)")
    p.add_argument("--compare", choices=["none", "no-attack", "fedavg"], default="none",
                   help="afterwards run a second network for comparison and plot both: "
                        "no-attack (same set-up, no attackers) or fedavg (same attackers, every "
                        "update averaged: no CMFL selection); doubles the run time")
    p.add_argument("--hidden", type=_widths, default=[64], metavar="W[,W...]",
                   help="hidden layer widths of the model (default 64); e.g. 2048,1024 gives "
                        "~9 MB updates, which travel as signed blob references over streams")
    p.add_argument("--task", choices=["digits", "cnn", "credit"], default="digits",
                   help="what to train: digits MLP (default), cnn (digits as 8x8 images, "
                        "conv + batch norm) or credit (German Credit, AUC and KS); each peer "
                        "also reports metrics on its own held-out shard")
    _rule_option(p, custom=False)
    _consensus_option(p)
    _sealing_option(p)
    p.set_defaults(func=_cmd_demo)
    return parser


def _is_operator_error(exc: BaseException) -> bool:
    # chain.genesis pulls in torch, so its error type is checked only if it was imported.
    genesis = sys.modules.get("chain.genesis")
    known: tuple[type[BaseException], ...] = (CLIError, ConfigError, ControlError, IdentityError,
                                              StoreError, ValueError)
    if genesis is not None:
        known += (genesis.GenesisError,)
    return isinstance(exc, known)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        setup_logging(args.log_level, args.log_json)
        return args.func(args)
    except Exception as exc:
        if not _is_operator_error(exc):
            raise
        print(f"p2p-node: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside `run`, which handles SIGINT itself
        print("p2p-node: interrupted", file=sys.stderr)
        return 130


def _exit_now(code: int) -> NoReturn:
    """Exit without interpreter finalization, once everything is written and flushed.

    A stopped round abandons its training thread (trio's abandon_on_cancel); if that thread is
    still inside torch when Python finalizes, its forced unwind aborts the process ("terminate
    called without an active exception", exit -6) after a clean stop. Every block is already
    durable (fsync, SQLite synchronous=FULL), so skipping finalization loses nothing.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def console_main() -> NoReturn:
    """The `p2p-node` console script and `python -m p2p_node`."""
    code = main()
    if "torch" in sys.modules:
        _exit_now(code)
    sys.exit(code)


if __name__ == "__main__":
    console_main()
