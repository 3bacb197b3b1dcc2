"""The PostgreSQL that `make postgres` set up, as tests use it: a schema of their own per test
(picked through libpq's ``options=-csearch_path=...`` in the store URL), dropped afterwards."""

from __future__ import annotations

import os
import urllib.parse
import uuid
from pathlib import Path

import psycopg

from virtscale import defaults

ROOT = Path(__file__).resolve().parents[2]

#: The server, role and database the tests use, and the file with the role's password.
URL = os.environ.get("VIRTSCALE_TEST_POSTGRES_URL", defaults.DEV_POSTGRES_URL)
PASSWORD_FILE = os.environ.get(
    "VIRTSCALE_TEST_POSTGRES_PASSWORD_FILE", str(ROOT / defaults.DEV_POSTGRES_PASSWORD_FILE)
)


def password() -> str | None:
    try:
        return Path(PASSWORD_FILE).read_text().strip()
    except OSError:
        return None  # then libpq's own sources (PGPASSWORD, ~/.pgpass)


def connect(url: str = URL, **settings) -> psycopg.Connection:
    return psycopg.connect(url, password=password(), **{"connect_timeout": 5, "autocommit": True, **settings})


def reachable() -> bool:
    try:
        with connect():
            return True
    except psycopg.Error:
        return False


class Schema:
    """A schema made for one test: store URLs that write into it, and sessions to look inside."""

    def __init__(self) -> None:
        self.name = f"test_{uuid.uuid4().hex[:12]}"
        with connect() as connection:
            connection.execute(f"CREATE SCHEMA {self.name}")

    def url(self, port: int | None = None) -> str:
        """The store URL for this schema, through another port (a proxy) if given."""
        parts = urllib.parse.urlsplit(URL)
        if port is not None:
            parts = parts._replace(netloc=f"{parts.username}@{parts.hostname}:{port}")
        query = urllib.parse.urlencode({"options": f"-csearch_path={self.name}"})
        query = f"{parts.query}&{query}" if parts.query else query
        return urllib.parse.urlunsplit(parts._replace(query=query))

    def store_args(self, port: int | None = None) -> list[str]:
        """--store flags for a collector command line."""
        return ["--store", self.url(port), "--store-password-file", PASSWORD_FILE]

    def connect(self, **settings) -> psycopg.Connection:
        return connect(self.url(), **settings)

    def ids(self) -> list[str]:
        """Every id stored (a list, so a duplicate would show); [] before the table exists."""
        with self.connect() as connection:
            if not connection.execute("SELECT to_regclass('hashes') IS NOT NULL").fetchone()[0]:
                return []
            return [row[0] for row in connection.execute("SELECT id FROM hashes")]

    def count(self) -> int:
        return len(self.ids())

    def drop(self) -> None:
        with connect() as connection:
            connection.execute(f"DROP SCHEMA IF EXISTS {self.name} CASCADE")
