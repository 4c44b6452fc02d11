"""The sync protocol's driver: serves `/cmfl/sync/1` and runs chain.sync sessions over libp2p.

What to ask, what to believe and whom to drop is chain.sync's (pure); this module moves the
bytes (one length-prefixed request and response per stream, every read bounded in size and
time), fetches checkpoints over gossip.transfer's `/cmfl/blob/1`, and writes a finished
session's blocks to the store: the last block's checkpoint first, then all blocks in one
transaction, so a crash leaves either the old head or the new one, never a head without its
model.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any, Awaitable, Callable

import trio

from chain.genesis import Genesis
from chain.store import DEFAULT_KEEP_CHECKPOINTS, BlockStore, ModelStore, retain_checkpoints
from chain.sync import (
    MAX_REQUEST_BYTES,
    MAX_RESPONSE_BYTES,
    PROTOCOL_ID,
    Ask,
    DropPeer,
    ErrorResponse,
    FetchModel,
    Finished,
    Request,
    Response,
    SyncError,
    SyncSession,
    answer,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from chain.position import ForkError, beyond_head
from chain.verify import ChainVerifier
from gossip.transfer import (
    BlobRef,
    BlobServer,
    TransferError,
    fetch_blob,
    frame,
    request_over_stream,
)
from gossip.transfer import read_frame as transfer_read_frame

log = logging.getLogger("p2p_node.sync")

#: Deadline of one request (dial, write, read the answer): a stalled peer is dropped after it.
REQUEST_TIMEOUT = 10.0
#: Least time between two catch-up attempts set off by lag hints (each asks every peer).
MIN_SYNC_INTERVAL = 2.0


class CheckpointSource:
    """A ModelStore as a gossip.transfer blob source. The last checkpoint read stays in memory:
    a fetch asks for it once per 4 MiB chunk, and the store re-reads and re-hashes each time."""

    def __init__(self, models: ModelStore) -> None:
        self.models = models
        self._last: tuple[bytes, bytes] | None = None

    def get(self, digest: bytes) -> bytes | None:
        if self._last is not None and self._last[0] == digest:
            return self._last[1]
        data = self.models.get(digest)
        if data is not None:
            self._last = (digest, data)
        return data


async def read_frame(stream: Any, limit: int) -> bytes:
    """gossip.transfer.read_frame, its refusal restated as a sync error."""
    try:
        return await transfer_read_frame(stream, limit)
    except TransferError as exc:
        raise SyncError(exc.code, str(exc).split(": ", 1)[-1]) from None


class SyncService:
    """Serves our chain to peers, and catches our chain up with theirs."""

    def __init__(self, host: Any, genesis: Genesis, store: BlockStore, models: ModelStore, *,
                 me: str = "", penalize: Callable[[Any, str], None] | None = None,
                 on_event: Callable[[dict], None] | None = None,
                 request_timeout: float = REQUEST_TIMEOUT,
                 keep_checkpoints: int = DEFAULT_KEEP_CHECKPOINTS,
                 position: ChainVerifier | None = None) -> None:
        self.host = host
        self.store, self.models = store, models
        self.me = me
        self.penalize = penalize
        self.on_event = on_event or (lambda e: None)
        self.request_timeout = request_timeout
        self.keep_checkpoints = keep_checkpoints
        #: our chain's position (the node's own, when it shares it): sessions start from a copy
        self._verifier = position if position is not None else ChainVerifier(genesis)
        self._hint = trio.Event()
        #: refused requests we served, by code; peers dropped while syncing, by reason
        self.refused: dict[str, int] = {}
        self.dropped: dict[str, str] = {}

    def install(self, serve_checkpoints: bool = True) -> None:
        """Answer sync requests, and (unless a blob server is installed elsewhere) serve our
        checkpoints over `/cmfl/blob/1`."""
        from libp2p.custom_types import TProtocol

        self.host.set_stream_handler(TProtocol(PROTOCOL_ID), self.handle)
        if serve_checkpoints:
            BlobServer(CheckpointSource(self.models)).install(self.host)  # type: ignore[arg-type]

    # serving -----------------------------------------------------------------------------------
    async def handle(self, stream: Any) -> None:
        """Answer one request on an inbound stream."""
        peer = str(stream.muxed_conn.peer_id)[-8:] if hasattr(stream, "muxed_conn") else "?"
        try:
            with trio.fail_after(self.request_timeout):
                try:
                    request = decode_request(await read_frame(stream, MAX_REQUEST_BYTES))
                    response: Response = answer(request, self.store, self.models)
                except SyncError as exc:
                    self.refused[exc.code] = self.refused.get(exc.code, 0) + 1
                    log.warning("refused sync request from %s: %s", peer, exc)
                    response = ErrorResponse(exc.code)
                await stream.write(frame(encode_response(response)))
        except trio.TooSlowError:
            self.refused["timeout"] = self.refused.get("timeout", 0) + 1
        except Exception as exc:  # the peer hung up mid-write: nothing to do but log
            log.info("sync stream to %s failed: %s", peer, type(exc).__name__)
        finally:
            try:
                await stream.close()
            except Exception:
                pass

    # asking ------------------------------------------------------------------------------------
    async def request(self, peer: Any, request: Request) -> Response:
        """One request to one peer; SyncError on any failure (unreachable, slow, garbage)."""
        async def read_response(stream: Any) -> Response:
            return decode_response(await read_frame(stream, MAX_RESPONSE_BYTES), request)

        try:
            return await request_over_stream(self.host, peer, PROTOCOL_ID,
                                             encode_request(request), read_response,
                                             self.request_timeout, passthrough=(SyncError,))
        except TransferError as exc:
            raise SyncError(exc.code, str(exc).split(": ", 1)[-1]) from None

    async def fetch_ahead(self, peers: list[Any] | None = None) -> Finished | None:
        """Verified blocks beyond our head and the last one's checkpoint, from `peers` (default:
        every connected peer); None if no peer is ahead or nothing could be had."""
        peers = list(self.host.get_connected_peers() if peers is None else peers)
        by_name = {str(p): p for p in peers}
        self._verifier.follow(self.store)  # past the blocks we committed ourselves
        session = SyncSession(copy.copy(self._verifier), sorted(by_name))
        started = time.monotonic()
        actions = session.start()
        while True:
            asks = [a for a in actions if isinstance(a, Ask)]
            later: list = []
            for action in actions:
                if isinstance(action, DropPeer):
                    self._dropped(action, by_name[action.peer])
                elif isinstance(action, FetchModel):
                    later += await self._fetch_model(session, action, by_name)
                elif isinstance(action, Finished):
                    return self._finished(session, action, started)
            later += await self._ask_all(session, asks, by_name)
            if not later:
                raise AssertionError("sync session stalled")  # the core always answers
            actions = later

    async def _ask_all(self, session: SyncSession, asks: list[Ask], by_name: dict[str, Any]
                       ) -> list:
        """Send the asks concurrently; feed the answers to the session in a fixed order."""
        answers: dict[int, tuple[Response | None, str]] = {}

        async def one(i: int, ask: Ask) -> None:
            try:
                answers[i] = (await self.request(by_name[ask.peer], ask.request), "")
            except SyncError as exc:
                answers[i] = (None, str(exc))

        async with trio.open_nursery() as nursery:
            for i, ask in enumerate(asks):
                nursery.start_soon(one, i, ask)
        out: list = []
        for i, ask in enumerate(asks):
            response, failure = answers[i]
            out += (session.on_response(ask.peer, ask.request, response) if response is not None
                    else session.on_failure(ask.peer, ask.request, failure))
        return out

    async def _fetch_model(self, session: SyncSession, action: FetchModel,
                           by_name: dict[str, Any]) -> list:
        failures = []
        for name, size in action.offers:
            ref = BlobRef(action.digest, size)
            try:
                data = await fetch_blob(self.host, [by_name[name]], ref, on_bad_provider=lambda
                                        p, why: self._report(p, why))
            except TransferError as exc:
                failures.append(f"{name[-8:]}: {exc}")
                continue
            return session.on_model(data)
        return session.on_model_failure("; ".join(failures))

    def _report(self, peer: Any, reason: str) -> None:
        if self.penalize is not None:
            self.penalize(peer, reason)

    def _dropped(self, action: DropPeer, peer: Any) -> None:
        self.dropped[action.peer] = action.reason
        if action.penalize:
            log.warning("sync: dropped %s: %s", action.peer[-8:], action.reason)
            self._report(peer, "invalid-block")
        else:
            log.info("sync: not asking %s again: %s", action.peer[-8:], action.reason)
        self.on_event({"event": "sync-dropped", "peer": self.me, "from": action.peer,
                       "reason": action.reason, "penalized": action.penalize})

    def _finished(self, session: SyncSession, done: Finished, started: float
                  ) -> Finished | None:
        log.info("sync: %s (%d blocks verified in %.2fs)", done.outcome, len(session.blocks),
                 time.monotonic() - started)
        return done if done.blocks else None

    # storing -----------------------------------------------------------------------------------
    def apply(self, result: Finished) -> int:
        """Store a finished session's blocks beyond our head (the checkpoint first); the number
        of blocks added. Blocks we committed meanwhile must be the same ones (else: refused)."""
        head = self.store.head()
        try:
            new = beyond_head(self.store, -1 if head is None else head[0], result.blocks)
        except ForkError as exc:
            log.error("sync: %s: not applied", exc)
            return 0
        if not new or result.model is None:
            return 0
        self.models.put(result.model)
        self.store.append_many(new)
        retain_checkpoints(self.store, self.models, self.keep_checkpoints)
        first, last = new[0].block.height, new[-1].block.height
        log.info("sync: stored blocks %d..%d", first, last)
        self.on_event({"event": "synced", "peer": self.me, "height": last, "from": first,
                       "blocks": len(new), "hash": new[-1].block.hash().hex()})
        return len(new)

    async def catch_up(self, max_passes: int = 5) -> int:
        """Sync until no peer is ahead (the network may commit while we sync); blocks added."""
        added = 0
        for _ in range(max_passes):
            result = await self.fetch_ahead()
            if result is None:
                break
            added += self.apply(result)
        return added

    # lag hints ---------------------------------------------------------------------------------
    def hint_behind(self) -> None:
        """Something suggests we are behind (a message or block of a round past ours)."""
        self._hint.set()

    async def watch(self, deliver: Callable[[Finished], Awaitable[None]]) -> None:
        """On lag hints, fetch and verify what peers are ahead by, and `deliver` it (the round
        loop then stores it with `apply` between rounds). Hints only start an attempt: nothing
        is believed until its blocks verify, so a false hint costs a round of head requests."""
        while True:
            await self._hint.wait()
            self._hint = trio.Event()
            result = await self.fetch_ahead()
            if result is not None:
                await deliver(result)
            await trio.sleep(MIN_SYNC_INTERVAL)
