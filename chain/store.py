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
        self.append_many([committed])

    def append_many(self, blocks: list[CommittedBlock]) -> None:
        """Store consecutive blocks onto the head in one transaction: all of them or none.

        Sync uses this: the blocks between the old head and the new one have no model on disk,
        so only the whole run (whose last model is stored first) may become the head."""
        head = self.head()
        height, prev = (-1, None) if head is None else head
        for committed in blocks:
            block = committed.block
            if block.height != height + 1:
                raise StoreError(f"block height {block.height} does not follow head {height}")
            if prev is not None and block.prev_hash != prev:
                raise StoreError(f"block {block.height} does not link to the head hash")
            height, prev = block.height, block.hash()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("INSERT INTO blocks VALUES (?, ?, ?, ?)", [
                (c.block.height, c.block.hash(), c.block.prev_hash, c.encode()) for c in blocks])
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

    def get_raw(self, start: int, count: int, max_bytes: int) -> list[bytes]:
        """Encoded blocks from height `start` on: at most `count`, and at most `max_bytes`
        in total (but always the first, if held). What a sync request is answered with."""
        out: list[bytes] = []
        total = 0
        for (data,) in self._db.execute(
                "SELECT data FROM blocks WHERE height >= ? ORDER BY height LIMIT ?",
                (start, count)):
            if out and total + len(data) > max_bytes:
                break
            out.append(data)
            total += len(data)
        return out

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

    def has(self, digest: bytes) -> bool:
        """True if a file is stored under `digest` (whether or not its bytes are intact)."""
        return self._path(digest).exists()

    def size(self, digest: bytes) -> int | None:
        """Size in bytes of the file stored under `digest`, or None if absent."""
        try:
            return self._path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def digests(self) -> set[bytes]:
        """Every digest with a file here."""
        out = set()
        for path in self.dir.glob("*.cbor"):
            try:
                out.add(bytes.fromhex(path.stem))
            except ValueError:
                continue  # not one of ours
        return out

    def prune(self, keep: set[bytes]) -> list[bytes]:
        """Delete every checkpoint not in `keep` (and leftover temporary files); the deleted."""
        for tmp in self.dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        gone = sorted(self.digests() - keep)
        for digest in gone:
            self._path(digest).unlink(missing_ok=True)
        return gone


#: Checkpoints kept by default: the head's model plus a few before it, enough for a peer that
#: syncs while the network commits a few more blocks to still find the one it verified up to.
DEFAULT_KEEP_CHECKPOINTS = 8


def retain_checkpoints(store: BlockStore, models: ModelStore,
                       keep_last: int = DEFAULT_KEEP_CHECKPOINTS) -> list[bytes]:
    """Retention: delete model checkpoints except those of the last `keep_last` blocks.

    The head's model is always kept (the next round starts from it). Call it only between
    commits: a checkpoint written for a block not yet appended would not be in the keep set."""
    head = store.head()
    if head is None:
        return []
    keep = set()
    for height in range(max(0, head[0] - max(keep_last, 1) + 1), head[0] + 1):
        committed = store.get(height)
        if committed is not None:
            keep.add(committed.block.model_hash)
    return models.prune(keep)
