"""The local-only control endpoint of a running peer: a Unix socket in its data directory.

`p2p-node status` and `p2p-node peers` connect to DATA_DIR/control.sock, send one command line
and read one JSON document back. A Unix socket (mode 0600) rather than a TCP port: only the
peer's own user on the same machine can reach it, with no port to choose or firewall, and the
socket doubles as a lock, so a second `run` on the same data directory is refused instead of
signing messages twice with the same key.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import trio

log = logging.getLogger("p2p_node.control")

#: The socket's name in the data directory.
SOCKET_FILE = "control.sock"
#: Linux's limit on a Unix socket path (sun_path is 108 bytes with the terminating NUL).
MAX_SOCKET_PATH = 107
COMMANDS = ("status", "peers")


class ControlError(RuntimeError):
    """No running peer answers on the data directory's control socket, or its answer is bad."""


class NodeStatus:
    """What a running peer is doing, from its events (round, role, last commit) and its state."""

    def __init__(self) -> None:
        self.started = time.time()
        self.round: int | None = None
        self.role: str | None = None
        self.last_commit: dict[str, Any] | None = None
        #: the newest height's spread of federated metrics (a `federated_metrics` event)
        self.federated: dict[str, Any] | None = None
        self.evidence = 0

    def on_event(self, event: dict) -> None:
        """Feed every `Node.on_event` event here."""
        if event["event"] == "round":
            self.round, self.role = event["height"], event["role"]
        elif event["event"] == "committed":
            self.last_commit = event
        elif event["event"] == "evidence":
            self.evidence += 1
        elif event["event"] == "federated_metrics" and (
                self.federated is None or event["height"] >= self.federated["height"]):
            self.federated = federated_spread(event)

    def snapshot(self, node: Any) -> dict[str, Any]:
        """Height, head, round, role, peers and rejection counts of `node` (a p2p_node Node),
        read in its trio thread."""
        head = node.store.head()
        last = self.last_commit or {}
        return {
            "peer": node.me, "network_id": node.network_id.hex(),
            "height": None if head is None else head[0],
            "head": None if head is None else head[1].hex(),
            "blocks": 0 if head is None else head[0] + 1,
            "round": self.round, "role": self.role,
            "peers": len(connected_peers(node)), "mesh": mesh_sizes(node),
            "rejections": dict(sorted(node.rejections.items())),
            # input the pubsub boundary dropped or contained before any envelope was read
            "contained": dict(sorted(getattr(_pubsub(node), "contained", {}).items())),
            # evidence fed to gossip scoring, by reason, summed over peers
            "penalties": penalty_counts(node),
            "evidence_held": len(node.core.evidence),
            "last_round_seconds": last.get("round_seconds"),
            "last_stages": last.get("stages"),
            "accuracy": last.get("accuracy"),
            # this peer's metrics of the last committed model on its own held-out data, and the
            # spread of every peer's report on the newest block reported (docs/tasks.md)
            "local_metrics": last.get("local_metrics"),
            "federated": self.federated,
            "attack": node.config.attack,
            "uptime_seconds": round(time.time() - self.started, 1),
        }


def federated_spread(event: dict[str, Any]) -> dict[str, Any]:
    """What `status` shows of a `federated_metrics` event: per metric the mean over the peers
    that reported, the mean weighted by their held-out samples and the worst peer."""
    return {"height": event["height"], "block": event["block"], "peers": event["peers"],
            "other_block": event["other_block"],
            "metrics": {k: {"mean": event["mean"][k], "weighted_mean": event["weighted_mean"][k],
                            "worst": event["worst"][k]["value"],
                            "worst_peer": event["worst"][k]["peer"]}
                        for k in sorted(event["mean"])}}


def last_round_text(s: dict[str, Any]) -> str:
    """`status`'s last-round line: its time, the demo's test accuracy if any, and this peer's
    own held-out metrics."""
    if s["last_round_seconds"] is None:
        return "none yet"
    parts = [f"{s['last_round_seconds']:.2f}s"]
    if s.get("accuracy") is not None:
        parts.append(f"accuracy {s['accuracy']:.3f} (global test)")
    own = s.get("local_metrics") or {}
    if own:
        parts.append("own held-out " + " ".join(f"{k}={v:.3f}" for k, v in sorted(own.items())))
    return ", ".join(parts)


def federated_text(spread: dict[str, Any] | None) -> str:
    """`status`'s federated line: per metric the mean and worst peer over the peers that
    reported on the newest block, e.g. `height 4, 5 peers: auc mean 0.81 worst 0.66 (a1b2c3d4)`."""
    if not spread:
        return "no reports yet"
    text = f"height {spread['height']}, {spread['peers']} peers"
    if spread["other_block"]:
        text += f" (+{spread['other_block']} about another block)"
    metrics = "; ".join(f"{k} mean {m['mean']:.3f} worst {m['worst']:.3f} ({m['worst_peer'][-8:]})"
                        for k, m in spread["metrics"].items())
    return f"{text}: {metrics or 'no metrics'}"


def penalty_counts(node: Any) -> dict[str, int]:
    """How often this peer penalised others, by reason (gossip.peer_scoring evidence)."""
    scorer = getattr(getattr(node, "router", None), "scorer", None)
    totals: dict[str, int] = {}
    for reasons in getattr(scorer, "evidence", {}).values():
        for reason, n in reasons.items():
            totals[reason] = totals.get(reason, 0) + n
    return dict(sorted(totals.items()))


def connected_peers(node: Any) -> list[str]:
    """IDs of the peers this node has a connection to (none before its host is up)."""
    if node.host is None:
        return []
    return sorted(str(p) for p in node.host.get_connected_peers())


def _pubsub(node: Any) -> Any:
    # The node keeps its pubsub private; reading it (never writing) is all the endpoint does.
    return getattr(node, "_pubsub", None)


def mesh_sizes(node: Any) -> dict[str, int]:
    """Gossipsub mesh peers per topic kind ("updates", "committee", "blocks")."""
    pubsub = _pubsub(node)
    if pubsub is None:
        return {}
    mesh = getattr(pubsub.router, "mesh", {})
    prefix = f"/cmfl/{node.network_id.hex()[:16]}/"
    return {topic[len(prefix):]: len(peers) for topic, peers in sorted(mesh.items())
            if topic.startswith(prefix)}


def peer_list(node: Any) -> list[dict[str, Any]]:
    """One entry per connected peer: its ID, whether it is a member this round, its addresses and
    which of our topics it is subscribed to."""
    pubsub = _pubsub(node)
    prefix = f"/cmfl/{node.network_id.hex()[:16]}/"
    topics_of: dict[str, list[str]] = {}
    if pubsub is not None:
        for topic, peers in pubsub.peer_topics.items():
            if topic.startswith(prefix):
                for p in peers:
                    topics_of.setdefault(str(p), []).append(topic[len(prefix):])
    entries = []
    for peer_id in (node.host.get_connected_peers() if node.host is not None else []):
        pid = str(peer_id)
        try:
            addrs = [str(a) for a in node.host.get_peerstore().addrs(peer_id)]
        except Exception:  # py-libp2p raises when the peerstore has no address for a peer
            addrs = []
        entries.append({"peer": pid, "member": pid in node.admission.members,
                        "addrs": addrs, "topics": sorted(topics_of.get(pid, []))})
    return sorted(entries, key=lambda e: e["peer"])


def socket_path(data_dir: Path) -> Path:
    return data_dir / SOCKET_FILE


async def serve_control(node: Any, status: NodeStatus, path: Path,
                        task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Answer `status` and `peers` on the Unix socket at `path` until cancelled.

    ControlError if another process already answers there (the data directory is in use).
    """
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ControlError(f"data directory path too long for a control socket ({path}); "
                           "use a shorter --data-dir")
    if path.exists() or path.is_symlink():
        if _answers(path):
            raise ControlError(f"another p2p-node is running with this data directory "
                               f"(it answers on {path})")
        path.unlink()  # left behind by a peer that was killed
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket file is created 0600: owner only
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old_umask)
    sock.listen(16)
    listener = trio.SocketListener(sock)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                stream = await listener.accept()
                nursery.start_soon(_answer, stream, node, status)
    finally:
        with trio.CancelScope(shield=True):
            await listener.aclose()
        path.unlink(missing_ok=True)


async def _answer(stream: trio.SocketStream, node: Any, status: NodeStatus) -> None:
    """Read one command line, write one JSON line; a client that hangs up is no concern."""
    async with stream:
        try:
            with trio.move_on_after(5):
                request = b""
                while b"\n" not in request and len(request) < 256:
                    chunk = await stream.receive_some(256)
                    if not chunk:
                        return  # a probe (or a client that gave up): nothing to answer
                    request += chunk
                command = request.split(b"\n")[0].decode(errors="replace").strip()
                if command == "status":
                    reply: Any = status.snapshot(node)
                elif command == "peers":
                    reply = peer_list(node)
                else:
                    reply = {"error": f"unknown command {command!r}; commands: {COMMANDS}"}
                await stream.send_all(json.dumps(reply).encode() + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:  # a bug here must not take the peer down with it
            log.exception("control socket: answering failed")


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


def query(data_dir: Path, command: str, timeout: float = 10.0) -> Any:
    """Ask the peer running with `data_dir` (blocking; for the CLI). ControlError if none."""
    path = socket_path(data_dir)
    if not path.exists():
        raise ControlError(f"no running peer for {data_dir} (no control socket {path}; "
                           "start one with `p2p-node run`)")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
            s.sendall(command.encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (ConnectionRefusedError, FileNotFoundError):
            raise ControlError(f"no running peer for {data_dir} (stale control socket {path})"
                               ) from None
        except OSError as exc:
            raise ControlError(f"control socket {path}: {exc}") from None
    try:
        reply = json.loads(data)
    except json.JSONDecodeError:
        raise ControlError(f"control socket {path} gave no valid answer") from None
    if isinstance(reply, dict) and "error" in reply:
        raise ControlError(reply["error"])
    return reply
