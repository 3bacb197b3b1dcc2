"""The hash store the collector writes to: what every backend offers and the errors it raises.

Two backends keep the same table: SQLite (``sqlite_store``, the embedded default) and
PostgreSQL (``postgres_store``, for several collectors on several machines); ``store_url``
picks one from the --store URL. The collector's consumer knows only this interface. A store
holds hashes and timings only; a license number never reaches it.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence

import numpy as np

from virtscale.messages import Result

#: The columns the collector writes and stats reads, table by table (tables of these names but
#: other columns are not a virtscale store). Every backend keeps them under these names.
COLUMNS = {
    "hashes": {"id", "hash", "worker", "produced_at", "hashed_at", "hash_ms", "stored_at"},
    "counters": {"name", "value"},
}

#: The order in which a backend inserts a row's values: the result's fields, then when it was stored.
ROW = ("id", "hash", "worker", "produced_at", "hashed_at", "hash_ms", "stored_at")

#: Latency percentiles that stats reports, in percent.
PERCENTILES = (50, 95, 99)


class StoreError(ValueError):
    """The --store URL (or its password file) cannot be used; the message says what to change."""


class StoreMissing(StoreError):
    """The store does not exist (yet): `virtscale-collector run` creates it."""


class StoreRefused(Exception):
    """The store's server refused the collector (wrong password, no such role or database, no
    right to connect): fix the URL, the password or the server's grants; retrying will not help."""


class StoreFailed(Exception):
    """A write did not commit (locked past the timeout, disk full, read-only, server gone):
    nothing of that batch is stored. The collector keeps its results unacked and retries."""


class Store(abc.ABC):
    """One connection to a store, made on one thread and then used by one thread at a time
    (the collector's writer thread)."""

    #: How the store shows in log lines and errors: its URL without any password.
    description: str

    @abc.abstractmethod
    def check(self) -> None:
        """Reach the store and make sure it holds the tables (creating them for `run`), so that
        start-up can report a store that will never work: StoreRefused, StoreMissing or
        StoreError then, StoreFailed for one that cannot be reached now (the collector starts
        anyway and retries)."""

    @abc.abstractmethod
    def insert(self, results: Iterable[Result], stored_at: float) -> tuple[int, int]:
        """Insert a batch in one transaction, ignoring ids already stored; (stored, duplicates
        ignored). StoreFailed if it did not commit (then nothing of the batch is stored)."""

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def _figures(self) -> tuple[int, Sequence[float | None], int, Iterable[tuple[str, int]]]:
        """(rows, latency percentiles of PERCENTILES or Nones, duplicates ignored, (worker, rows)
        pairs). Raises the backend's own error when the store cannot be read."""

    def stats(self) -> dict:
        """Stored, duplicates ignored, latency percentiles (produced -> hashed) and rows per
        worker: the same figures and shape from every backend. StoreError if unreadable."""
        stored, percentiles, duplicates, per_worker = self._figures()
        rounded = [None if value is None else round(float(value), 3) for value in percentiles]
        return {
            "stored": int(stored),
            "duplicates_ignored": int(duplicates),
            "latency_seconds": dict(zip(("p50", "p95", "p99"), rounded, strict=True)),
            # Sorted here, by code point, so that no backend's collation changes the order.
            "per_worker": {worker: int(rows) for worker, rows in sorted(per_worker)},
        }


def rows_of(results: Iterable[Result], stored_at: float) -> list[tuple]:
    """The results as rows in ROW order."""
    return [(r.id, r.hash, r.worker, r.produced_at, r.hashed_at, r.hash_ms, stored_at) for r in results]


def latency_percentiles(latencies: Sequence[float]) -> list[float | None]:
    """PERCENTILES of the latencies, linearly interpolated (as PostgreSQL's percentile_cont)."""
    values = np.asarray(latencies, dtype=float)
    if not values.size:
        return [None] * len(PERCENTILES)
    return np.percentile(values, PERCENTILES).tolist()
