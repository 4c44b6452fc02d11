"""Finding and keeping peers: bootstrap, mDNS, peer exchange, and redialling lost peers.

A peer that knows one other peer finds the rest by peer exchange: every few seconds it asks a
connected peer, over the stream protocol `/cmfl/peers/1`, for the peers *it* is connected to and
their addresses, and dials the ones it lacks. mDNS (`--mdns`) adds LAN peers to the same list.
Every peer ever reached stays known; when its connection drops (the peer restarted, a link went
down) it is redialled with back-off until it answers again.

Only members are dialled (`allowed`: the genesis members and those the chain admitted since, as
the node updates it): a peer list from the network is a hint, never an instruction to connect
anywhere. Noise authenticates the peer ID on every dial, so a wrong address in a list costs one
failed dial and nothing more.

Wire format: the requester opens the stream and sends nothing; the responder writes
u32be length | CBOR [[peer_id, [multiaddr, ...]], ...] and closes.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import cbor2
import multiaddr
import trio

from gossip.cbor_profile import CborProfileError, decode_canonical

log = logging.getLogger("p2p_node.discovery")

PROTOCOL_ID = "/cmfl/peers/1"
#: Bounds on a peer list, checked before and while decoding it.
MAX_PEER_LIST_BYTES = 64 * 1024
MAX_PEERS_PER_LIST = 64
MAX_ADDRS_PER_PEER = 8
MAX_ADDR_CHARS = 256
#: How often a peer asks one connected peer for its peers, and retries lost ones.
DEFAULT_INTERVAL = 2.0
#: Back-off for redialling a lost or unreachable peer: doubles from MIN to MAX per failure.
MIN_REDIAL_SECONDS = 0.5
MAX_REDIAL_SECONDS = 15.0
DIAL_TIMEOUT = 10.0
EXCHANGE_TIMEOUT = 15.0
#: A connected peer that fails this many exchanges in a row is taken for gone (see _maybe_dead).
DEAD_AFTER_FAILED_EXCHANGES = 3


class DiscoveryError(ValueError):
    """A refused peer list: `code` names the class, the text the detail."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


def encode_peer_list(entries: Iterable[tuple[str, list[str]]]) -> bytes:
    """Canonical CBOR of at most MAX_PEERS_PER_LIST (peer ID, addresses) pairs."""
    out = []
    for peer_id, addrs in entries:
        if len(out) == MAX_PEERS_PER_LIST:
            break
        out.append([peer_id, [a for a in addrs if len(a) <= MAX_ADDR_CHARS][:MAX_ADDRS_PER_PEER]])
    return cbor2.dumps(out, canonical=True)


def decode_peer_list(data: bytes) -> list[tuple[str, list[str]]]:
    """Parse an untrusted peer list; DiscoveryError if it is malformed or over a bound.

    Addresses must parse as multiaddrs; peer IDs are checked by whoever dials them (Noise).
    """
    if len(data) > MAX_PEER_LIST_BYTES:
        raise DiscoveryError("oversize", f"{len(data)} bytes > {MAX_PEER_LIST_BYTES}")
    try:
        obj = decode_canonical(data, max_depth=3, max_items=2048)
    except CborProfileError as exc:
        raise DiscoveryError("undecodable", f"not profile CBOR ({exc})") from None
    if not isinstance(obj, list) or len(obj) > MAX_PEERS_PER_LIST:
        raise DiscoveryError("malformed", f"not a list of at most {MAX_PEERS_PER_LIST} peers")
    out = []
    for entry in obj:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                and 0 < len(entry[0]) <= 128 and isinstance(entry[1], list)
                and len(entry[1]) <= MAX_ADDRS_PER_PEER):
            raise DiscoveryError("malformed", "an entry is not [peer id, [addresses]]")
        addrs = entry[1]
        for a in addrs:
            if not isinstance(a, str) or len(a) > MAX_ADDR_CHARS:
                raise DiscoveryError("malformed", "an address is not a short string")
            try:
                multiaddr.Multiaddr(a)
            except Exception:  # py-multiaddr raises several types on bad input
                raise DiscoveryError("malformed", f"not a multiaddr: {a[:40]!r}") from None
        out.append((entry[0], list(addrs)))
    return out


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
    """A peer we may (re)dial: its addresses and its redial back-off."""

    addrs: list[str] = field(default_factory=list)
    failures: int = 0
    next_dial: float = 0.0


class Discovery:
    """Keeps a host connected to every reachable allowed peer it has heard of.

    `allowed` is the set of peer IDs worth dialling (the members); None allows any.
    Run `run()` in a nursery for as long as the host runs; `add(peer_id, addrs)` feeds it.
    """

    def __init__(self, host: Any, allowed: Iterable[str] | None = None, *,
                 bootstrap: Iterable[str] = (), mdns: bool = False,
                 interval: float = DEFAULT_INTERVAL,
                 on_connect: Callable[[str], None] | None = None) -> None:
        self.host = host
        self.me = str(host.get_id())
        self.allowed = None if allowed is None else frozenset(allowed)
        self.interval = interval
        self.mdns = mdns
        self.on_connect = on_connect or (lambda peer: None)
        self.known: dict[str, KnownPeer] = {}
        self.refused: dict[str, int] = {}
        self._silent: dict[str, int] = {}  # peer -> exchanges failed in a row
        self._wake = trio.Event()
        for addr in bootstrap:
            peer_id = addr.split("/p2p/")[-1]
            self.add(peer_id, [_strip_p2p(addr)], check_allowed=False)

    def install(self) -> None:
        """Serve our peer list to whoever asks."""
        from libp2p.custom_types import TProtocol

        self.host.set_stream_handler(TProtocol(PROTOCOL_ID), self._serve)

    def add(self, peer_id: str, addrs: Iterable[str], check_allowed: bool = True) -> bool:
        """Learn a peer's addresses; True if it is new. Bootstrap peers skip the member check."""
        if peer_id == self.me or (check_allowed and self.allowed is not None
                                  and peer_id not in self.allowed):
            return False
        new = peer_id not in self.known
        known = self.known.setdefault(peer_id, KnownPeer())
        for a in addrs:
            a = _strip_p2p(a)
            if a not in known.addrs:
                known.addrs.append(a)
        del known.addrs[:-MAX_ADDRS_PER_PEER]  # keep the newest few
        if new:
            self._wake.set()
        return new

    def connected(self) -> set[str]:
        return {str(p) for p in self.host.get_connected_peers()}

    # serving -----------------------------------------------------------------------------------
    def peer_list(self) -> list[tuple[str, list[str]]]:
        """Us and the peers we are connected to, with their dialable addresses."""
        entries = [(self.me, [_strip_p2p(str(a)) for a in self.host.get_addrs()])]
        store = self.host.get_peerstore()
        for peer in self.host.get_connected_peers():
            pid = str(peer)
            if self.allowed is not None and pid not in self.allowed:
                continue
            addrs = [a for a in (_strip_p2p(str(x)) for x in store.addrs(peer)) if _dialable(a)]
            known = self.known.get(pid)
            addrs += [a for a in (known.addrs if known else []) if a not in addrs]
            if addrs:
                entries.append((pid, addrs))
        return entries

    async def _serve(self, stream: Any) -> None:
        try:
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
        """Ask `peer` for its peers and learn them; how many were new. Refusals are logged."""
        from libp2p.custom_types import TProtocol
        from gossip.transfer import TransferError, read_exactly

        try:
            with trio.fail_after(EXCHANGE_TIMEOUT):
                stream = await self.host.new_stream(peer, [TProtocol(PROTOCOL_ID)])
                try:
                    length = int.from_bytes(await read_exactly(stream, 4), "big")
                    if length > MAX_PEER_LIST_BYTES:
                        raise DiscoveryError("oversize", f"{length} > {MAX_PEER_LIST_BYTES}")
                    entries = decode_peer_list(await read_exactly(stream, length))
                    remote = stream.get_remote_address()
                finally:
                    try:
                        await stream.close()
                    except Exception:
                        pass
        except DiscoveryError as exc:
            self.refused[exc.code] = self.refused.get(exc.code, 0) + 1
            log.warning("refused peer list from %s: %s", str(peer)[-8:], exc)
            return 0
        except (TransferError, trio.TooSlowError, Exception) as exc:
            log.debug("peer exchange with %s failed: %s", str(peer)[-8:], exc)
            await self._maybe_dead(peer)
            return 0
        self._silent.pop(str(peer), None)
        new = 0
        for peer_id, addrs in entries:
            if peer_id == str(peer) and remote:
                # The responder may listen on 0.0.0.0: its port at the address we reached it on.
                addrs = [_with_ip(a, remote[0]) if not _dialable(a) else a for a in addrs]
            new += self.add(peer_id, [a for a in addrs if _dialable(a)])
        return new

    async def _maybe_dead(self, peer: Any) -> None:
        """Close a connection that failed two exchanges in a row.

        py-libp2p keeps a connection listed for a long time after its peer died or its link went
        down (no keep-alive), so a lost peer would never be redialled: the exchange doubles as
        our liveness probe, and closing the stale connection hands the peer to the redial loop.
        """
        pid = str(peer)
        self._silent[pid] = self._silent.get(pid, 0) + 1
        if self._silent[pid] >= DEAD_AFTER_FAILED_EXCHANGES:
            del self._silent[pid]
            log.info("no answer from %s: closing its connection to redial it", pid[-8:])
            try:
                await self.host.disconnect(peer)
            except Exception as exc:
                log.debug("closing %s: %s", pid[-8:], exc)

    async def dial(self, peer_id: str) -> bool:
        """Dial a known peer on its addresses; updates its back-off. True when connected."""
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo

        known = self.known[peer_id]
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
