"""Finding and keeping peers: bootstrap, mDNS, peer exchange, and redialling lost peers.

A peer that knows one other peer finds the rest by peer exchange: every few seconds it asks a
connected peer, over the stream protocol `/cmfl/peers/2`, for the signed address records it
holds (gossip/peer_record.py), and dials the members it lacks. mDNS (`--mdns`) adds LAN peers to
the same list. Every peer ever reached stays known; when its connection drops (the peer
restarted, a link went down) it is redialled with back-off until it answers again.

Only members are dialled (`allowed`: the genesis members and those the chain admitted since, as
the node updates it), and from peer exchange only at addresses the member itself signed: a peer
never dials an address just because an unauthenticated peer named it (else one hostile peer
could make the whole network dial a victim). Bootstrap addresses (the operator's) and mDNS finds
are dialled as given. A peer that serves a forged or malformed record is penalised; two
different records of one member with one sequence number prove a twin (`on_twin`), and that
member is no longer dialled.

Wire format: the requester opens the stream and writes u32be length | its own record (length
0: none; at most MAX_RECORD_BYTES); the responder writes u32be length | canonical CBOR
[record, ...] (each the wire bytes of a signed `PeerRecord`, the responder's own first, at
most MAX_PEERS_PER_LIST and MAX_PEER_LIST_BYTES) and closes.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import cbor2
import multiaddr
import trio

from gossip.cbor_profile import CborProfileError, decode_canonical
from gossip.peer_record import (
    MAX_RECORD_BYTES,
    PeerRecord,
    RecordBook,
    RecordError,
    RecordSigner,
)

log = logging.getLogger("p2p_node.discovery")

PROTOCOL_ID = "/cmfl/peers/2"
#: Bounds on a peer list, checked before and while decoding it.
MAX_PEER_LIST_BYTES = 64 * 1024
MAX_PEERS_PER_LIST = 64
MAX_ADDRS_PER_PEER = 8
#: How often a peer asks one connected peer for its peers, and retries lost ones.
DEFAULT_INTERVAL = 2.0
#: Back-off for redialling a lost or unreachable peer: doubles from MIN to MAX per failure.
MIN_REDIAL_SECONDS = 0.5
MAX_REDIAL_SECONDS = 15.0
DIAL_TIMEOUT = 10.0
EXCHANGE_TIMEOUT = 15.0
#: A connected peer that fails this many exchanges in a row is taken for gone (see _maybe_dead).
DEAD_AFTER_FAILED_EXCHANGES = 3
#: Penalty reason (gossip.peer_scoring.PENALTIES) for serving a forged or malformed record.
BAD_RECORD_PENALTY = "invalid-peer-record"
#: Refusals an honest responder can cause: it knows members (admitted in blocks) we have not
#: reached yet. Everything else in a record it serves it checked itself before keeping it.
BENIGN_RECORD_CODES = frozenset({"not-member"})


def _not_served(exc: BaseException) -> bool:
    """Whether a failed stream open was the peer refusing the protocol (multistream "na"), not
    silence. py-libp2p 0.8.1 says so only in the text of the error it wraps."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if "protocols not supported" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class DiscoveryError(ValueError):
    """A refused peer list: `code` names the class, the text the detail."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


def encode_peer_list(records: Iterable[bytes]) -> bytes:
    """Canonical CBOR of at most MAX_PEERS_PER_LIST records, within MAX_PEER_LIST_BYTES."""
    out: list[bytes] = []
    size = 16  # CBOR list header and slack
    for record in records:
        if len(out) == MAX_PEERS_PER_LIST or size + len(record) + 4 > MAX_PEER_LIST_BYTES:
            break
        if len(record) <= MAX_RECORD_BYTES:
            out.append(record)
            size += len(record) + 4
    return cbor2.dumps(out, canonical=True)


def decode_peer_list(data: bytes) -> list[bytes]:
    """Parse an untrusted peer list into record bytes; DiscoveryError if it is malformed or
    over a bound. Each record is checked on its own (gossip.peer_record.RecordBook.offer)."""
    if len(data) > MAX_PEER_LIST_BYTES:
        raise DiscoveryError("oversize", f"{len(data)} bytes > {MAX_PEER_LIST_BYTES}")
    try:
        obj = decode_canonical(data, max_depth=3, max_items=2048)
    except CborProfileError as exc:
        raise DiscoveryError("undecodable", f"not profile CBOR ({exc})") from None
    if not isinstance(obj, list) or len(obj) > MAX_PEERS_PER_LIST:
        raise DiscoveryError("malformed", f"not a list of at most {MAX_PEERS_PER_LIST} records")
    if not all(isinstance(r, bytes) and 0 < len(r) <= MAX_RECORD_BYTES for r in obj):
        raise DiscoveryError("malformed", "an entry is not a record's bytes")
    return list(obj)


def _dialable(addr: str) -> bool:
    """TCP addresses with a concrete IP (not 0.0.0.0 / ::), the only kind worth passing on."""
    try:
        ma = multiaddr.Multiaddr(addr)
        ip = ma.value_for_protocol("ip4") if "/ip4/" in addr else ma.value_for_protocol("ip6")
        return "/tcp/" in addr and not ipaddress.ip_address(ip).is_unspecified
    except Exception:
        return False


def _strip_p2p(addr: str) -> str:
    return addr.split("/p2p/")[0]


@dataclass
class KnownPeer:
    """A peer we may (re)dial: its addresses and its redial back-off.

    `signed` are the addresses of its newest valid record (its own word); `given` those the
    operator (bootstrap) or mDNS named. Nothing else is ever dialled."""

    signed: list[str] = field(default_factory=list)
    given: list[str] = field(default_factory=list)
    failures: int = 0
    next_dial: float = 0.0

    @property
    def addrs(self) -> list[str]:
        return list(dict.fromkeys(self.signed + self.given))


class Discovery:
    """Keeps a host connected to every reachable allowed peer it has heard of.

    `allowed` is the set of peer IDs worth dialling (the members); None allows any.
    `signer` signs our own record (persisting its sequence number); without one we serve no
    record of our own (a peer that only dials out). `penalize(peer, reason)` is told of peers
    serving forged or malformed records, `on_twin(peer_id, (record, record))` of proven twins.
    Run `run()` in a nursery for as long as the host runs; `add(peer_id, addrs)` feeds it.
    """

    def __init__(self, host: Any, allowed: Iterable[str] | None = None, *,
                 network_id: bytes = bytes(32), signer: RecordSigner | None = None,
                 bootstrap: Iterable[str] = (), mdns: bool = False,
                 interval: float = DEFAULT_INTERVAL,
                 on_connect: Callable[[str], None] | None = None,
                 penalize: Callable[[Any, str], None] | None = None,
                 on_twin: Callable[[str, tuple[bytes, bytes]], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.host = host
        self.me = str(host.get_id())
        self.signer = signer
        self.book = RecordBook(network_id, None if allowed is None else frozenset(allowed))
        self.interval = interval
        self.mdns = mdns
        self.on_connect = on_connect or (lambda peer: None)
        self.penalize = penalize or (lambda peer, reason: None)
        self.on_twin = on_twin or (lambda peer, pair: None)
        self.clock = clock
        self.known: dict[str, KnownPeer] = {}
        self.refused: dict[str, int] = {}
        self.own_record: bytes | None = None
        self._silent: dict[str, int] = {}  # peer -> exchanges failed in a row
        self._wake = trio.Event()
        for addr in bootstrap:
            peer_id = addr.split("/p2p/")[-1]
            self.add(peer_id, [_strip_p2p(addr)], check_allowed=False)

    @property
    def allowed(self) -> frozenset[str] | None:
        return self.book.allowed

    @allowed.setter
    def allowed(self, peers: Iterable[str] | None) -> None:
        self.book.allowed = None if peers is None else frozenset(peers)

    def install(self) -> None:
        """Serve our peer list to whoever asks."""
        from libp2p.custom_types import TProtocol

        self.host.set_stream_handler(TProtocol(PROTOCOL_ID), self._serve)

    def add(self, peer_id: str, addrs: Iterable[str], check_allowed: bool = True) -> bool:
        """Learn addresses the operator or mDNS gave for a peer; True if it is new. Bootstrap
        peers skip the member check."""
        if not self._worth_dialling(peer_id, check_allowed):
            return False
        new = peer_id not in self.known
        known = self.known.setdefault(peer_id, KnownPeer())
        for a in addrs:
            a = _strip_p2p(a)
            if a not in known.given:
                known.given.append(a)
        del known.given[:-MAX_ADDRS_PER_PEER]  # keep the newest few
        if new:
            self._wake.set()
        return new

    def _worth_dialling(self, peer_id: str, check_allowed: bool = True) -> bool:
        return peer_id != self.me and peer_id not in self.book.twins and not (
            check_allowed and self.allowed is not None and peer_id not in self.allowed)

    def learn(self, data: bytes, via: Any = None, reached_ip: str | None = None,
              own: bool = False) -> bool:
        """Check and keep one record served by `via`; True if it names a peer new to us.

        A record that is malformed, forged or of another network gets `via` penalised (an
        honest peer checks what it serves); the addresses of a member's newest valid record
        replace those it signed before. `reached_ip`: the IP we reached `via` on, for `via`'s
        own record when it listens on an unspecified address (0.0.0.0). `own`: the record
        must be `via`'s own (what an asker pushes)."""
        try:
            offered = self.book.offer(data)
            if own and offered.record.peer_id != str(via):
                raise RecordError("malformed", "an asker pushed a record not its own")
        except RecordError as exc:
            self.refused[exc.code] = self.refused.get(exc.code, 0) + 1
            if exc.code not in BENIGN_RECORD_CODES and via is not None:
                log.warning("refused peer record from %s: %s", str(via)[-8:], exc)
                self.penalize(via, BAD_RECORD_PENALTY)
            return False
        record = offered.record
        if offered.twin is not None:
            self._twin_found(record.peer_id, offered.twin)
            return False
        if not offered.newest or not self._worth_dialling(record.peer_id):
            return False
        addrs = list(record.addrs)
        if reached_ip is not None and via is not None and record.peer_id == str(via):
            addrs = [a if _dialable(a) else _with_ip(a, reached_ip) for a in addrs]
        new = record.peer_id not in self.known
        known = self.known.setdefault(record.peer_id, KnownPeer())
        known.signed = [a for a in addrs if _dialable(a)][:MAX_ADDRS_PER_PEER]
        if new:
            self._wake.set()
        return new

    def _twin_found(self, peer_id: str, pair: tuple[bytes, bytes]) -> None:
        """Two processes sign as `peer_id`: dial neither (its records are not its own word any
        more); the node turns the pair into evidence."""
        if self.known.pop(peer_id, None) is not None:
            log.warning("%s has a twin (two records with one sequence number): not dialled",
                        peer_id[-8:])
        self.on_twin(peer_id, pair)

    def connected(self) -> set[str]:
        return {str(p) for p in self.host.get_connected_peers()}

    # our own record ------------------------------------------------------------------------------
    def refresh_own_record(self) -> None:
        """Sign our record anew when its slot has come (gossip.peer_record.RecordSigner)."""
        if self.signer is None or not self.signer.due(self.clock()):
            return
        addrs = [_strip_p2p(str(a)) for a in self.host.get_addrs()]
        self.own_record = self.signer.sign(addrs, self.clock()).encode()

    # serving -----------------------------------------------------------------------------------
    def peer_list(self) -> list[bytes]:
        """Our record, then the newest records we hold, of the peers we are connected to first."""
        connected = self.connected()
        held = [(peer not in connected, peer, data) for peer, data in self.book.newest_wire()
                if peer != self.me and peer not in self.book.twins]
        own = [self.own_record] if self.own_record else []
        return own + [data for _, _, data in sorted(held)]

    async def _serve(self, stream: Any) -> None:
        from gossip.transfer import read_exactly

        try:
            with trio.fail_after(EXCHANGE_TIMEOUT):
                # The asker's own record first (push-pull: whoever dials us is known at once).
                length = int.from_bytes(await read_exactly(stream, 4), "big")
                if length > MAX_RECORD_BYTES:
                    raise DiscoveryError("oversize", f"{length} > {MAX_RECORD_BYTES}")
                asker = stream.muxed_conn.peer_id
                if length:
                    remote = stream.get_remote_address()
                    self.learn(await read_exactly(stream, length), asker,
                               remote[0] if remote else None, own=True)
            body = encode_peer_list(self.peer_list())
            await stream.write(len(body).to_bytes(4, "big") + body)
        except Exception as exc:  # the asker hung up: nothing to do
            log.debug("peer list not sent: %s", type(exc).__name__)
        finally:
            try:
                await stream.close()
            except Exception:
                pass

    # asking ------------------------------------------------------------------------------------
    async def exchange(self, peer: Any) -> int:
        """Ask `peer` for its records and learn them; how many named new peers. Refusals are
        logged (and penalised: see `learn`)."""
        from libp2p.custom_types import TProtocol
        from gossip.transfer import TransferError, read_exactly

        try:
            with trio.fail_after(EXCHANGE_TIMEOUT):
                stream = await self.host.new_stream(peer, [TProtocol(PROTOCOL_ID)])
                try:
                    own = self.own_record or b""
                    await stream.write(len(own).to_bytes(4, "big") + own)
                    length = int.from_bytes(await read_exactly(stream, 4), "big")
                    if length > MAX_PEER_LIST_BYTES:
                        raise DiscoveryError("oversize", f"{length} > {MAX_PEER_LIST_BYTES}")
                    records = decode_peer_list(await read_exactly(stream, length))
                    remote = stream.get_remote_address()
                finally:
                    try:
                        await stream.close()
                    except Exception:
                        pass
        except DiscoveryError as exc:
            self.refused[exc.code] = self.refused.get(exc.code, 0) + 1
            log.warning("refused peer list from %s: %s", str(peer)[-8:], exc)
            self.penalize(peer, BAD_RECORD_PENALTY)
            return 0
        except (TransferError, trio.TooSlowError, Exception) as exc:
            if _not_served(exc):
                # It answered "na": alive, it just does not exchange peers (docs/protocol.md
                # makes /cmfl/peers/2 optional; a js-libp2p member had its connection closed
                # every ~10 s when this counted as silence).
                log.debug("%s does not serve %s", str(peer)[-8:], PROTOCOL_ID)
                self._silent.pop(str(peer), None)
                return 0
            log.debug("peer exchange with %s failed: %s", str(peer)[-8:], exc)
            await self._maybe_dead(peer)
            return 0
        self._silent.pop(str(peer), None)
        reached = remote[0] if remote else None
        return sum(self.learn(data, peer, reached) for data in records)

    async def _maybe_dead(self, peer: Any) -> None:
        """Close a connection that failed DEAD_AFTER_FAILED_EXCHANGES (3) exchanges in a row.

        py-libp2p keeps a connection listed for a long time after its peer died or its link went
        down (no keep-alive), so a lost peer would never be redialled: the exchange doubles as
        our liveness probe, and closing the stale connection hands the peer to the redial loop.
        """
        pid = str(peer)
        self._silent[pid] = self._silent.get(pid, 0) + 1
        if self._silent[pid] >= DEAD_AFTER_FAILED_EXCHANGES:
            del self._silent[pid]
            log.info("no answer from %s: closing its connection to redial it", pid[-8:])
            # bounded: py-libp2p's yamux close waits for its write lock, which a write stuck
            # on the silent connection (a large blob to a peer not reading) holds for ever
            with trio.move_on_after(EXCHANGE_TIMEOUT) as scope:
                try:
                    await self.host.disconnect(peer)
                except Exception as exc:
                    log.debug("closing %s: %s", pid[-8:], exc)
            if scope.cancelled_caught:
                log.info("closing %s's connection did not finish in %.0f s", pid[-8:],
                         EXCHANGE_TIMEOUT)

    async def dial(self, peer_id: str) -> bool:
        """Dial a known peer on its addresses; updates its back-off. True when connected."""
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo

        known = self.known.get(peer_id)
        if known is None:  # proven a twin meanwhile: not dialled any more
            return False
        pid = ID.from_base58(peer_id)
        # py-libp2p refuses to redial a peer for 60 s after one failed dial (its negative
        # cache); a peer coming back after a link cut must be retried sooner, on our schedule.
        negative_cache = getattr(self.host.get_network(), "_negative_peer_cache", None)
        if negative_cache is not None:
            negative_cache.evict(peer_id)
        try:
            with trio.fail_after(DIAL_TIMEOUT):
                await self.host.connect(PeerInfo(pid, [multiaddr.Multiaddr(a)
                                                       for a in known.addrs]))
        except Exception as exc:
            known.failures += 1
            delay = min(MIN_REDIAL_SECONDS * 2 ** known.failures, MAX_REDIAL_SECONDS)
            known.next_dial = trio.current_time() + delay * random.uniform(0.8, 1.2)
            log.debug("dial %s failed (%s); next try in %.1fs", peer_id[-8:],
                      type(exc).__name__, delay)
            return False
        known.failures = 0
        log.info("connected to %s", peer_id[-8:])
        self.on_connect(peer_id)
        return True

    async def run(self) -> None:
        """Dial, exchange and redial until cancelled."""
        self.refresh_own_record()
        self.install()
        async with trio.open_nursery() as nursery:
            if self.mdns:
                self._listen_mdns(nursery)
            dialling: set[str] = set()

            async def dial_once(peer_id: str) -> None:
                try:
                    if await self.dial(peer_id):
                        await self.exchange(_id(peer_id))
                finally:
                    dialling.discard(peer_id)

            turn = 0
            while True:
                self.refresh_own_record()
                now, connected = trio.current_time(), self.connected()
                for peer_id, known in list(self.known.items()):
                    if (peer_id not in connected and peer_id not in dialling and known.addrs
                            and known.next_dial <= now):
                        dialling.add(peer_id)
                        nursery.start_soon(dial_once, peer_id)
                # One connected peer per turn, in rotation: enough to spread any new peer to
                # everyone within a few turns, without every peer asking every peer.
                peers = sorted(p for p in connected
                               if self.allowed is None or p in self.allowed
                               or p in self.known)
                if peers:
                    nursery.start_soon(self.exchange, _id(peers[turn % len(peers)]))
                # And one we hold no record of (it dialled us): its addresses spread sooner.
                unheard = [p for p in peers if p not in self.book.records]
                if unheard and unheard[0] != peers[turn % len(peers)]:
                    nursery.start_soon(self.exchange, _id(unheard[0]))
                turn += 1
                self._wake = trio.Event()
                with trio.move_on_after(self.interval):
                    await self._wake.wait()

    def _listen_mdns(self, nursery: trio.Nursery) -> None:
        """Feed mDNS finds into `add`. The event source is process-global and calls us from
        zeroconf's thread, so finds are handed to trio through a channel, filtered by `allowed`."""
        from libp2p.discovery.events.peerDiscovery import peerDiscovery

        send, receive = trio.open_memory_channel[Any](256)
        token = trio.lowlevel.current_trio_token()

        def found(info: Any) -> None:
            try:
                token.run_sync_soon(_try_send, send, info)
            except trio.RunFinishedError:
                pass

        async def consume() -> None:
            try:
                async for info in receive:
                    if self.add(str(info.peer_id), [str(a) for a in info.addrs]):
                        log.info("mDNS found %s", str(info.peer_id)[-8:])
            finally:
                peerDiscovery.unregister_peer_discovered_handler(found)

        peerDiscovery.register_peer_discovered_handler(found)
        nursery.start_soon(consume)


def _try_send(send: Any, item: Any) -> None:
    try:
        send.send_nowait(item)
    except (trio.WouldBlock, trio.ClosedResourceError):
        pass  # a flood of finds: the periodic exchange catches up


def _id(peer_id: str) -> Any:
    from libp2p.peer.id import ID

    return ID.from_base58(peer_id)


def _with_ip(addr: str, ip: str) -> str:
    parts = addr.split("/")
    if len(parts) >= 3 and parts[1] in ("ip4", "ip6"):
        parts[1], parts[2] = ("ip6" if ":" in ip else "ip4"), ip
    return "/".join(parts)
