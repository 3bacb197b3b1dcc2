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


class StoreError(ValueError):
    """The --store URL cannot be used; the message says what to change."""


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
    def __init__(self, url: str):
        path = sqlite_path(url)
        directory = os.path.dirname(path)
        try:
            if directory:
                os.makedirs(directory, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=30, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"--store {url!r} cannot be opened: {exc}") from None
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def insert(self, results: Iterable[Result], stored_at: float) -> tuple[int, int]:
        """Insert a batch in one transaction; (stored, duplicates ignored)."""
        rows = [(r.id, r.hash, r.worker, r.produced_at, r.hashed_at, r.hash_ms, stored_at) for r in results]
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
        return stored, duplicates

    def ids(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT id FROM hashes")}

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM hashes").fetchone()[0]

    def stats(self) -> dict:
        """Stored, duplicates ignored, latency percentiles (produced -> hashed) and per worker."""
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
