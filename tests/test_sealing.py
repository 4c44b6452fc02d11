"""Sealed updates (gossip/sealing.py): only the readers a payload is sealed to can open it, and
every reader that opens it opens the one committed key, so the same plaintext."""

import random

import nacl.encoding
import nacl.hash
import nacl.public
import nacl.secret
import pytest

from gossip.peer_keys import Signer
from gossip.sealing import (
    COMMIT_BYTES,
    SEAL_OVERHEAD,
    WRAP_BYTES,
    SealError,
    SealKey,
    key_commitment,
    open_sealed,
    parse_commit,
    parse_wraps,
    reader_key,
    seal,
    sealed_size,
)

SIGNERS = [Signer(bytes([i + 1]) * 32) for i in range(4)]
KEYS = [SealKey(s) for s in SIGNERS]
SENDER, READERS, OUTSIDER = KEYS[0], [KEYS[1], KEYS[2]], KEYS[3]
PLAIN = b"\xa1bw" + bytes(range(256)) * 8


def sealed_to_readers(plain=PLAIN):
    key, nonce = SENDER.content_key(b"net|0", plain)
    return seal(plain, [k.peer_id for k in READERS], key, nonce)


def test_every_reader_opens_the_payload_and_it_is_the_plaintext():
    sealed = sealed_to_readers()
    assert len(sealed.ciphertext) == sealed_size(len(PLAIN)) == len(PLAIN) + SEAL_OVERHEAD
    assert PLAIN[8:40] not in sealed.ciphertext
    assert set(sealed.wraps) == {k.peer_id for k in READERS}
    assert all(len(w) == WRAP_BYTES for w in sealed.wraps.values())
    for reader in READERS:
        assert open_sealed(sealed.ciphertext, sealed.wraps, reader, sealed.key_commit) == PLAIN


def test_a_peer_it_is_not_sealed_to_cannot_open_it():
    sealed = sealed_to_readers()
    with pytest.raises(SealError, match="not sealed to us"):
        open_sealed(sealed.ciphertext, sealed.wraps, OUTSIDER, sealed.key_commit)
    # nor the sender itself (it is no reader): it keeps its plaintext, it never needs to open
    with pytest.raises(SealError, match="not sealed to us"):
        open_sealed(sealed.ciphertext, sealed.wraps, SENDER, sealed.key_commit)


def test_a_wrap_for_another_key_fails_to_open_with_a_clear_error():
    sealed = sealed_to_readers()
    # the outsider presents reader 1's wrap as its own: it does not open with its key
    stolen = {OUTSIDER.peer_id: sealed.wraps[READERS[0].peer_id]}
    with pytest.raises(SealError, match="key wrap for us does not open"):
        open_sealed(sealed.ciphertext, stolen, OUTSIDER, sealed.key_commit)


def test_a_wrong_content_key_fails_to_open():
    sealed = sealed_to_readers()
    other = seal(b"another payload", [READERS[0].peer_id], *SENDER.content_key(b"x", b"y"))
    # the wrap and commit agree, but on a key this ciphertext is not sealed under
    with pytest.raises(SealError, match="does not open under the committed key"):
        open_sealed(sealed.ciphertext, other.wraps, READERS[0], other.key_commit)
    # the wrap of another key against this payload's commit is refused before decrypting
    with pytest.raises(SealError, match="holds a key other than the committed one"):
        open_sealed(sealed.ciphertext, other.wraps, READERS[0], sealed.key_commit)


@pytest.mark.parametrize("where", [0, 23, 24, 39, 40, -1])
def test_tampered_ciphertext_fails_with_a_clear_error(where):
    sealed = sealed_to_readers()
    bad = bytearray(sealed.ciphertext)
    bad[where] ^= 0x01
    with pytest.raises(SealError, match="tampered"):
        open_sealed(bytes(bad), sealed.wraps, READERS[0], sealed.key_commit)
    with pytest.raises(SealError, match="shorter than"):
        open_sealed(sealed.ciphertext[:SEAL_OVERHEAD - 1], sealed.wraps, READERS[0],
                    sealed.key_commit)


def test_sealing_one_plaintext_twice_gives_one_ciphertext_and_another_plaintext_another():
    assert sealed_to_readers().ciphertext == sealed_to_readers().ciphertext
    assert sealed_to_readers().wraps != sealed_to_readers().wraps  # fresh ephemeral keys
    assert sealed_to_readers(PLAIN + b"!").ciphertext[:24] != sealed_to_readers().ciphertext[:24]
    a = SENDER.content_key(b"net|0", PLAIN)
    assert a != SENDER.content_key(b"net|1", PLAIN) != KEYS[1].content_key(b"net|0", PLAIN)


def test_the_commit_is_the_personalised_blake2b_of_the_content_key():
    key, nonce = SENDER.content_key(b"net|0", PLAIN)
    sealed = sealed_to_readers()
    assert sealed.key_commit == key_commitment(key) and len(sealed.key_commit) == COMMIT_BYTES
    assert key_commitment(key) == nacl.hash.blake2b(
        key, digest_size=32, person=b"cmfl-key-commit", encoder=nacl.encoding.RawEncoder)
    assert key_commitment(key) != nacl.hash.blake2b(key, digest_size=32,
                                                    encoder=nacl.encoding.RawEncoder)
    assert key_commitment(key) != key_commitment(SENDER.content_key(b"net|1", PLAIN)[0])
    with pytest.raises(ValueError, match="32 bytes"):
        key_commitment(key[:31])


def wrap_for(reader: SealKey, content_key: bytes) -> bytes:
    """A key wrap as any sender builds it (crypto_box_seal to the reader's X25519 key)."""
    return nacl.public.SealedBox(nacl.public.PublicKey(reader_key(reader.peer_id))).encrypt(
        content_key)


def test_a_sender_wrapping_different_keys_for_different_readers_is_refused_by_one_of_them():
    # An equivocating sender: one ciphertext per key, and reader 0 sent the key of the first,
    # reader 1 the key of the second; it can sign only one ciphertext and one commit.
    k0, n0 = SENDER.content_key(b"net|0", PLAIN)
    k1, _ = SENDER.content_key(b"net|0", b"poisoned " + PLAIN)
    ciphertext = bytes(nacl.secret.SecretBox(k0).encrypt(PLAIN, n0))
    wraps = {READERS[0].peer_id: wrap_for(READERS[0], k0),
             READERS[1].peer_id: wrap_for(READERS[1], k1)}
    assert open_sealed(ciphertext, wraps, READERS[0], key_commitment(k0)) == PLAIN
    with pytest.raises(SealError, match="holds a key other than the committed one"):
        open_sealed(ciphertext, wraps, READERS[1], key_commitment(k0))
    # committed to the other key, the roles swap: never do both readers open
    with pytest.raises(SealError, match="holds a key other than the committed one"):
        open_sealed(ciphertext, wraps, READERS[0], key_commitment(k1))


# An "invisible salamander": one XSalsa20-Poly1305 ciphertext that opens under two keys to two
# plaintexts. Poly1305 is a polynomial in the ciphertext blocks, so with one block left free
# the two keys' tags are made equal by solving one linear equation mod 2^130 - 5. Built from a
# pure XSalsa20 (libsodium does not expose its stream here), checked against SecretBox.
_MASK = 0xffffffff
_P1305 = (1 << 130) - 5


def _salsa_rounds(x: list[int]) -> list[int]:
    x = list(x)

    def qr(a, b, c, d):
        def rotl(v, n):
            v &= _MASK
            return ((v << n) | (v >> (32 - n))) & _MASK
        x[b] ^= rotl(x[a] + x[d], 7)
        x[c] ^= rotl(x[b] + x[a], 9)
        x[d] ^= rotl(x[c] + x[b], 13)
        x[a] ^= rotl(x[d] + x[c], 18)
    for _ in range(10):
        for q in ((0, 4, 8, 12), (5, 9, 13, 1), (10, 14, 2, 6), (15, 3, 7, 11),
                  (0, 1, 2, 3), (5, 6, 7, 4), (10, 11, 8, 9), (15, 12, 13, 14)):
            qr(*q)
    return x


def _salsa_state(key: bytes, middle: bytes) -> list[int]:
    def words(b):
        return [int.from_bytes(b[i:i + 4], "little") for i in range(0, len(b), 4)]
    k, m = words(key), words(middle)
    sigma = words(b"expand 32-byte k")
    return [sigma[0], *k[:4], sigma[1], *m, sigma[2], *k[4:], sigma[3]]


def xsalsa20_stream(key: bytes, nonce: bytes, size: int) -> bytes:
    x = _salsa_rounds(_salsa_state(key, nonce[:16]))  # HSalsa20: the subkey
    subkey = b"".join(x[i].to_bytes(4, "little") for i in (0, 5, 10, 15, 6, 7, 8, 9))
    out = b""
    for counter in range((size + 63) // 64):
        state = _salsa_state(subkey, nonce[16:] + counter.to_bytes(8, "little"))
        out += b"".join(((a + b) & _MASK).to_bytes(4, "little")
                        for a, b in zip(_salsa_rounds(state), state))
    return out[:size]


def _poly1305_parts(key: bytes, size: int, nonce: bytes) -> tuple[int, int, bytes]:
    stream = xsalsa20_stream(key, nonce, 32 + size)  # secretbox: the first 32 bytes key Poly1305
    r = int.from_bytes(stream[:16], "little") & 0x0ffffffc0ffffffc0ffffffc0fffffff
    return r, int.from_bytes(stream[16:32], "little"), stream[32:]


def _poly1305_tag(r: int, s: int, blocks: list[int]) -> bytes:
    h = 0
    for n in blocks:
        h = (h + n) * r % _P1305
    return ((h + s) % (1 << 128)).to_bytes(16, "little")


def salamander(k0: bytes, k1: bytes, nonce: bytes, rng: random.Random, nblocks: int = 4):
    """A ciphertext (nonce | tag | body) that SecretBox opens under both keys."""
    (r0, s0, _), (r1, s1, _) = (_poly1305_parts(k, 16 * nblocks, nonce) for k in (k0, k1))
    free = nblocks - 1  # the last block; its power of r is r^1
    while True:
        blocks = [rng.getrandbits(128) + (1 << 128) for _ in range(nblocks)]
        rest = sum(n * (pow(r0, nblocks - i, _P1305) - pow(r1, nblocks - i, _P1305))
                   for i, n in enumerate(blocks) if i != free)
        # h0 - h1 = rest + n (r0 - r1) must be s1 - s0 for the two tags to agree
        n = (((s1 - s0) % (1 << 128)) - rest) * pow(r0 - r1, -1, _P1305) % _P1305
        if not (1 << 128) <= n < (1 << 129):
            continue  # not a full 16-byte block (its top bit is Poly1305's padding)
        blocks[free] = n
        tag = _poly1305_tag(r0, s0, blocks)
        if tag == _poly1305_tag(r1, s1, blocks):
            body = b"".join((b - (1 << 128)).to_bytes(16, "little") for b in blocks)
            return nonce + tag + body


def test_the_pure_xsalsa20_is_libsodiums():
    key, nonce = SENDER.content_key(b"net|0", PLAIN)
    r, s, stream = _poly1305_parts(key, 100, nonce)
    box = nacl.secret.SecretBox(key).encrypt(bytes(100), nonce)
    assert box[40:] == stream and box[24:40] == _poly1305_tag(r, s, [
        int.from_bytes(stream[i:i + 16], "little") + (1 << (8 * len(stream[i:i + 16])))
        for i in range(0, 100, 16)])


def test_a_ciphertext_opening_under_two_keys_opens_for_one_committed_key_only():
    rng = random.Random(18)
    k0, nonce = SENDER.content_key(b"net|0", PLAIN)
    k1, _ = SENDER.content_key(b"net|0", b"the other key")
    ciphertext = salamander(k0, k1, nonce, rng)
    # the attack is real: without a commitment, the two readers read two different payloads
    p0 = nacl.secret.SecretBox(k0).decrypt(ciphertext)
    p1 = nacl.secret.SecretBox(k1).decrypt(ciphertext)
    assert p0 != p1
    wraps = {READERS[0].peer_id: wrap_for(READERS[0], k0),
             READERS[1].peer_id: wrap_for(READERS[1], k1)}
    for committed, opens, refuses, plain in ((k0, READERS[0], READERS[1], p0),
                                             (k1, READERS[1], READERS[0], p1)):
        assert open_sealed(ciphertext, wraps, opens, key_commitment(committed)) == plain
        with pytest.raises(SealError, match="holds a key other than the committed one"):
            open_sealed(ciphertext, wraps, refuses, key_commitment(committed))


@pytest.mark.parametrize("commit", [None, b"", b"\0" * 31, b"\0" * 33, "00" * 32, bytearray(32)])
def test_a_commit_that_is_not_32_bytes_is_refused(commit):
    sealed = sealed_to_readers()
    with pytest.raises(SealError, match="commit is not 32 bytes"):
        parse_commit(commit)
    with pytest.raises(SealError, match="commit is not 32 bytes"):
        open_sealed(sealed.ciphertext, sealed.wraps, READERS[0], commit)
    assert parse_commit(sealed.key_commit) == sealed.key_commit


def test_a_keys_map_must_name_exactly_the_readers_with_well_sized_wraps():
    sealed = sealed_to_readers()
    readers = [k.peer_id for k in READERS]
    assert parse_wraps(sealed.wraps_obj(), readers) == sealed.wraps
    with pytest.raises(SealError, match="missing"):
        parse_wraps({readers[0]: sealed.wraps[readers[0]]}, readers)
    with pytest.raises(SealError, match="not readers"):
        parse_wraps({**sealed.wraps, OUTSIDER.peer_id: b"\0" * WRAP_BYTES}, readers)
    with pytest.raises(SealError, match="not 80 bytes"):
        parse_wraps({**sealed.wraps, readers[0]: b"short"}, readers)
    with pytest.raises(SealError, match="not a map"):
        parse_wraps([1, 2], readers)


def test_genesis_writes_the_sealing_key_only_when_set_and_refuses_unknown_values(tmp_path):
    from dataclasses import replace

    from chain.genesis import Genesis, GenesisError
    from p2p_node.cli import main

    ids = [s.peer_id for s in SIGNERS]
    base = ["genesis", "new", "--committee-size", "3", *[a for p in ids for a in ("--member", p)]]
    assert main([*base, "--out", str(tmp_path / "plain.json")]) == 0
    assert main([*base, "--out", str(tmp_path / "sealed.json"), "--sealing", "validators"]) == 0
    plain, sealed = Genesis.load(tmp_path / "plain.json"), Genesis.load(tmp_path / "sealed.json")
    assert "sealing" not in plain.to_dict()  # as every genesis before the key: same id
    assert sealed.to_dict()["sealing"] == "validators" and sealed.sealing == "validators"
    assert sealed.network_id != plain.network_id
    with pytest.raises(GenesisError, match="sealing must be one of"):
        replace(plain, sealing="everyone").check()
