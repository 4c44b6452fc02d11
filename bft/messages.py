"""The committee's pBFT messages: frozen dataclasses, one body encode/decode pair each.

A message travels in a signed `Envelope` whose kind is `message.kind`, whose round is the height
and whose payload is `message.body()`; the envelope's sender and signature are the message's.
So the core never signs: it emits messages with an empty signature, the driver signs them, and
every message that comes back in (directly or embedded in another) carries the signature it was
sent with, which is what certificates are made of.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Union

#: Largest view number we accept; far beyond any real back-off, small enough for CBOR and sums.
MAX_VIEW = 2**32


class MessageError(ValueError):
    """A pBFT message body that is malformed; the text says why."""


@dataclass(frozen=True)
class PrePrepare:
    """The leader's proposal in view 0 (later views propose through `NewView`)."""

    kind: ClassVar[str] = "pre_prepare"
    height: int
    view: int
    value_hash: bytes
    value: bytes
    sender: str = ""
    signature: bytes = b""

    def body(self) -> dict[str, Any]:
        return {"view": self.view, "value_hash": self.value_hash, "value": self.value}


@dataclass(frozen=True)
class _Vote:
    """A member's signed statement about one (height, view, value_hash)."""

    kind: ClassVar[str]
    height: int
    view: int
    value_hash: bytes
    sender: str = ""
    signature: bytes = b""

    def body(self) -> dict[str, Any]:
        return {"view": self.view, "value_hash": self.value_hash}


@dataclass(frozen=True)
class Prepare(_Vote):
    """A member accepted and validated the proposal `value_hash` in `view`."""

    kind: ClassVar[str] = "prepare"


@dataclass(frozen=True)
class Commit(_Vote):
    """A member saw a quorum prepare `value_hash` in `view`; a quorum of these decides."""

    kind: ClassVar[str] = "commit"


@dataclass(frozen=True)
class PreparedCertificate:
    """A quorum of signed prepares for one (view, value): the value may have been decided.

    The value travels unsigned: it is bound to `value_hash` by the core's digest function, so a
    new leader can re-propose it without having seen the original proposal.
    """

    view: int
    value_hash: bytes
    value: bytes
    prepares: tuple[Prepare, ...]

    def to_obj(self) -> dict[str, Any]:
        return {"view": self.view, "value_hash": self.value_hash, "value": self.value,
                "prepares": [_embed(p) for p in self.prepares]}

    @classmethod
    def from_obj(cls, height: int, o: Any) -> PreparedCertificate:
        _fields(o, {"view", "value_hash", "value", "prepares"}, "prepared certificate")
        if not isinstance(o["prepares"], list):
            raise MessageError("prepares is not a list")
        prepares = tuple(_unembed(Prepare, height, e) for e in o["prepares"])
        return cls(_view(o["view"]), _hash(o["value_hash"]), _bytes(o["value"]), prepares)


@dataclass(frozen=True)
class ViewChange:
    """A member gives up on the views below `view` and reports its highest prepared value."""

    kind: ClassVar[str] = "view_change"
    height: int
    view: int
    prepared: PreparedCertificate | None
    sender: str = ""
    signature: bytes = b""

    def body(self) -> dict[str, Any]:
        return {"view": self.view,
                "prepared": None if self.prepared is None else self.prepared.to_obj()}


@dataclass(frozen=True)
class NewView:
    """The leader of `view` opens it: a quorum of view changes, and the proposal they justify.

    It is the pre-prepare of `view`: if any of the view changes holds a prepared certificate, the
    value must be the one of the highest-view certificate; otherwise the leader is free.
    """

    kind: ClassVar[str] = "new_view"
    height: int
    view: int
    value_hash: bytes
    value: bytes
    view_changes: tuple[ViewChange, ...]
    sender: str = ""
    signature: bytes = b""

    def body(self) -> dict[str, Any]:
        return {"view": self.view, "value_hash": self.value_hash, "value": self.value,
                "view_changes": [_embed(vc) for vc in self.view_changes]}


Message = Union[PrePrepare, Prepare, Commit, ViewChange, NewView]

#: Envelope kinds of the pBFT messages, for the gossip layer's list of accepted kinds.
KINDS = ("pre_prepare", "prepare", "commit", "view_change", "new_view")


def unsigned(message: Message) -> Message:
    """The message without its signature: what two copies must share to be the same message."""
    return replace(message, signature=b"")


def decode_message(kind: str, height: int, sender: str, body: Any, signature: bytes) -> Message:
    """Parse an untrusted envelope payload into a message; MessageError if it is malformed."""
    try:
        return _decode(kind, height, sender, body, signature)
    except MessageError:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        raise MessageError(f"malformed {kind}: {exc}") from None


def _decode(kind: str, height: int, sender: str, o: Any, signature: bytes) -> Message:
    height, sender, signature = _int(height), _id(sender), _bytes(signature)
    if kind in ("prepare", "commit"):
        _fields(o, {"view", "value_hash"}, kind)
        cls = Prepare if kind == "prepare" else Commit
        return cls(height, _view(o["view"]), _hash(o["value_hash"]), sender, signature)
    if kind == "pre_prepare":
        _fields(o, {"view", "value_hash", "value"}, kind)
        return PrePrepare(height, _view(o["view"]), _hash(o["value_hash"]), _bytes(o["value"]),
                          sender, signature)
    if kind == "view_change":
        _fields(o, {"view", "prepared"}, kind)
        prepared = None if o["prepared"] is None else PreparedCertificate.from_obj(
            height, o["prepared"])
        return ViewChange(height, _view(o["view"]), prepared, sender, signature)
    if kind == "new_view":
        _fields(o, {"view", "value_hash", "value", "view_changes"}, kind)
        if not isinstance(o["view_changes"], list):
            raise MessageError("view_changes is not a list")
        vcs = tuple(_unembed(ViewChange, height, e) for e in o["view_changes"])
        return NewView(height, _view(o["view"]), _hash(o["value_hash"]), _bytes(o["value"]), vcs,
                       sender, signature)
    raise MessageError(f"unknown pBFT kind ({type(kind).__name__})")


def _embed(message: Message) -> list[Any]:
    # An embedded message keeps its sender and signature so that anyone can re-check it; its
    # height is the embedding message's.
    return [message.sender, message.signature, message.body()]


def _unembed(cls: type[Message], height: int, e: Any) -> Any:
    if not isinstance(e, list) or len(e) != 3:
        raise MessageError(f"embedded {cls.kind} is not [sender, signature, body]")
    return _decode(cls.kind, height, e[0], e[2], e[1])


def _fields(o: Any, names: set[str], what: str) -> None:
    if not isinstance(o, dict) or set(o) != names:
        raise MessageError(f"{what} body does not have exactly the fields {sorted(names)}")


def _int(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise MessageError("expected a non-negative integer")
    return v


def _view(v: Any) -> int:
    if _int(v) >= MAX_VIEW:
        raise MessageError("view number out of range")
    return int(v)


def _bytes(v: Any) -> bytes:
    if not isinstance(v, bytes):
        raise MessageError(f"expected bytes, got {type(v).__name__}")
    return v


def _hash(v: Any) -> bytes:
    if not isinstance(v, bytes) or len(v) != 32:
        raise MessageError("expected a 32-byte hash")
    return v


def _id(v: Any) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= 128:
        raise MessageError("expected a member id string")
    return v
