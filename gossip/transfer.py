"""Moving payloads too large for gossip: a content-addressed blob store served over a stream.

A large update is announced over gossip as a signed `BlobRef` (SHA-256 and size) and fetched
from whoever announced or already holds it, over the libp2p stream protocol `/cmfl/blob/1`, in
chunks of at most 4 MiB (py-libp2p moved 1-6 MiB messages fine but failed on one of 8 MiB, its
read retry limit). Integrity is the hash: a blob is only ever returned once its SHA-256 matches
the signed reference, so a provider can waste our time but never change what we accept.

Wire format, one stream per chunk, everything length-bounded before it is read:

    request:  u32be length | CBOR {"h": digest(32 bytes), "o": offset, "n": length}
    response: u32be length | CBOR {"n": length} or {"err": code}  | then exactly n raw bytes
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence, TypeVar

import cbor2
import trio

# BlobRef and TransferError are gossip.blob_ref's (pure), re-exported: the transfer API.
from gossip.blob_ref import DEFAULT_MAX_BLOB_BYTES, DIGEST_BYTES, BlobRef, TransferError  # noqa: F401
from gossip.cbor_profile import CborProfileError, decode_canonical

log = logging.getLogger("gossip.transfer")
T = TypeVar("T")

PROTOCOL_ID = "/cmfl/blob/1"
#: Largest chunk asked for or served: py-libp2p lost one 8 MiB stream message, never <= 6 MiB.
MAX_CHUNK_BYTES = 4 * 1024 * 1024
#: A request or response header is a few dozen bytes; anything longer is not ours.
MAX_HEADER_BYTES = 256
#: Per-chunk deadline: 4 MiB at even 1 MiB/s fits; a stalled provider is dropped after this.
DEFAULT_CHUNK_TIMEOUT = 30.0
#: How long a server waits for a request before hanging up.
REQUEST_TIMEOUT = 10.0


@dataclass(frozen=True)
class ChunkRequest:
    """Ask for `length` bytes of blob `digest` from `offset`."""

    digest: bytes
    offset: int
    length: int

    def encode(self) -> bytes:
        return cbor2.dumps({"h": self.digest, "o": self.offset, "n": self.length},
                           canonical=True)


def decode_chunk_request(data: bytes) -> ChunkRequest:
    """Parse an untrusted request; TransferError if it is not one we serve."""
    obj = _loads_header(data)
    if not isinstance(obj, dict) or set(obj) != {"h", "o", "n"}:
        raise TransferError("malformed", "a chunk request is a map with keys h, o, n")
    digest, offset, length = obj["h"], obj["o"], obj["n"]
    if not isinstance(digest, bytes) or len(digest) != DIGEST_BYTES:
        raise TransferError("malformed", "digest is not 32 bytes")
    for name, v in (("offset", offset), ("length", length)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v >= 2**63:
            raise TransferError("malformed", f"{name} is not a non-negative 63-bit integer")
    if length > MAX_CHUNK_BYTES:
        raise TransferError("oversize", f"chunk of {length} bytes > {MAX_CHUNK_BYTES}")
    return ChunkRequest(digest, offset, length)


def encode_chunk_header(length: int | None, error: str | None = None) -> bytes:
    return cbor2.dumps({"err": error} if error is not None else {"n": length}, canonical=True)


def decode_chunk_header(data: bytes, expected_length: int) -> int:
    """Parse an untrusted response header; the payload length, which must be what we asked."""
    obj = _loads_header(data)
    if isinstance(obj, dict) and set(obj) == {"err"} and isinstance(obj["err"], str):
        said = "".join(c if c.isprintable() else "?" for c in obj["err"][:40])
        raise TransferError("refused", f"provider says {said}")
    if not isinstance(obj, dict) or set(obj) != {"n"}:
        raise TransferError("malformed", "a chunk header is a map with key n or err")
    length = obj["n"]
    if not isinstance(length, int) or isinstance(length, bool) or length != expected_length:
        # The type, not the value: a hostile value's formatting is its sender's to choose.
        raise TransferError("malformed", f"chunk length ({type(length).__name__}) is not "
                                         f"the {expected_length} asked for")
    return length


def _loads_header(data: bytes) -> Any:
    if len(data) > MAX_HEADER_BYTES:
        raise TransferError("oversize", f"header of {len(data)} bytes > {MAX_HEADER_BYTES}")
    try:
        return decode_canonical(data, max_depth=1, max_items=16)
    except CborProfileError as exc:
        raise TransferError("undecodable", f"not profile CBOR ({exc})") from None


class BlobStore:
    """Blobs in memory by SHA-256, bounded in total bytes (oldest put evicted first)."""

    def __init__(self, max_bytes: int = 1024 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._blobs: OrderedDict[bytes, bytes] = OrderedDict()
        self._total = 0

    def put(self, data: bytes) -> BlobRef:
        """Store `data` (if it fits at all) and return its reference."""
        ref = BlobRef.of(data)
        if ref.digest not in self._blobs and len(data) <= self.max_bytes:
            self._blobs[ref.digest] = data
            self._total += len(data)
            while self._total > self.max_bytes:
                _, old = self._blobs.popitem(last=False)
                self._total -= len(old)
        return ref

    def get(self, digest: bytes) -> bytes | None:
        return self._blobs.get(digest)

    def discard(self, digest: bytes) -> None:
        """Forget one blob (no longer worth serving)."""
        data = self._blobs.pop(digest, None)
        if data is not None:
            self._total -= len(data)

    def __contains__(self, digest: bytes) -> bool:
        return digest in self._blobs

    def __len__(self) -> int:
        return len(self._blobs)


class BlobSources:
    """Several blob sources served as one: the first that holds a digest answers."""

    def __init__(self, *sources: Any) -> None:
        self.sources = sources

    def get(self, digest: bytes) -> bytes | None:
        for source in self.sources:
            data = source.get(digest)
            if data is not None:
                return data
        return None


async def read_exactly(stream: Any, n: int) -> bytes:
    """Read exactly n bytes; TransferError("truncated") if the stream ends first."""
    parts, got = [], 0
    while got < n:
        try:
            part = await stream.read(n - got)
        except Exception as exc:  # StreamEOF, StreamReset, StreamError: all mean "ended"
            raise TransferError("truncated", f"stream ended after {got} of {n} bytes "
                                f"({type(exc).__name__})") from None
        if not part:
            raise TransferError("truncated", f"stream ended after {got} of {n} bytes")
        parts.append(part)
        got += len(part)
    return b"".join(parts)


async def read_frame(stream: Any, limit: int = MAX_HEADER_BYTES) -> bytes:
    """One length-prefixed message; TransferError("oversize") if it announces over `limit`."""
    length = int.from_bytes(await read_exactly(stream, 4), "big")
    if length > limit:
        raise TransferError("oversize", f"message of {length} bytes > {limit}")
    return await read_exactly(stream, length)


def frame(data: bytes) -> bytes:
    """`data` with its 4-byte big-endian length in front (what read_frame reads)."""
    return len(data).to_bytes(4, "big") + data


class BlobServer:
    """Serves chunks of the blobs in `store` to any peer that asks, over `/cmfl/blob/1`.

    Serving is read-only and hash-addressed, so it needs no authorisation: a peer learns nothing
    it could not get from the announcement's holder anyway. Bad requests are counted and logged.
    """

    def __init__(self, store: Any, request_timeout: float = REQUEST_TIMEOUT,
                 on_served: Callable[[str, int], None] | None = None) -> None:
        self.store = store
        #: told (peer ID, bytes) after each chunk served: the peer's byte accounting
        self.on_served = on_served
        self.request_timeout = request_timeout
        self.refused: dict[str, int] = {}
        self.served_bytes = 0

    def install(self, host: Any) -> None:
        from libp2p.custom_types import TProtocol

        host.set_stream_handler(TProtocol(PROTOCOL_ID), self.handle)

    async def handle(self, stream: Any) -> None:
        peer_id = str(stream.muxed_conn.peer_id) if hasattr(stream, "muxed_conn") else "?"
        peer = peer_id[-8:]
        try:
            with trio.fail_after(self.request_timeout):
                request = decode_chunk_request(await read_frame(stream))
            blob = self.store.get(request.digest)
            if blob is None:
                await stream.write(frame(encode_chunk_header(None, "not-found")))
            elif request.offset + request.length > len(blob):
                await stream.write(frame(encode_chunk_header(None, "out-of-range")))
            else:
                await stream.write(frame(encode_chunk_header(request.length)))
                await stream.write(blob[request.offset:request.offset + request.length])
                self.served_bytes += request.length
                if self.on_served is not None:
                    self.on_served(peer_id, request.length)
        except TransferError as exc:
            self.refused[exc.code] = self.refused.get(exc.code, 0) + 1
            log.warning("refused blob request from %s: %s", peer, exc)
        except trio.TooSlowError:
            self.refused["timeout"] = self.refused.get("timeout", 0) + 1
            log.warning("blob request from %s timed out", peer)
        except Exception as exc:  # the peer hung up mid-write: nothing to do but log
            log.info("blob stream to %s failed: %s", peer, type(exc).__name__)
        finally:
            try:
                await stream.close()
            except Exception:
                pass


async def request_over_stream(host: Any, peer: Any, protocol: str, request: bytes,
                              read_answer: Callable[[Any], Awaitable[T]], timeout: float,
                              passthrough: tuple[type[Exception], ...] = ()) -> T:
    """Open a stream to `peer` on `protocol`, send `request` (one frame), and return what
    `read_answer(stream)` reads, all within `timeout`. Anything else is a TransferError:
    "unreachable" (no stream), "failed" (the peer hung up or reset mid-request: py-libp2p raises
    StreamError, which must not escape into the caller's task tree), "timeout". TransferErrors
    and `passthrough` errors the reader raises on purpose pass through unchanged."""
    from libp2p.custom_types import TProtocol

    try:
        with trio.fail_after(timeout):
            try:
                stream = await host.new_stream(peer, [TProtocol(protocol)])
            except Exception as exc:
                raise TransferError("unreachable", f"{type(exc).__name__}: {exc}"[:120]) from None
            try:
                await stream.write(frame(request))
                return await read_answer(stream)
            except (TransferError, *passthrough):
                raise
            except Exception as exc:
                raise TransferError("failed", f"{type(exc).__name__}: {exc}"[:120]) from None
            finally:
                try:
                    await stream.close()
                except Exception:
                    pass
    except trio.TooSlowError:
        raise TransferError("timeout", f"no answer within {timeout:.0f}s") from None


async def fetch_chunk(host: Any, provider: Any, request: ChunkRequest,
                      timeout: float = DEFAULT_CHUNK_TIMEOUT) -> bytes:
    """One chunk from one provider; TransferError on refusal, timeout or a short read."""
    async def read_chunk(stream: Any) -> bytes:
        decode_chunk_header(await read_frame(stream), request.length)
        return await read_exactly(stream, request.length)

    return await request_over_stream(host, provider, PROTOCOL_ID, request.encode(), read_chunk,
                                     timeout)


async def fetch_blob(host: Any, providers: Sequence[Any], ref: BlobRef, *,
                     max_bytes: int = DEFAULT_MAX_BLOB_BYTES,
                     chunk_bytes: int = MAX_CHUNK_BYTES,
                     chunk_timeout: float = DEFAULT_CHUNK_TIMEOUT,
                     on_bad_provider: Callable[[Any, str], None] | None = None) -> bytes:
    """The blob `ref` names, from the first provider that serves all of it with the right hash.

    Providers are tried in order; one that refuses, stalls or fails is skipped, and one whose
    bytes do not hash to `ref.digest` is also reported to `on_bad_provider(peer, reason)` (the
    evidence the caller feeds to peer scoring). TransferError when no provider delivers.
    """
    if ref.size > max_bytes:
        raise TransferError("oversize", f"blob of {ref.size} bytes > {max_bytes}")
    if not 0 < chunk_bytes <= MAX_CHUNK_BYTES:
        raise ValueError(f"chunk_bytes must be in (0, {MAX_CHUNK_BYTES}]")
    failures = []
    for provider in providers:
        buf = bytearray()
        try:
            while len(buf) < ref.size:
                n = min(chunk_bytes, ref.size - len(buf))
                buf += await fetch_chunk(host, provider, ChunkRequest(ref.digest, len(buf), n),
                                         chunk_timeout)
        except TransferError as exc:
            failures.append(f"{str(provider)[-8:]}: {exc}")
            log.info("blob %s from %s failed: %s", ref.digest.hex()[:12], str(provider)[-8:], exc)
            continue
        if hashlib.sha256(buf).digest() == ref.digest:
            return bytes(buf)
        failures.append(f"{str(provider)[-8:]}: hash mismatch")
        log.warning("blob %s from %s does not match its hash", ref.digest.hex()[:12],
                    str(provider)[-8:])
        if on_bad_provider is not None:
            on_bad_provider(provider, "blob-hash-mismatch")
    raise TransferError("unavailable", f"blob {ref.digest.hex()[:12]} not fetched: "
                        + ("; ".join(failures) or "no providers"))
