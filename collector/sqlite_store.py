"""The embedded store: one SQLite file in WAL mode, keyed by job id, idempotent inserts."""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from collections.abc import Iterable

from virtscale.collector.store import (
    COLUMNS,
    ROW,
    Store,
    StoreError,
    StoreFailed,
    StoreMissing,
    latency_percentiles,
    rows_of,
)
from virtscale.config import redact_url
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

INSERT = f"INSERT OR IGNORE INTO hashes ({', '.join(ROW)}) VALUES ({', '.join('?' * len(ROW))})"

COUNT_DUPLICATES = (
    "INSERT INTO counters (name, value) VALUES ('duplicates', ?)"
    " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value"
)

#: Seconds a write waits for another connection's lock before it fails (SQLite's busy timeout);
#: the collector then retries the batch.
BUSY_TIMEOUT = 30.0

#: What --store looks like, for the error that names an unknown one.
URL_FORMS = (
    "sqlite:///var/virtscale/hashes.db (relative), sqlite:////abs/path.db or postgresql://USER@HOST:5432/DB"
)


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///relative/path`` or ``sqlite:////absolute/path`` URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc or not parts.path.startswith("/") or parts.path == "/":
        raise StoreError(f"--store must look like {URL_FORMS}, got {redact_url(url)!r}")
    return parts.path[1:]


class SQLiteStore(Store):
    """One SQLite connection (``check_same_thread=False``: the writer thread uses it).

    ``create=False`` opens an existing store only (for reading it): StoreMissing if there
    is no such file, StoreError if the file is not a virtscale store.
    """

    def __init__(self, url: str, *, create: bool = True):
        path = sqlite_path(url)
        self.description = url
        if os.path.isdir(path):
            raise StoreError(f"--store {url!r} is a directory; name a file in it, e.g. {url}/hashes.db")
        if not create and not os.path.exists(path):
            raise StoreMissing(f"--store {url!r}: no such file (`virtscale-collector run` creates it)")
        self._db = self._connect(url, path, create)
        try:
            if create:
                self._set_up()
            self._check()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            reason = "it is not a SQLite database" if "not a database" in str(exc) else exc
            raise StoreError(f"--store {url!r} cannot be used: {reason}") from None

    @staticmethod
    def _connect(url: str, path: str, create: bool) -> sqlite3.Connection:
        try:
            directory = os.path.dirname(path)
            if create and directory:
                os.makedirs(directory, exist_ok=True)
            return sqlite3.connect(path, timeout=BUSY_TIMEOUT, check_same_thread=False)
        except FileExistsError as exc:
            raise StoreError(f"--store {url!r} cannot be opened: {exc.filename} is not a directory") from None
        except OSError as exc:
            raise StoreError(f"--store {url!r} cannot be opened: {exc.strerror}: {exc.filename}") from None
        except sqlite3.Error as exc:
            raise StoreError(f"--store {url!r} cannot be opened: {exc}") from None

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

    def check(self) -> None:
        """Done when it was opened: the file is local, so it cannot be unreachable."""

    def close(self) -> None:
        self._db.close()

    def insert(self, results: Iterable[Result], stored_at: float) -> tuple[int, int]:
        rows = rows_of(results, stored_at)
        try:
            with self._db:
                before = self._db.total_changes
                self._db.executemany(INSERT, rows)
                stored = self._db.total_changes - before
                duplicates = len(rows) - stored
                if duplicates:
                    self._db.execute(COUNT_DUPLICATES, (duplicates,))
        except sqlite3.Error as exc:
            what = f"writing {len(rows)} result(s) failed"
            raise StoreFailed(f"store {self.description}: {what}: {exc}") from exc
        return stored, duplicates

    def stats(self) -> dict:
        try:
            return super().stats()
        except sqlite3.Error as exc:
            raise StoreError(f"--store cannot be read: {exc}") from None

    def _figures(self):
        latencies = [row[0] for row in self._db.execute("SELECT hashed_at - produced_at FROM hashes")]
        duplicates = self._db.execute("SELECT value FROM counters WHERE name = 'duplicates'").fetchone()
        per_worker = self._db.execute("SELECT worker, COUNT(*) FROM hashes GROUP BY worker").fetchall()
        return len(latencies), latency_percentiles(latencies), duplicates[0] if duplicates else 0, per_worker
