"""A store that cannot write does not stop the collector. Against real stores made unwritable
(SQLite locked past its busy timeout, SQLite on a full disk, a PostgreSQL table locked or its
insert right revoked, PostgreSQL unreachable) and then writable again: the results stay
unacked meanwhile, one line says what is wrong, and in the end every result is stored once."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.conftest import TEST_CONNECTION, publish_raw, queue_depth, require, stored_ids, wait_until
from tests.integration.test_pipeline import CollectorThread, WriteLock, result_body
from tests.support import postgres as test_postgres
from tests.support.proxy import CuttableProxy
from virtscale import defaults
from virtscale.broker import queue_counts
from virtscale.collector import postgres_store, sqlite_store
from virtscale.collector.postgres_store import PostgresStore
from virtscale.collector.sqlite_store import SQLiteStore
from virtscale.collector.store import Store

pytestmark = pytest.mark.broker

#: Results published before the outage (stored at once) and during it (held until it ends).
BEFORE, DURING = 10, 300


@dataclass
class Outage:
    """A store, how to read its ids, and how to take its writes away and give them back."""

    store: Store
    ids: Callable[[], list[str]]
    begin: Callable[[], None]
    end: Callable[[], None]


def publish_results(broker_url, names, count: int) -> list[str]:
    """Once the collector consumes, ``count`` results for it; their ids."""
    wait_until(lambda: queue_counts(broker_url, names.results, TEST_CONNECTION)[1] == 1, 60, "consuming")
    ids = [str(uuid.uuid4()) for _ in range(count)]
    publish_raw(broker_url, names.results, [result_body(job_id) for job_id in ids])
    return ids


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    """Retries a few hundredths of a second apart, so an outage sees several of them quickly."""
    monkeypatch.setattr(defaults, "RECONNECT_INITIAL", 0.05)
    monkeypatch.setattr(defaults, "RECONNECT_JITTER", 0.05)
    monkeypatch.setattr(defaults, "RECONNECT_MAX", 0.5)


def test_a_store_that_cannot_write_is_waited_for_and_loses_nothing(outage, broker_url, names, acks, caplog):
    caplog.set_level(logging.INFO, logger="virtscale.collector")
    thread = CollectorThread(broker_url, names, outage.store)
    collector = thread.collector
    collector.outage.interval = 3600  # longer than the test: exactly one line for the whole outage
    try:
        before = publish_results(broker_url, names, BEFORE)
        wait_until(lambda: len(acks) == BEFORE, 60, "the first results stored and acked")
        outage.begin()
        during = publish_results(broker_url, names, DURING)
        wait_until(lambda: collector.outage.failures >= 3, 60, "three failed writes")
        assert thread.failure is None and sorted(outage.ids()) == sorted(before)
        assert len(acks) == BEFORE, "nothing acked before its commit"
        outage.end()
        wait_until(lambda: len(acks) == BEFORE + DURING, 60, "every result stored and acked")
    finally:
        outage.end()
        thread.stop()
    assert queue_depth(broker_url, names.results) == 0, "none left behind"
    assert sorted(outage.ids()) == sorted(before + during), "each result stored once"
    assert collector.stored == BEFORE + DURING
    said = [r for r in caplog.records if r.name == "virtscale.collector.outage"]
    assert [r.levelname for r in said] == ["WARNING", "INFO"], [r.getMessage() for r in said]
    assert "wait unacked; retrying" in said[0].getMessage()
    assert "store writes again" in said[1].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("outage", ["postgres-down"], indirect=True)
def test_a_stop_during_an_outage_gives_the_results_back_to_the_queue(outage, broker_url, names, acks, caplog):
    thread = CollectorThread(broker_url, names, outage.store)
    outage.begin()
    try:
        publish_results(broker_url, names, DURING)
        wait_until(lambda: thread.collector.outage.failures >= 2, 60, "two failed writes")
    finally:
        thread.stop()  # a warm stop: it gives up the batch it retries rather than wait for the store
        outage.end()
    assert acks == [] and outage.ids() == []
    assert queue_depth(broker_url, names.results) == DURING, "every result back in the queue"
    assert any("go back to" in r.getMessage() for r in caplog.records)


# -- the outages -------------------------------------------------------------------------------


def sqlite_locked(request, monkeypatch):
    """Another connection holds SQLite's write lock for longer than the busy timeout."""
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT", 0.2)
    path = request.getfixturevalue("tmp_path") / "hashes.db"
    store = SQLiteStore(f"sqlite:///{path}")
    locks: list[WriteLock] = []

    def release() -> None:
        while locks:
            locks.pop().release()

    yield Outage(store, lambda: stored_ids(path), lambda: locks.append(WriteLock(path)), release)
    release()
    store.close()


def fill(directory) -> None:
    """Write a file into ``directory`` until its file system has no room left."""
    with open(directory / "filler", "wb", buffering=0) as handle:
        for size in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    handle.write(b"\0" * size)


def sqlite_disk_full(request, _monkeypatch):
    """The store's file system (a tmpfs of 1 MiB) fills up, then room is made again."""
    mount_point = request.getfixturevalue("tmp_path") / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "virtscale-test", str(mount_point)], capture_output=True
    )
    require(mounted.returncode == 0, "a tmpfs of 1 MiB to fill (mount, as root)")
    path = mount_point / "hashes.db"
    store = SQLiteStore(f"sqlite:///{path}")

    def make_room() -> None:
        (mount_point / "filler").unlink(missing_ok=True)

    try:
        yield Outage(store, lambda: stored_ids(path), lambda: fill(mount_point), make_room)
    finally:
        store.close()
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def postgres_locked(request, monkeypatch):
    """Another session holds a lock on the table (SHARE: reads go on, inserts wait) for longer
    than the lock timeout."""
    schema = request.getfixturevalue("postgres")
    monkeypatch.setattr(postgres_store, "LOCK_TIMEOUT", 0.2)
    store = PostgresStore(schema.url(), password=test_postgres.password())
    sessions = []

    def lock() -> None:
        session = schema.connect(autocommit=False)
        session.execute("LOCK TABLE hashes IN SHARE MODE")
        sessions.append(session)

    def release() -> None:
        while sessions:
            sessions.pop().close()  # ends its transaction, and so the lock

    yield Outage(store, schema.ids, lock, release)
    release()
    store.close()


def postgres_revoked(request, _monkeypatch):
    """The role loses its right to insert into the table, then gets it back."""
    schema = request.getfixturevalue("postgres")
    store = PostgresStore(schema.url(), password=test_postgres.password())

    def change(statement: str) -> None:
        with schema.connect() as session:
            session.execute(statement)

    revoke = "REVOKE INSERT ON hashes FROM CURRENT_USER"
    grant = "GRANT INSERT ON hashes TO CURRENT_USER"
    yield Outage(store, schema.ids, lambda: change(revoke), lambda: change(grant))
    store.close()


def postgres_down(request, _monkeypatch):
    """The server becomes unreachable: every connection to it cut, new ones refused (through a
    proxy, so that the server other tests use stays up), then reachable again."""
    schema = request.getfixturevalue("postgres")
    server = urllib.parse.urlsplit(test_postgres.URL)
    proxy = CuttableProxy((server.hostname, server.port or 5432))
    store = PostgresStore(schema.url(port=proxy.port), password=test_postgres.password())
    yield Outage(store, schema.ids, proxy.cut, proxy.restore)
    proxy.close()
    store.close()


OUTAGES = {
    "sqlite-locked": sqlite_locked,
    "sqlite-disk-full": sqlite_disk_full,
    "postgres-locked": postgres_locked,
    "postgres-revoked": postgres_revoked,
    "postgres-down": postgres_down,
}


@pytest.fixture(params=list(OUTAGES))
def outage(request, monkeypatch):
    yield from OUTAGES[request.param](request, monkeypatch)
