"""Sealing an update to its readers: one content key, wrapped for each reader's X25519 key.

A sealed payload is the bytes an update would carry in the clear (its tensor or delta map's
canonical CBOR, inline or as a blob), encrypted once with a 32-byte content key (XSalsa20-
Poly1305, libsodium's `crypto_secretbox_easy`), and that key sealed (`crypto_box_seal`) to each
reader's X25519 public key, which is derived from the Ed25519 key its peer id inlines
(`crypto_sign_ed25519_pk_to_curve25519`): no key exchange, a peer id is enough to seal to it.
The layout is normative (docs/protocol.md, "Sealed updates"). Pure: no I/O, no clock.

Sealing is deterministic for one sender and one plaintext: the content key and nonce are a keyed
BLAKE2b of the plaintext under the sender's own secret (a synthetic-IV construction, fresh per
distinct plaintext and unpredictable without the sender's key). A trainer restarted mid-round
re-seals its update to the very ciphertext its written-ahead announcement names. Only the key
wraps use fresh randomness (crypto_box_seal's ephemeral key); they travel in the signed payload.

Key commitment: XSalsa20-Poly1305 does not commit to its key. A sender can wrap a different key
for each reader, and can even craft one ciphertext that opens under two keys to two plaintexts
("invisible salamanders"), so two honest readers of one signed update would decide the round
on different tensors and neither could show the other who cheated. The signed body therefore
carries `commit` = BLAKE2b-256(content key, person "cmfl-key-commit") (`key_commitment`), and a
reader opens only with a wrapped key that hashes to it: there is one such key (collision
resistance), decryption under it is deterministic, so every reader gets the same plaintext or
none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import nacl.bindings as sodium
import nacl.encoding
import nacl.exceptions
import nacl.hash
import nacl.public
import nacl.secret

from gossip.peer_keys import Signer, public_key_from_peer_id

NONCE_BYTES = nacl.secret.SecretBox.NONCE_SIZE  # 24
KEY_BYTES = nacl.secret.SecretBox.KEY_SIZE  # 32
#: what sealing adds to a payload: the nonce and the Poly1305 tag
SEAL_OVERHEAD = NONCE_BYTES + nacl.secret.SecretBox.MACBYTES  # 40
#: one key wrap: crypto_box_seal's ephemeral public key, the tag and the 32-byte content key
WRAP_BYTES = sodium.crypto_box_SEALBYTES + KEY_BYTES  # 80
#: the key commitment of an update body (`commit`): an unkeyed BLAKE2b-256 of the content key
COMMIT_BYTES = 32
COMMIT_PERSON = b"cmfl-key-commit"


class SealError(ValueError):
    """A sealed payload that cannot be opened (by us) or is malformed; the text says why."""


def reader_key(peer_id: str) -> bytes:
    """The X25519 public key a payload is sealed to for `peer_id` (from its Ed25519 key)."""
    try:
        return sodium.crypto_sign_ed25519_pk_to_curve25519(public_key_from_peer_id(peer_id))
    except nacl.exceptions.CryptoError as exc:  # a point that is not on the curve
        raise ValueError(f"peer id {peer_id[-8:]} has no X25519 form: {exc}") from None


def key_commitment(content_key: bytes) -> bytes:
    """The `commit` of a payload sealed under `content_key`: BLAKE2b-256, personalised, so it
    binds the one key every reader must unwrap (XSalsa20-Poly1305 alone binds none)."""
    if len(content_key) != KEY_BYTES:
        raise ValueError(f"a content key has {KEY_BYTES} bytes, not {len(content_key)}")
    return nacl.hash.blake2b(content_key, digest_size=COMMIT_BYTES, person=COMMIT_PERSON,
                             encoder=nacl.encoding.RawEncoder)


class SealKey:
    """A peer's X25519 private key, derived from its Ed25519 identity: opens what is sealed to
    it, and keys the content-key derivation of what it seals."""

    def __init__(self, signer: Signer) -> None:
        self.peer_id = signer.peer_id
        secret = sodium.crypto_sign_ed25519_sk_to_curve25519(signer.seed + signer.public_key)
        self._box_key = nacl.public.PrivateKey(secret)
        self._secret = secret

    def content_key(self, context: bytes, plaintext: bytes) -> tuple[bytes, bytes]:
        """The (content key, nonce) this peer seals `plaintext` with in `context`."""
        def prf(person: bytes, size: int) -> bytes:
            return nacl.hash.blake2b(context + nacl.hash.sha256(
                plaintext, encoder=nacl.encoding.RawEncoder), digest_size=size,
                key=self._secret, person=person, encoder=nacl.encoding.RawEncoder)

        return prf(b"cmfl-seal-key", KEY_BYTES), prf(b"cmfl-seal-nonce", NONCE_BYTES)

    def unwrap(self, wrap: bytes) -> bytes:
        """The content key inside a key wrap sealed to us; SealError if it does not open."""
        try:
            key = nacl.public.SealedBox(self._box_key).decrypt(wrap)
        except nacl.exceptions.CryptoError:
            raise SealError("the key wrap for us does not open (sealed to another key, or "
                            "altered)") from None
        if len(key) != KEY_BYTES:
            raise SealError(f"the key wrap holds {len(key)} bytes, not a {KEY_BYTES}-byte key")
        return key


@dataclass(frozen=True)
class Sealed:
    """A sealed payload: the ciphertext (nonce, tag, encrypted bytes), one key wrap per
    reader, by peer id, and the commitment to the content key they all wrap (`commit`)."""

    ciphertext: bytes
    wraps: dict[str, bytes]
    key_commit: bytes

    def wraps_obj(self) -> dict[str, bytes]:
        """The CBOR-ready `keys` map of an update body."""
        return dict(sorted(self.wraps.items()))


def seal(plaintext: bytes, readers: Iterable[str], content_key: bytes, nonce: bytes) -> Sealed:
    """Encrypt `plaintext` under `content_key`, wrap the key for each reader and commit to it."""
    if len(content_key) != KEY_BYTES or len(nonce) != NONCE_BYTES:
        raise ValueError("a content key has 32 bytes and a nonce 24")
    ciphertext = bytes(nacl.secret.SecretBox(content_key).encrypt(plaintext, nonce))
    wraps = {peer: nacl.public.SealedBox(nacl.public.PublicKey(reader_key(peer))).encrypt(
        content_key) for peer in sorted(set(readers))}
    return Sealed(ciphertext, wraps, key_commitment(content_key))


def sealed_size(plaintext_size: int) -> int:
    """Bytes of the ciphertext of a plaintext of `plaintext_size` bytes."""
    return plaintext_size + SEAL_OVERHEAD


def wraps_size(readers: Iterable[str]) -> int:
    """Rough CBOR size of the `keys` map for these readers (for the inline-or-blob choice)."""
    return sum(len(peer) + WRAP_BYTES + 8 for peer in readers) + 8


def parse_wraps(obj: Any, readers: Iterable[str]) -> dict[str, bytes]:
    """Check an untrusted `keys` map: exactly one WRAP_BYTES-byte wrap per reader; SealError."""
    want = set(readers)
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise SealError("keys is not a map of peer ids")
    if set(obj) != want:
        missing, extra = sorted(want - set(obj)), sorted(set(obj) - want)
        raise SealError("keys do not name exactly this round's readers" +
                        (f" (missing {', '.join(p[-8:] for p in missing)})" if missing else "") +
                        (f" (not readers: {', '.join(p[-8:] for p in extra)})" if extra else ""))
    for peer, wrap in obj.items():
        if not isinstance(wrap, bytes) or len(wrap) != WRAP_BYTES:
            raise SealError(f"key wrap for {peer[-8:]} is not {WRAP_BYTES} bytes")
    return dict(obj)


def parse_commit(obj: Any) -> bytes:
    """Check an untrusted `commit`: COMMIT_BYTES bytes; SealError."""
    if not isinstance(obj, bytes) or len(obj) != COMMIT_BYTES:
        raise SealError(f"commit is not {COMMIT_BYTES} bytes")
    return obj


def open_sealed(ciphertext: bytes, wraps: dict[str, bytes], key: SealKey,
                key_commit: bytes) -> bytes:
    """The plaintext of a sealed payload, opened with our key and only with the committed
    content key; SealError says why not."""
    wrap = wraps.get(key.peer_id)
    if wrap is None:
        raise SealError("not sealed to us (no key wrap for our peer id)")
    parse_commit(key_commit)
    if not isinstance(ciphertext, bytes) or len(ciphertext) < SEAL_OVERHEAD:
        raise SealError(f"ciphertext shorter than its {SEAL_OVERHEAD}-byte nonce and tag")
    content_key = key.unwrap(wrap)
    # Before decrypting: a key other than the committed one could open this very ciphertext
    # to another plaintext than the other readers get (the cipher does not commit to its key).
    if key_commitment(content_key) != key_commit:
        raise SealError("the key wrap for us holds a key other than the committed one (its "
                        "sender's signed commit names another content key)")
    try:
        return nacl.secret.SecretBox(content_key).decrypt(ciphertext)
    except nacl.exceptions.CryptoError:
        raise SealError("ciphertext does not open under the committed key (tampered)") from None
