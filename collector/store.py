"""The hash store: SQLite in WAL mode, keyed by job id, idempotent inserts.

It holds hashes and timings only; a license number never reaches it.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from collections.abc import Iterable

import numpy as np

from virtscale.messages import Result

SCHEMA = """
CREATE TABLE IF NOT EXISTS hashes (
    id          TEXT PRIMARY KEY,
    hash        TEXT NOT NULL,
    worker      TEXT NOT NULL,
    produced_at REAL NOT NULL,
    hashed_at   REAL NOT NULL,
    hash_ms     REAL NOT NULL,
    stored_at   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

#: The columns the collector writes and stats reads, table by table (a file with tables of
#: these names but other columns is not a virtscale store).
COLUMNS = {
    "hashes": {"id", "hash", "worker", "produced_at", "hashed_at", "hash_ms", "stored_at"},
    "counters": {"name", "value"},
}

#: Seconds a write waits for another connection's lock before it fails (SQLite's busy timeout).
BUSY_TIMEOUT = 30.0


class StoreError(ValueError):
    """The --store URL cannot be used; the message says what to change."""


class StoreMissing(StoreError):
    """The store file does not exist (yet): `virtscale-collector run` creates it."""


class StoreFailed(Exception):
    """A write to the store failed (locked longer than the busy timeout, disk full, file gone).
    Nothing of that batch was acked, so the broker keeps it: fix the store and start again."""


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///relative/path`` or ``sqlite:////absolute/path`` URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc or not parts.path.startswith("/") or parts.path == "/":
        raise StoreError(
            f"--store must look like sqlite:///var/virtscale/hashes.db (relative) "
            f"or sqlite:////abs/path.db, got {url!r}"
        )
    return parts.path[1:]


class Store:
    """One SQLite connection. Made on one thread, it may then be used from another (the
    collector's writer thread), but only ever by one thread at a time.

    ``create=False`` opens an existing store only (for reading it): StoreMissing if there
    is no such file, StoreError if the file is not a virtscale store.
    """

    def __init__(self, url: str, *, create: bool = True):
        path = sqlite_path(url)
        if os.path.isdir(path):
            raise StoreError(f"--store {url!r} is a directory; name a file in it, e.g. {url}/hashes.db")
        if not create and not os.path.exists(path):
            raise StoreMissing(f"--store {url!r}: no such file (`virtscale-collector run` creates it)")
        try:
            directory = os.path.dirname(path)
            if create and directory:
                os.makedirs(directory, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, check_same_thread=False)
        except FileExistsError as exc:
            raise StoreError(f"--store {url!r} cannot be opened: {exc.filename} is not a directory") from None
        except OSError as exc:
            raise StoreError(f"--store {url!r} cannot be opened: {exc.strerror}: {exc.filename}") from None
        except sqlite3.Error as exc:
            raise StoreError(f"--store {url!r} cannot be opened: {exc}") from None
        try:
            if create:
                self._set_up()
            self._check()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            reason = "it is not a SQLite database" if "not a database" in str(exc) else exc
            raise StoreError(f"--store {url!r} cannot be used: {reason}") from None

    def _set_up(self) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._db.commit()

    def _check(self) -> None:
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = set(COLUMNS) - tables
        if missing:
            raise sqlite3.DatabaseError(f"no {', '.join(sorted(missing))} table: not a virtscale store")
        for table, needed in COLUMNS.items():
            columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if not needed <= columns:
                lacking = ", ".join(sorted(needed - columns))
                raise sqlite3.DatabaseError(f"table {table} has no {lacking} column: not a virtscale store")

    def close(self) -> None:
        self._db.close()

    def insert(self, results: Iterable[Result], stored_at: float) -> tuple[int, int]:
        """Insert a batch in one transaction; (stored, duplicates ignored). StoreFailed if the
        transaction could not be committed (then nothing of the batch is stored)."""
        rows = [(r.id, r.hash, r.worker, r.produced_at, r.hashed_at, r.hash_ms, stored_at) for r in results]
        try:
            with self._db:
                before = self._db.total_changes
                self._db.executemany(
                    "INSERT OR IGNORE INTO hashes (id, hash, worker, produced_at, hashed_at, hash_ms,"
                    " stored_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                stored = self._db.total_changes - before
                duplicates = len(rows) - stored
                if duplicates:
                    self._db.execute(
                        "INSERT INTO counters (name, value) VALUES ('duplicates', ?)"
                        " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                        (duplicates,),
                    )
        except sqlite3.Error as exc:
            raise StoreFailed(f"store: writing {len(rows)} result(s) failed: {exc}") from exc
        return stored, duplicates

    def stats(self) -> dict:
        """Stored, duplicates ignored, latency percentiles (produced -> hashed) and per worker.
        StoreError if the store cannot be read (locked, corrupt)."""
        try:
            return self._stats()
        except sqlite3.Error as exc:
            raise StoreError(f"--store cannot be read: {exc}") from None

    def _stats(self) -> dict:
        latencies = np.array(
            [row[0] for row in self._db.execute("SELECT hashed_at - produced_at FROM hashes")],
            dtype=float,
        )
        duplicates = self._db.execute("SELECT value FROM counters WHERE name = 'duplicates'").fetchone()
        per_worker = dict(
            self._db.execute("SELECT worker, COUNT(*) FROM hashes GROUP BY worker ORDER BY worker")
        )
        percentiles = (
            np.percentile(latencies, [50, 95, 99]).round(3).tolist() if latencies.size else [None] * 3
        )
        return {
            "stored": int(latencies.size),
            "duplicates_ignored": duplicates[0] if duplicates else 0,
            "latency_seconds": dict(zip(("p50", "p95", "p99"), percentiles, strict=True)),
            "per_worker": per_worker,
        }
