"""The shared store: the same table in PostgreSQL (psycopg 3), so that several collectors on
several machines write into one database. Each batch is one INSERT ... ON CONFLICT (id) DO
NOTHING, so a result delivered twice, to one collector or to two, is stored once."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable

import psycopg
from psycopg.conninfo import conninfo_to_dict

from virtscale.collector.store import (
    COLUMNS,
    PERCENTILES,
    ROW,
    Store,
    StoreError,
    StoreFailed,
    StoreMissing,
    StoreRefused,
)
from virtscale.messages import Result

SCHEMA = {
    "hashes": """
        CREATE TABLE hashes (
            id          TEXT PRIMARY KEY,
            hash        TEXT NOT NULL,
            worker      TEXT NOT NULL,
            produced_at DOUBLE PRECISION NOT NULL,
            hashed_at   DOUBLE PRECISION NOT NULL,
            hash_ms     DOUBLE PRECISION NOT NULL,
            stored_at   DOUBLE PRECISION NOT NULL
        )""",
    "counters": "CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
}

# One statement and one round trip per batch: the batch travels as one array per column.
INSERT = f"""
    INSERT INTO hashes ({", ".join(ROW)})
    SELECT batch.*, %(stored_at)s::float8
    FROM unnest(%(id)s::text[], %(hash)s::text[], %(worker)s::text[],
                %(produced_at)s::float8[], %(hashed_at)s::float8[], %(hash_ms)s::float8[]) AS batch
    ON CONFLICT (id) DO NOTHING"""

COUNT_DUPLICATES = (
    "INSERT INTO counters (name, value) VALUES ('duplicates', %s)"
    " ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value"
)

#: Key of the advisory lock under which a collector creates the tables, so that collectors
#: starting together do not race to create them ("virtscl" in ASCII).
SCHEMA_LOCK = 0x766972747363_6C

#: Seconds a write waits for another session's lock before it fails (PostgreSQL's lock_timeout,
#: like SQLite's busy timeout); the collector then retries the batch.
LOCK_TIMEOUT = 30.0

#: libpq settings a URL may override: a server that does not answer fails a connection attempt
#: after 10 s, and one that vanished mid-transaction is noticed after 30 s, not TCP's 15 minutes.
CONNECTION_DEFAULTS = {
    "connect_timeout": "10",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}

#: Words of libpq's connection errors that no retry will cure: the server answered and said no.
REFUSALS = (
    "password authentication failed",
    "authentication failed",
    "no password supplied",
    "does not exist",
    "no pg_hba.conf entry",
    "permission denied",
    "not permitted to log in",
)


def one_line(exc: BaseException, *secrets: str | None) -> str:
    """An error as one line, with any secret in it replaced."""
    text = " ".join(str(exc).split())
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***").replace(urllib.parse.quote(secret, safe=""), "***")
    return text


def description(url: str) -> str:
    """The URL as log lines and errors show it: no password, in the authority or the query."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # malformed: keep only what follows the user and password
        return "postgresql://" + url.rpartition("@")[2] if "@" in url else url
    userinfo, at, hosts = parts.netloc.rpartition("@")
    netloc = f"{userinfo.split(':', 1)[0]}@{hosts}" if at else hosts
    query = urllib.parse.urlencode(
        [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "password"], safe="=,/"
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def url_password(url: str) -> str | None:
    """The password in a URL's authority, for scrubbing it from libpq's messages."""
    userinfo = url.partition("://")[2].partition("/")[0].rpartition("@")[0]
    return urllib.parse.unquote(userinfo.partition(":")[2]) or None


def connection_settings(url: str, password: str | None) -> dict[str, str]:
    """libpq's settings for a postgresql:// URL, with ``password`` (from --store-password-file)
    in place of the URL's. Without either, libpq looks in PGPASSWORD and the password file
    (~/.pgpass or PGPASSFILE). StoreError, naming no password, for a URL libpq would refuse."""
    shown = description(url)
    try:
        settings = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        reason = one_line(exc, url, url_password(url))
        raise StoreError(f"--store {shown!r} is not a PostgreSQL URL libpq accepts: {reason}") from None
    if not settings.get("dbname") or "/" in settings["dbname"]:
        raise StoreError(f"--store must name one database: postgresql://USER@HOST:5432/DB, got {shown!r}")
    for port in str(settings.get("port", "5432")).split(","):
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise StoreError(f"--store: the port must be 1-65535, got {shown!r}")
    if password is not None:
        settings["password"] = password
    return {**CONNECTION_DEFAULTS, **settings}


class PostgresStore(Store):
    """One psycopg connection, made when first needed and made again after it broke.

    ``create=True`` (run) creates the tables when missing; ``create=False`` (stats) reads an
    existing store only. Nothing connects in the constructor: ``check`` or the first write does.
    """

    def __init__(self, url: str, *, create: bool = True, password: str | None = None, name: str = ""):
        self.description = description(url)
        self._settings = connection_settings(url, password)
        if name:
            self._settings.setdefault("application_name", name)
        self._create = create
        self._connection: psycopg.Connection | None = None

    # -- connection ---------------------------------------------------------------------

    def check(self) -> None:
        self._connected()

    def _connected(self) -> psycopg.Connection:
        """The open connection, or a new one with the tables ready. StoreRefused when the server
        said no, StoreFailed when it could not be reached or the tables could not be made."""
        if self._connection is not None and not self._connection.closed:
            return self._connection
        try:
            connection = psycopg.connect(**self._settings, autocommit=True)
        except psycopg.Error as exc:
            raise self._failure("cannot connect", exc) from None
        try:
            lock_timeout = f"{LOCK_TIMEOUT * 1000:.0f}ms"
            connection.execute("SELECT set_config('lock_timeout', %s, false)", (lock_timeout,))
            self._prepare(connection)
        except psycopg.Error as exc:
            connection.close()
            raise self._failure("cannot prepare the tables", exc) from None
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        return connection

    def _failure(self, what: str, exc: psycopg.Error) -> StoreRefused | StoreFailed:
        reason = one_line(exc, self._settings.get("password")).removeprefix("connection failed: ")
        if any(refusal in reason for refusal in REFUSALS):
            return StoreRefused(f"--store {self.description!r}: {what}: the server refused: {reason}")
        return StoreFailed(f"store {self.description}: {what}: {reason}")

    def _prepare(self, connection: psycopg.Connection) -> None:
        """Create the missing tables (run) under an advisory lock, then check their columns."""
        with connection.transaction():
            if self._create:
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                for table, create in SCHEMA.items():
                    if not self._exists(connection, table):
                        connection.execute(create)
            for table, needed in COLUMNS.items():
                if not self._exists(connection, table):
                    raise StoreMissing(
                        f"--store {self.description!r}: no {table} table"
                        " (`virtscale-collector run` creates it)"
                    )
                columns = {
                    row[0]
                    for row in connection.execute(
                        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s)"
                        " AND attnum > 0 AND NOT attisdropped",
                        (table,),
                    )
                }
                if not needed <= columns:
                    lacking = ", ".join(sorted(needed - columns))
                    raise StoreError(
                        f"--store {self.description!r} cannot be used: table {table} has no {lacking}"
                        " column: not a virtscale store"
                    )

    @staticmethod
    def _exists(connection: psycopg.Connection, table: str) -> bool:
        """Whether ``table`` is in the connection's search_path (by default the public schema)."""
        return connection.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    # -- writes and reads -------------------------------------------------------------------

    def insert(self, results: Iterable[Result], stored_at: float) -> tuple[int, int]:
        results = list(results)
        batch = {column: [getattr(result, column) for result in results] for column in ROW[:-1]}
        try:
            connection = self._connected()
        except (StoreRefused, StoreError) as exc:  # once running, retried like any other failure
            raise StoreFailed(f"store {self.description}: {exc}") from None
        try:
            with connection.transaction():
                stored = connection.execute(INSERT, {**batch, "stored_at": stored_at}).rowcount
                duplicates = len(results) - stored
                if duplicates:
                    connection.execute(COUNT_DUPLICATES, (duplicates,))
        except psycopg.Error as exc:  # a lost connection is closed now: the next attempt connects anew
            raise StoreFailed(
                f"store {self.description}: writing {len(results)} result(s) failed: {one_line(exc)}"
            ) from exc
        return stored, duplicates

    def stats(self) -> dict:
        try:
            return super().stats()
        except psycopg.Error as exc:
            raise StoreError(f"--store cannot be read: {one_line(exc)}") from None

    def _figures(self):
        connection = self._connected()
        stored, percentiles = connection.execute(
            "SELECT count(*), percentile_cont(%s::float8[]) WITHIN GROUP (ORDER BY hashed_at - produced_at)"
            " FROM hashes",
            ([p / 100 for p in PERCENTILES],),
        ).fetchone()
        duplicates = connection.execute("SELECT value FROM counters WHERE name = 'duplicates'").fetchone()
        per_worker = connection.execute("SELECT worker, count(*) FROM hashes GROUP BY worker").fetchall()
        percentiles = percentiles or [None] * len(PERCENTILES)  # NULL: no rows yet
        return stored, percentiles, duplicates[0] if duplicates else 0, per_worker
