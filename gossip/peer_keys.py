"""Ed25519 keys and the libp2p peer IDs derived from them, without a libp2p import.

A libp2p peer ID for an Ed25519 key is the identity multihash of the protobuf-encoded public key,
so the public key can be read back out of the ID: a peer ID alone is enough to check a signature.
"""

from __future__ import annotations

import base58
import nacl.exceptions
import nacl.signing

# identity multihash (0x00, length 0x24) of the protobuf PublicKey{Type: Ed25519 (1), Data: 32 bytes}
_PEER_ID_PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])


def peer_id_from_public_key(public_key: bytes) -> str:
    """The base58 libp2p peer ID of a 32-byte Ed25519 public key."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key has 32 bytes")
    return base58.b58encode(_PEER_ID_PREFIX + public_key).decode("ascii")


def public_key_from_peer_id(peer_id: str) -> bytes:
    """The Ed25519 public key inlined in a peer ID; ValueError if it is not an Ed25519 ID."""
    try:
        raw = base58.b58decode(peer_id)
    except Exception as exc:  # base58 raises ValueError or TypeError on garbage
        raise ValueError(f"peer id is not base58: {exc}") from None
    if len(raw) != len(_PEER_ID_PREFIX) + 32 or not raw.startswith(_PEER_ID_PREFIX):
        raise ValueError("peer id does not inline an Ed25519 public key")
    return raw[len(_PEER_ID_PREFIX) :]


def verify_signature(peer_id: str, message: bytes, signature: bytes) -> bool:
    """True when `signature` is `peer_id`'s Ed25519 signature of `message`."""
    try:
        nacl.signing.VerifyKey(public_key_from_peer_id(peer_id)).verify(message, signature)
    except (ValueError, nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError,
            nacl.exceptions.TypeError):
        return False
    return True


class Signer:
    """One peer's Ed25519 signing key; the same key is its libp2p identity."""

    def __init__(self, seed: bytes) -> None:
        self._key = nacl.signing.SigningKey(seed)
        self.seed = seed
        self.public_key = bytes(self._key.verify_key)
        self.peer_id = peer_id_from_public_key(self.public_key)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of `message`."""
        return self._key.sign(message).signature
