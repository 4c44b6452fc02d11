"""py-libp2p's Pubsub with every input from a peer contained, budgeted and checked cheap-first.

Pinned to py-libp2p 0.8.1. In it one hostile frame ends the process (docs/network.md, "py-libp2p
0.8.1 bugs we contain"; scripts/repro_pubsub_crashes.py):

* `Pubsub.continuously_read_stream` catches only stream and size errors: a frame that does not
  parse (protobuf DecodeError) escapes `stream_handler` into the swarm connection's nursery,
  whose task failure stops the Swarm service.
* `Pubsub.push_msg` runs as a service task (`manager.run_task`, one per message, unbounded), and
  `signature_validator` raises on an undecodable `key`: a failed task cancels the Pubsub service.
* `router.handle_rpc` is awaited in the read loop: any exception there goes the same way.
* `validate_msg` formats the whole message into each ValidationError (`f"... msg={msg}"`), and
  `push_msg` computes `msg.data.hex()` for a debug line, on every rejected message: a 1 MiB
  rejected message costs several MiB of strings and milliseconds of CPU.

`GuardedPubsub` replaces `continuously_read_stream`, `stream_handler` and `push_msg` (and so
never calls `validate_msg`). Per frame, cheapest first: ban check, byte budget (before parsing),
parse, message budget; per message: topic is ours, origin is an Ed25519 peer id and (by
`origin_check`) a member, not seen, score gate, pubsub signature, then our topic validator. An
exception anywhere is logged (one line, throttled), counted in `contained`, penalised, and the
peer's stream reset. Messages are validated by `MESSAGE_WORKERS` tasks from a bounded queue, not
one task each. A peer whose score falls below the graylist threshold is banned: disconnected,
its pubsub RPCs dropped unread, and its new connections closed (see `guard_host`).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Callable

import trio
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.io.exceptions import IncompleteReadError, IOException, MessageTooLarge
from libp2p.network.connection.exceptions import RawConnError
from libp2p.network.stream.exceptions import StreamEOF, StreamError
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.utils import maybe_consume_signed_record
from libp2p.pubsub.validators import signature_validator
from libp2p.utils.varint import read_varint_prefixed_bytes_limited

from gossip.inbound_policy import (
    MAX_INBOUND_STREAMS_PER_PEER,
    MAX_PENDING_MESSAGES,
    MESSAGE_WORKERS,
    NON_MEMBER_COST,
    REFUSED_COST,
    BanList,
    LogThrottle,
    PeerBudgets,
    RateMeter,
    is_ed25519_peer_id,
)
from gossip.peer_scoring import GRAYLIST_THRESHOLD

log = logging.getLogger("gossip.guarded_pubsub")

#: Exceptions that mean the peer or its connection went away, not that its input was hostile.
GONE = (StreamEOF, StreamError, IOException, RawConnError, IncompleteReadError,
        trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel)

#: origin_check(topic, origin peer id) -> None to accept, or a penalty reason to drop and penalise.
OriginCheck = Callable[[str, str], "str | None"]


class GuardedPubsub(Pubsub):
    """Pubsub whose peers cannot end it; see the module docstring for what changed and why."""

    def __init__(self, *args: Any, budgets: PeerBudgets | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.budgets = budgets or PeerBudgets()
        self.bans = BanList()
        #: accept every origin until the node says who its members are
        self.origin_check: OriginCheck = lambda topic, origin: None
        #: reason -> count of contained exceptions and dropped input (for tests and metrics)
        self.contained: Counter[str] = Counter()
        #: messages that reached the signature check / our validators (cost accounting)
        self.signature_checks = 0
        self.validator_calls = 0
        #: what each forwarder actually sends, at its peak second
        self.rates = RateMeter()
        self._throttle = LogThrottle()
        self._pending_send, self._pending = trio.open_memory_channel[tuple[ID, Any]](
            MAX_PENDING_MESSAGES)
        # Penalties from anywhere (validators, round core, this class) can end in a ban.
        if hasattr(self.router, "on_penalised"):
            self.router.on_penalised = self._check_graylist

    async def run(self) -> None:
        for _ in range(MESSAGE_WORKERS):
            self.manager.run_daemon_task(self._message_worker)
        await super().run()

    # refusing a peer ----------------------------------------------------------------------------
    def _now(self) -> float:
        return trio.current_time()

    def is_banned(self, peer: ID) -> bool:
        return self.bans.banned(str(peer), self._now())

    def _score(self, peer: ID) -> float:
        score = getattr(self.router, "peer_score", None)
        return score(peer) if score is not None else 0.0

    def _check_graylist(self, peer: ID) -> None:
        """After a penalty: below the graylist threshold, ban and disconnect."""
        if peer == self.my_id or self._score(peer) >= GRAYLIST_THRESHOLD:
            return
        already = self.is_banned(peer)
        self.bans.ban(str(peer), self._now())
        if not already:
            log.warning("banned %s for %.0f s: score %.1f", str(peer)[-8:], self.bans.seconds,
                        self._score(peer))
            self.contained["banned"] += 1
        self.blacklisted_peers.add(peer)
        if self.manager.is_running:
            self.manager.run_task(self.disconnect, peer)

    def refuses(self, peer: ID) -> bool:
        """True for a banned peer, or one whose score is still below the graylist threshold."""
        if self.is_banned(peer):
            return True
        if peer in self.blacklisted_peers and self._score(peer) >= GRAYLIST_THRESHOLD:
            self.blacklisted_peers.discard(peer)  # ban over, score recovered: welcome back
        return peer in self.blacklisted_peers

    async def disconnect(self, peer: ID) -> None:
        """Close every connection to `peer` (its pubsub state goes with them)."""
        self._handle_dead_peer_quietly(peer)
        try:
            await self.host.get_network().close_peer(peer)
        except Exception as exc:
            log.debug("closing %s: %s", str(peer)[-8:], exc)
        self.budgets.forget(str(peer))

    def _handle_dead_peer_quietly(self, peer: ID) -> None:
        try:
            self._handle_dead_peer(peer)
        except Exception as exc:
            log.debug("forgetting %s: %s", str(peer)[-8:], exc)

    # containing hostile input -------------------------------------------------------------------
    def _note(self, peer: ID, reason: str, detail: str, penalty: bool = True) -> None:
        """Count, log (throttled: one line per peer and reason per interval) and penalise."""
        self.contained[reason] += 1
        held = self._throttle.allow((str(peer), reason), self._now())
        if held is not None:
            more = f" (and {held} more since the last line)" if held else ""
            log.warning("peer %s: %s: %.200s%s", str(peer)[-8:], reason, detail, more)
        if penalty and peer != self.my_id:
            penalize = getattr(self.router, "penalize", None)
            if penalize is not None:
                penalize(peer, reason)

    async def stream_handler(self, stream: INetStream) -> None:
        """Replaces Pubsub.stream_handler: nothing a peer sends escapes it."""
        peer = stream.muxed_conn.peer_id
        try:
            await self.continuously_read_stream(stream)
        except GONE as exc:
            log.debug("pubsub stream of %s ended: %s", str(peer)[-8:], exc)
            await _reset(stream)
            self._handle_dead_peer_quietly(peer)
        except Exception as exc:  # anything else came from the peer's bytes: contain it
            self._note(peer, "rpc-handling-error", f"{type(exc).__name__}: {exc}")
            await _reset(stream)
            self._handle_dead_peer_quietly(peer)

    async def continuously_read_stream(self, stream: INetStream) -> None:
        """Replaces Pubsub.continuously_read_stream (0.8.1): budget, parse and dispatch frames."""
        peer = stream.muxed_conn.peer_id
        key = str(peer)
        while self.manager.is_running:
            try:
                frame = await read_varint_prefixed_bytes_limited(stream, self.max_inbound_rpc_size)
            except MessageTooLarge as exc:
                self._note(peer, "oversize-rpc", str(exc))
                await _reset(stream)
                self._handle_dead_peer_quietly(peer)
                return
            except StreamEOF:
                return
            if self.refuses(peer):
                self.contained["refused-rpc"] += 1
                await _reset(stream)
                return
            now = self._now()
            if not self.budgets.charge_bytes(key, len(frame), now):
                self._note(peer, "over-budget", f"{len(frame)}-byte frame over the byte budget")
                continue
            rpc = rpc_pb2.RPC()
            try:
                rpc.ParseFromString(frame)
            except Exception as exc:  # DecodeError and friends: the frame is not an RPC
                self._note(peer, "undecodable-rpc", f"{type(exc).__name__}: {exc}")
                await _reset(stream)
                self._handle_dead_peer_quietly(peer)
                return
            self.rates.add(key, len(rpc.publish), len(frame), now)
            if not self.budgets.charge_messages(key, max(1, len(rpc.publish)), now):
                self._note(peer, "over-budget", f"{len(rpc.publish)} messages over budget")
                continue
            await self._dispatch(peer, rpc)

    async def _dispatch(self, peer: ID, rpc: rpc_pb2.RPC) -> None:
        # py-libp2p's own handling of the signed record catches its errors (verified, 0.8.1).
        if not maybe_consume_signed_record(rpc, self.host, peer):
            self._note(peer, "invalid-signed-record", "sender record does not verify",
                       penalty=False)
            return
        for msg in rpc.publish:
            verdict = self._precheck(peer, msg)
            if verdict is not None:
                reason, detail, penalty = verdict
                if reason != "duplicate":
                    self._note(peer, reason, detail, penalty)
                continue
            await self._pending_send.send((peer, msg))
        if rpc.subscriptions:
            if len(rpc.subscriptions) > self.max_subscriptions_per_rpc:
                self._note(peer, "too-many-subscriptions", f"{len(rpc.subscriptions)} in one RPC")
            else:
                for sub in rpc.subscriptions:
                    self.handle_subscription(peer, sub)
        if rpc.HasField("control"):
            try:
                await self.router.handle_rpc(rpc, peer)
            except GONE:
                raise
            except Exception as exc:
                self._note(peer, "control-error", f"{type(exc).__name__}: {exc}")

    def _precheck(self, peer: ID, msg: rpc_pb2.Message) -> tuple[str, str, bool] | None:
        """The checks that cost no decoding: (reason, detail, penalise?) to drop, None to go on."""
        if not self._is_subscribed_to_msg(msg):
            return "not-our-topic", f"topics {list(msg.topicIDs)[:2]!r:.80}", False
        if not is_ed25519_peer_id(msg.from_id):
            return "bad-origin", f"from_id {msg.from_id[:40].hex()}", True
        if self._is_msg_seen(msg):
            return "duplicate", "", False  # normal gossip: dropped without a word
        return self._origin_verdict(peer, msg)

    def _origin_verdict(self, peer: ID, msg: rpc_pb2.Message) -> tuple[str, str, bool] | None:
        origin = ID(msg.from_id).to_base58()
        for topic in msg.topicIDs:
            reason = self.origin_check(topic, origin)
            if reason is not None:
                # Dropped unread, but it costs the forwarder more of its budget than a message
                # it could have sent honestly.
                self.budgets.charge_messages(str(peer), NON_MEMBER_COST, self._now())
                return reason, f"origin {origin[-8:]} on {topic[-12:]}", True
        return None

    async def _message_worker(self) -> None:
        async for forwarder, msg in self._pending:
            try:
                await self._handle_message(forwarder, msg)
            except GONE as exc:
                log.debug("routing a message of %s: %s", str(forwarder)[-8:], exc)
            except Exception as exc:
                self._note(forwarder, "message-handling-error", f"{type(exc).__name__}: {exc}")

    async def push_msg(self, msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
        """Replaces Pubsub.push_msg (0.8.1), used for our own publishes: errors raise to us."""
        await self._handle_message(msg_forwarder, msg)

    async def _handle_message(self, forwarder: ID, msg: rpc_pb2.Message) -> None:
        """Pubsub.push_msg without its unbounded formatting; cheap checks were done before."""
        if forwarder in self.blacklisted_peers or self._is_msg_seen(msg):
            return
        scorer = getattr(self.router, "scorer", None)
        if scorer is not None and not scorer.allow_publish(forwarder, list(msg.topicIDs)):
            self.contained["below-publish-threshold"] += 1
            return
        if self.strict_signing:
            self.signature_checks += 1
            try:
                good = signature_validator(msg)
            except Exception:  # an undecodable key, say: upstream raises here
                good = False
            if not good:
                self._note(forwarder, "bad-pubsub-signature",
                           f"origin {ID(msg.from_id).to_base58()[-8:]}")
                return
        # The signature binds origin and seqno to this content: a message id seen once is done
        # with, accepted or not, so repeats of a rejected message cost nothing more.
        self._mark_msg_seen(msg)
        for validator in self.get_msg_validators(msg):
            self.validator_calls += 1
            if validator.is_async:
                with trio.move_on_after(self.validation_timeout):
                    ok = await validator.validator(forwarder, msg)
            else:
                ok = validator.validator(forwarder, msg)
            if not ok:
                # Our validators log, count and penalise with their own reason; the budget
                # charge makes a flood of refused messages cost more than honest traffic.
                if forwarder != self.my_id:
                    self.budgets.charge_messages(str(forwarder), REFUSED_COST, self._now())
                return
        if scorer is not None:
            for topic in msg.topicIDs:
                scorer.on_first_delivery(forwarder, topic)
        if msg.from_id == self.my_id.to_bytes() and forwarder != self.my_id:
            return  # claims to be ours but was not published here
        self.notify_subscriptions(msg)
        await self.router.publish(forwarder, msg)


async def _reset(stream: INetStream) -> None:
    try:
        await stream.reset()
    except Exception:
        pass


class _RefuseBanned(INotifee):
    """Closes a new connection from a peer the guard refuses, right after the handshake."""

    def __init__(self, pubsub: GuardedPubsub) -> None:
        self.pubsub = pubsub

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        if self.pubsub.refuses(peer) and self.pubsub.manager.is_running:
            self.pubsub.contained["refused-connection"] += 1
            log.info("refused a connection from banned peer %s", str(peer)[-8:])
            self.pubsub.manager.run_task(_close, conn)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        pass

    async def listen(self, network: INetwork, multiaddr: Any) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: Any) -> None:
        pass


async def _close(conn: INetConn) -> None:
    try:
        await conn.close()
    except Exception as exc:
        log.debug("closing a refused connection: %s", exc)


def guard_host(host: Any, pubsub: GuardedPubsub) -> None:
    """Contain every stream handler of `host` and refuse banned peers' connections and streams.

    py-libp2p 0.8.1 runs each inbound stream's handler (identify, ping, pubsub, ours) in the
    connection's nursery: an exception from any handler stops the Swarm service. This wraps the
    host's one entry point for inbound streams, so none can, whatever the protocol.
    """
    network = host.get_network()
    network.register_notifee(_RefuseBanned(pubsub))
    negotiate_and_handle = host._swarm_stream_handler  # noqa: SLF001 - the one entry point
    open_streams: Counter[ID] = Counter()

    async def contained_stream_handler(stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        if pubsub.refuses(peer) or open_streams[peer] >= MAX_INBOUND_STREAMS_PER_PEER:
            pubsub.contained["refused-stream"] += 1
            await _reset(stream)
            return
        open_streams[peer] += 1
        try:
            await negotiate_and_handle(stream)
        except GONE as exc:
            log.debug("stream %s of %s ended: %s", stream.get_protocol(), str(peer)[-8:], exc)
            await _reset(stream)
        except Exception as exc:
            pubsub.contained["stream-handler-error"] += 1
            log.warning("stream %s of peer %s failed: %s: %.200s", stream.get_protocol(),
                        str(peer)[-8:], type(exc).__name__, exc)
            await _reset(stream)
        finally:
            open_streams[peer] -= 1
            if open_streams[peer] <= 0:
                del open_streams[peer]

    network.set_stream_handler(contained_stream_handler)

