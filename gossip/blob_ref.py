"""What a gossip announcement of a large payload carries (its hash and size), and the error of a
refused transfer: the pure half of gossip.transfer, which round cores read without importing the
stream protocol (trio, libp2p).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

#: Largest blob we fetch unless the caller says otherwise; the reference's size is checked first.
DEFAULT_MAX_BLOB_BYTES = 512 * 1024 * 1024
DIGEST_BYTES = 32


class TransferError(ValueError):
    """A refused or failed transfer: `code` names the class, the text the detail."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


@dataclass(frozen=True)
class BlobRef:
    """What a gossip announcement carries: the blob's SHA-256 and its size in bytes."""

    digest: bytes
    size: int

    @classmethod
    def of(cls, data: bytes) -> BlobRef:
        return cls(hashlib.sha256(data).digest(), len(data))

    def to_obj(self) -> dict[str, Any]:
        """The CBOR-ready form embedded in a signed envelope payload."""
        return {"h": self.digest, "z": self.size}

    @classmethod
    def from_obj(cls, o: Any, max_size: int = DEFAULT_MAX_BLOB_BYTES) -> BlobRef:
        """Parse an untrusted reference; TransferError if malformed or over `max_size`."""
        if not isinstance(o, dict) or set(o) != {"h", "z"}:
            raise TransferError("malformed", "a blob reference is a map with keys h, z")
        digest, size = o["h"], o["z"]
        if not isinstance(digest, bytes) or len(digest) != DIGEST_BYTES:
            raise TransferError("malformed", "blob digest is not 32 bytes")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 2**63:
            raise TransferError("malformed", "blob size is not a non-negative 63-bit integer")
        if size > max_size:
            raise TransferError("oversize", f"blob of {size} bytes > {max_size}")
        return cls(digest, size)
