"""Sealed updates (gossip/sealing.py): only the readers a payload is sealed to can open it."""

import pytest

from gossip.peer_keys import Signer
from gossip.sealing import (
    SEAL_OVERHEAD,
    WRAP_BYTES,
    SealError,
    SealKey,
    open_sealed,
    parse_wraps,
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
        assert open_sealed(sealed.ciphertext, sealed.wraps, reader) == PLAIN


def test_a_peer_it_is_not_sealed_to_cannot_open_it():
    sealed = sealed_to_readers()
    with pytest.raises(SealError, match="not sealed to us"):
        open_sealed(sealed.ciphertext, sealed.wraps, OUTSIDER)
    # nor the sender itself (it is no reader): it keeps its plaintext, it never needs to open
    with pytest.raises(SealError, match="not sealed to us"):
        open_sealed(sealed.ciphertext, sealed.wraps, SENDER)


def test_a_wrap_for_another_key_fails_to_open_with_a_clear_error():
    sealed = sealed_to_readers()
    # the outsider presents reader 1's wrap as its own: it does not open with its key
    stolen = {OUTSIDER.peer_id: sealed.wraps[READERS[0].peer_id]}
    with pytest.raises(SealError, match="key wrap for us does not open"):
        open_sealed(sealed.ciphertext, stolen, OUTSIDER)


def test_a_wrong_content_key_fails_to_open():
    sealed = sealed_to_readers()
    other = seal(b"another payload", [READERS[0].peer_id], *SENDER.content_key(b"x", b"y"))
    with pytest.raises(SealError, match="does not open under the wrapped key"):
        open_sealed(sealed.ciphertext, other.wraps, READERS[0])


@pytest.mark.parametrize("where", [0, 23, 24, 39, 40, -1])
def test_tampered_ciphertext_fails_with_a_clear_error(where):
    sealed = sealed_to_readers()
    bad = bytearray(sealed.ciphertext)
    bad[where] ^= 0x01
    with pytest.raises(SealError, match="tampered"):
        open_sealed(bytes(bad), sealed.wraps, READERS[0])
    with pytest.raises(SealError, match="shorter than"):
        open_sealed(sealed.ciphertext[:SEAL_OVERHEAD - 1], sealed.wraps, READERS[0])


def test_sealing_one_plaintext_twice_gives_one_ciphertext_and_another_plaintext_another():
    assert sealed_to_readers().ciphertext == sealed_to_readers().ciphertext
    assert sealed_to_readers().wraps != sealed_to_readers().wraps  # fresh ephemeral keys
    assert sealed_to_readers(PLAIN + b"!").ciphertext[:24] != sealed_to_readers().ciphertext[:24]
    a = SENDER.content_key(b"net|0", PLAIN)
    assert a != SENDER.content_key(b"net|1", PLAIN) != KEYS[1].content_key(b"net|0", PLAIN)


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
