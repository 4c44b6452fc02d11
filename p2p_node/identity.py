"""A peer's one Ed25519 key, kept in its data directory: it is both its libp2p identity and the
key that signs everything the peer says."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from gossip.peer_keys import Signer

KEY_FILE = "identity.key"


class IdentityError(RuntimeError):
    """The key file is missing or unreadable."""


def load_or_create_identity(data_dir: Path) -> Signer:
    """The peer's key, created (owner-read-only) on first use of the data directory."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / KEY_FILE
    if not path.exists():
        seed = secrets.token_bytes(32)
        fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(seed.hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(path.with_suffix(".tmp"), path)
    return load_identity(data_dir)


def load_identity(data_dir: Path) -> Signer:
    """The peer's existing key; IdentityError if there is none or it is damaged."""
    path = data_dir / KEY_FILE
    try:
        seed = bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        raise IdentityError(f"no identity in {data_dir} (run `p2p-node init`)") from None
    except ValueError:
        raise IdentityError(f"identity file {path} is damaged (not hex)") from None
    if len(seed) != 32:
        raise IdentityError(f"identity file {path} is damaged (not 32 bytes)")
    return Signer(seed)
