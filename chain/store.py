"""Each peer's local block store (SQLite, WAL, fsync on commit) and content-addressed models.

Order of writes on commit: the model file first (atomically renamed, fsynced), then the block row
in one transaction. A crash between the two leaves an orphan model file, never a block whose
model is missing.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

from chain.block import CommittedBlock


class StoreError(RuntimeError):
    """The store refused a write (wrong height or parent) or found itself damaged."""


class BlockStore:
    """Committed blocks by height, appended one at a time onto the current head."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a block acknowledged as committed survives a power cut, not only a kill -9.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS blocks (height INTEGER PRIMARY KEY, "
                "hash BLOB NOT NULL UNIQUE, prev_hash BLOB NOT NULL, data BLOB NOT NULL)")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
            self._db.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"block store {self.path} is corrupt or unreadable: {exc}") from None

    def head(self) -> tuple[int, bytes] | None:
        """(height, hash) of the newest block, or None for an empty chain."""
        row = self._db.execute(
            "SELECT height, hash FROM blocks ORDER BY height DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else None

    def append(self, committed: CommittedBlock) -> None:
        """Store the next block; StoreError unless it extends the head."""
        block = committed.block
        head = self.head()
        want_height = 0 if head is None else head[0] + 1
        if block.height != want_height:
            raise StoreError(f"block height {block.height} does not follow head {want_height - 1}")
        if head is not None and block.prev_hash != head[1]:
            raise StoreError("block does not link to the head hash")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("INSERT INTO blocks VALUES (?, ?, ?, ?)",
                             (block.height, block.hash(), block.prev_hash, committed.encode()))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def put_state(self, key: str, value: bytes) -> None:
        """Durably set one piece of peer state (e.g. the consensus write-ahead record)."""
        self._db.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, value))

    def get_state(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def get(self, height: int) -> CommittedBlock | None:
        row = self._db.execute("SELECT data FROM blocks WHERE height = ?", (height,)).fetchone()
        return CommittedBlock.decode(row[0]) if row else None

    def heights(self) -> list[int]:
        return [r[0] for r in self._db.execute("SELECT height FROM blocks ORDER BY height")]

    def close(self) -> None:
        self._db.close()


class ModelStore:
    """Model checkpoints as files named by the SHA-256 of their bytes."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, digest: bytes) -> Path:
        return self.dir / f"{digest.hex()}.cbor"

    def put(self, data: bytes) -> bytes:
        """Store bytes durably; returns their hash."""
        digest = hashlib.sha256(data).digest()
        path = self._path(digest)
        if path.exists():
            return digest
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return digest

    def get(self, digest: bytes) -> bytes | None:
        """The bytes stored under `digest`, or None if absent or damaged."""
        try:
            data = self._path(digest).read_bytes()
        except FileNotFoundError:
            return None
        return data if hashlib.sha256(data).digest() == digest else None
