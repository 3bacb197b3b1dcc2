"""The store a --store URL names: SQLite for sqlite:///..., PostgreSQL for postgresql://..."""

from __future__ import annotations

from virtscale.collector.postgres_store import PostgresStore
from virtscale.collector.sqlite_store import SQLiteStore
from virtscale.collector.store import Store, StoreError

#: The URL prefixes libpq reads (lowercase only, as libpq has them).
POSTGRES_PREFIXES = ("postgresql://", "postgres://")


def is_postgres(url: str) -> bool:
    return url.startswith(POSTGRES_PREFIXES)


def open_store(url: str, *, create: bool = True, password: str | None = None, name: str = "") -> Store:
    """The store at ``url``; ``password`` (from --store-password-file) only for PostgreSQL,
    ``name`` the application name its server shows. StoreError for a URL that is neither."""
    if is_postgres(url):
        return PostgresStore(url, create=create, password=password, name=name)
    if password is not None:
        raise StoreError("--store-password-file is only for a postgresql:// --store")
    return SQLiteStore(url, create=create)
