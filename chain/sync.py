"""Chain sync as a pure state machine, and its wire messages (canonical CBOR, size-bounded).

A new or lagging peer asks its peers for their heads, then for blocks from its own height on,
checks each block with `chain.verify.ChainVerifier` before asking for the next, and finally asks
for the checkpoint of the last verified block by hash. It trusts no single responder: a peer
that serves an invalid block is dropped (and reported for scoring) and the rest of the range is
asked of the next peer; blocks already verified stay verified whoever served them. Nothing is
written here: the session ends with the verified blocks and model bytes, which the driver
(`p2p_node.sync_service`) stores in one step.

Protocol (`/cmfl/sync/1`, one request and one response per stream, each a u32be length and
canonical CBOR):

    {"t": "head"}                              -> {"t": "head", "height": int|null, "hash": bytes|null}
    {"t": "blocks", "start": int, "count": n}  -> {"t": "blocks", "blocks": [committed block bytes]}
    {"t": "model", "hash": bytes}              -> {"t": "model", "size": int|null}
    anything else                              -> {"t": "error", "reason": str}

Model bytes move over `/cmfl/blob/1` (gossip.transfer: 4 MiB chunks, hash-checked).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol, Union

import cbor2

from chain.block import BlockError, CommittedBlock
from gossip.cbor_profile import CborProfileError, decode_canonical
from chain.verify import ChainVerifier

PROTOCOL_ID = "/cmfl/sync/1"
#: A request is a few dozen bytes.
MAX_REQUEST_BYTES = 256
#: A response stays under py-libp2p's comfortable stream message size (it lost one of 8 MiB).
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
#: Blocks asked for (and served) per request.
MAX_BLOCKS_PER_RESPONSE = 64
#: Largest checkpoint a syncing peer will fetch.
MAX_MODEL_BYTES = 512 * 1024 * 1024


class SyncError(ValueError):
    """A sync message that is malformed or over its limit: `code` names the class."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


# wire messages -------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeadRequest:
    """What is your chain's head?"""


@dataclass(frozen=True)
class BlocksRequest:
    """Send up to `count` committed blocks from height `start` on."""

    start: int
    count: int


@dataclass(frozen=True)
class ModelRequest:
    """Do you hold the checkpoint with this hash, and how big is it?"""

    digest: bytes


Request = Union[HeadRequest, BlocksRequest, ModelRequest]


@dataclass(frozen=True)
class HeadResponse:
    """A peer's head: height and block hash (both None for an empty chain)."""

    height: int | None
    hash: bytes | None


@dataclass(frozen=True)
class BlocksResponse:
    """Encoded committed blocks, consecutive from the height asked for."""

    blocks: tuple[bytes, ...]


@dataclass(frozen=True)
class ModelResponse:
    """The checkpoint's size in bytes, or None if not held."""

    size: int | None


@dataclass(frozen=True)
class ErrorResponse:
    """The request was refused; why."""

    reason: str


Response = Union[HeadResponse, BlocksResponse, ModelResponse, ErrorResponse]


def encode_request(request: Request) -> bytes:
    if isinstance(request, HeadRequest):
        obj: dict[str, Any] = {"t": "head"}
    elif isinstance(request, BlocksRequest):
        obj = {"t": "blocks", "start": request.start, "count": request.count}
    else:
        obj = {"t": "model", "hash": request.digest}
    return cbor2.dumps(obj, canonical=True)


def decode_request(data: bytes) -> Request:
    """Parse an untrusted request; SyncError if it is not one we serve."""
    obj = _loads(data, MAX_REQUEST_BYTES)
    kind = obj.get("t") if isinstance(obj, dict) else None
    if kind == "head" and set(obj) == {"t"}:
        return HeadRequest()
    if kind == "blocks" and set(obj) == {"t", "start", "count"}:
        start, count = _uint(obj["start"], "start"), _uint(obj["count"], "count")
        if not 0 < count <= MAX_BLOCKS_PER_RESPONSE:
            raise SyncError("malformed", f"count must be 1..{MAX_BLOCKS_PER_RESPONSE}")
        return BlocksRequest(start, count)
    if kind == "model" and set(obj) == {"t", "hash"}:
        return ModelRequest(_digest(obj["hash"]))
    raise SyncError("malformed", "not a head, blocks or model request")


def encode_response(response: Response) -> bytes:
    if isinstance(response, HeadResponse):
        obj: dict[str, Any] = {"t": "head", "height": response.height, "hash": response.hash}
    elif isinstance(response, BlocksResponse):
        obj = {"t": "blocks", "blocks": list(response.blocks)}
    elif isinstance(response, ModelResponse):
        obj = {"t": "model", "size": response.size}
    else:
        obj = {"t": "error", "reason": response.reason}
    return cbor2.dumps(obj, canonical=True)


def decode_response(data: bytes, request: Request) -> Response:
    """Parse an untrusted response to `request`; SyncError unless it is a well-formed answer."""
    obj = _loads(data, MAX_RESPONSE_BYTES)
    kind = obj.get("t") if isinstance(obj, dict) else None
    if kind == "error" and set(obj) == {"t", "reason"} and isinstance(obj["reason"], str):
        # The responder's words, logged: cut short and printable only.
        return ErrorResponse("".join(c if c.isprintable() else "?" for c in obj["reason"][:200]))
    if isinstance(request, HeadRequest) and kind == "head" and set(obj) == {"t", "height",
                                                                            "hash"}:
        if obj["height"] is None and obj["hash"] is None:
            return HeadResponse(None, None)
        return HeadResponse(_uint(obj["height"], "height"), _digest(obj["hash"]))
    if isinstance(request, BlocksRequest) and kind == "blocks" and set(obj) == {"t", "blocks"}:
        blocks = obj["blocks"]
        if not isinstance(blocks, list) or not all(isinstance(b, bytes) for b in blocks):
            raise SyncError("malformed", "blocks is not a list of byte strings")
        if len(blocks) > request.count:
            raise SyncError("malformed", f"{len(blocks)} blocks for a request of {request.count}")
        return BlocksResponse(tuple(blocks))
    if isinstance(request, ModelRequest) and kind == "model" and set(obj) == {"t", "size"}:
        return ModelResponse(None if obj["size"] is None else _uint(obj["size"], "size"))
    raise SyncError("malformed", f"not an answer to a {type(request).__name__}")


def _loads(data: bytes, limit: int) -> Any:
    if len(data) > limit:
        raise SyncError("oversize", f"{len(data)} bytes > {limit}")
    try:
        return decode_canonical(data)
    except CborProfileError as exc:
        raise SyncError("undecodable", f"not profile CBOR ({exc})") from None


def _uint(v: Any, name: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**63:
        raise SyncError("malformed", f"{name} is not a non-negative 63-bit integer")
    return v


def _digest(v: Any) -> bytes:
    if not isinstance(v, bytes) or len(v) != 32:
        raise SyncError("malformed", "hash is not 32 bytes")
    return v


# serving -------------------------------------------------------------------------------------
class ChainReader(Protocol):
    """What serving needs from a peer's stores (chain.store.BlockStore and ModelStore)."""

    def head(self) -> tuple[int, bytes] | None: ...

    def get_raw(self, start: int, count: int, max_bytes: int) -> list[bytes]: ...


class ModelSizes(Protocol):
    def size(self, digest: bytes) -> int | None: ...


def answer(request: Request, chain: ChainReader, models: ModelSizes) -> Response:
    """The response to one request, from the local chain."""
    if isinstance(request, HeadRequest):
        head = chain.head()
        return HeadResponse(None, None) if head is None else HeadResponse(*head)
    if isinstance(request, BlocksRequest):
        # Leave room for the CBOR framing of the list around the blocks.
        return BlocksResponse(tuple(chain.get_raw(request.start, request.count,
                                                  MAX_RESPONSE_BYTES - 4096)))
    return ModelResponse(models.size(request.digest))


# the session ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ask:
    """Send `request` to `peer`; feed the answer to `on_response` (or `on_failure`)."""

    peer: str
    request: Request


@dataclass(frozen=True)
class FetchModel:
    """Fetch the checkpoint `digest` from the first of `offers` (peer, claimed size) that serves
    it with the right hash; feed it to `on_model` (or `on_model_failure`)."""

    digest: bytes
    offers: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class DropPeer:
    """Ask this peer nothing more this session; with `penalize`, report it (its score)."""

    peer: str
    reason: str
    penalize: bool


@dataclass(frozen=True)
class Finished:
    """The session is over: verified blocks beyond the starting head (maybe none), the last
    one's checkpoint, and why it ended."""

    blocks: tuple[CommittedBlock, ...]
    model: bytes | None
    outcome: str


Action = Union[Ask, FetchModel, DropPeer, Finished]


@dataclass
class SyncSession:
    """One catch-up attempt from `verifier`'s position against `peers`.

    Inputs: answers and failures of the requests it asked for, and the fetched model. Outputs:
    requests, drops and finally `Finished`. One request is outstanding at a time after the
    heads, so a bad block costs one batch at most.
    """

    verifier: ChainVerifier
    peers: list[str]
    batch: int = MAX_BLOCKS_PER_RESPONSE
    claims: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    blocks: list[CommittedBlock] = field(default_factory=list)
    _waiting: set[str] = field(default_factory=set)
    _model_sizes: dict[str, int] = field(default_factory=dict)
    _model_asked: bool = False
    _fetching: bool = False
    _done: bool = False

    def start(self) -> list[Action]:
        """Ask every peer for its head."""
        self._waiting = set(self.peers)
        if not self.peers:
            return self._finish(None, "no peers to sync from")
        return [Ask(p, HeadRequest()) for p in self.peers]

    @property
    def next_height(self) -> int:
        return self.verifier.height

    def on_response(self, peer: str, request: Request, response: Response) -> list[Action]:
        """A peer answered one of our requests."""
        if self._done or peer not in self._waiting:
            return []
        self._waiting.discard(peer)
        if isinstance(response, ErrorResponse):
            return self._drop(peer, f"refused: {response.reason}", False) + self._plan()
        if isinstance(response, HeadResponse):
            if response.height is not None:
                self.claims[peer] = response.height
            return self._plan()
        if isinstance(response, BlocksResponse):
            assert isinstance(request, BlocksRequest)
            return self._on_blocks(peer, request, response.blocks)
        assert isinstance(response, ModelResponse)
        if response.size is not None:
            self._model_sizes[peer] = response.size
        return self._plan()

    def on_failure(self, peer: str, request: Request, reason: str) -> list[Action]:
        """A request failed (unreachable, timeout, garbage): ask that peer nothing more."""
        if self._done or peer not in self._waiting:
            return []
        self._waiting.discard(peer)
        return self._drop(peer, reason, False) + self._plan()

    def on_model(self, data: bytes) -> list[Action]:
        """The checkpoint of the last verified block arrived (hash-checked here again)."""
        if self._done:
            return []
        if hashlib.sha256(data).digest() != self.verifier.head_model:
            return self._finish(None, "fetched checkpoint does not match the head block")
        return self._finish(data, f"synced to height {self.next_height - 1}")

    def on_model_failure(self, reason: str) -> list[Action]:
        """No provider delivered the checkpoint: the blocks cannot become our head yet."""
        if self._done:
            return []
        return self._finish(None, f"checkpoint unavailable: {reason}")

    # internals -----------------------------------------------------------------------------
    def _on_blocks(self, peer: str, request: BlocksRequest, raws: tuple[bytes, ...]
                   ) -> list[Action]:
        if not raws:
            return self._drop(peer, f"claimed height {self.claims.get(peer)} but served no "
                                    f"block {request.start}", False) + self._plan()
        for raw in raws:
            try:
                committed = CommittedBlock.decode(raw)
                self.verifier.check(committed)
            except BlockError as exc:
                return self._drop(peer, f"invalid block {self.next_height}: {exc}", True) + \
                    self._plan()
            self.verifier.advance(committed)
            self.blocks.append(committed)
        return self._plan()

    def _drop(self, peer: str, reason: str, penalize: bool) -> list[Action]:
        self.dropped[peer] = reason
        self.claims.pop(peer, None)
        self._model_sizes.pop(peer, None)
        return [DropPeer(peer, reason, penalize)]

    def _plan(self) -> list[Action]:
        """The next request, once nothing is outstanding."""
        if self._done or self._waiting:
            return []
        ahead = sorted((p for p, h in self.claims.items() if h >= self.next_height),
                       key=lambda p: (-self.claims[p], p))
        if ahead:
            peer = ahead[0]
            count = min(self.batch, self.claims[peer] - self.next_height + 1)
            self._waiting = {peer}
            return [Ask(peer, BlocksRequest(self.next_height, count))]
        if not self.blocks:
            return self._finish(None, "no peer is ahead" if not self.dropped else
                                "no honest peer is ahead")
        if self._fetching:
            return []
        if not self._model_asked:
            self._model_asked = True
            # Peers at or past the last verified block hold it, and (retention) its checkpoint.
            self._waiting = {p for p, h in self.claims.items() if h >= self.next_height - 1}
            if self._waiting:
                return [Ask(p, ModelRequest(self._head_model)) for p in sorted(self._waiting)]
        offers = [(p, n) for p, n in sorted(self._model_sizes.items()) if n <= MAX_MODEL_BYTES]
        if not offers:
            return self._finish(None, "no peer holds the head block's checkpoint")
        # The most commonly claimed size first: a liar's odd size is tried last.
        offers.sort(key=lambda o: -sum(1 for _, n in offers if n == o[1]))
        self._fetching = True
        return [FetchModel(self._head_model, tuple(offers))]

    @property
    def _head_model(self) -> bytes:
        assert self.verifier.head_model is not None  # there are verified blocks
        return self.verifier.head_model

    def _finish(self, model: bytes | None, outcome: str) -> list[Action]:
        self._done = True
        return [Finished(tuple(self.blocks) if model is not None else (), model, outcome)]
