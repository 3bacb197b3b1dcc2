import sqlite3
import threading
import uuid

import pytest

from virtscale.collector import sqlite_store as store_module
from virtscale.collector.sqlite_store import SQLiteStore, sqlite_path
from virtscale.collector.store import StoreError, StoreFailed, StoreMissing
from virtscale.messages import Result


def result(worker="vm-1", produced=100.0, hashed=101.0) -> Result:
    return Result(str(uuid.uuid4()), "$2b$04$" + "a" * 53, worker, produced, hashed, 1.5)


def test_insert_is_idempotent_by_id(tmp_path):
    store = SQLiteStore(f"sqlite:///{tmp_path}/h.db")
    first = [result() for _ in range(10)]
    assert store.insert(first, 1.0) == (10, 0)
    assert store.insert([*first[:4], result()], 2.0) == (1, 4)
    stats = store.stats()
    assert stats["stored"] == 11
    assert stats["duplicates_ignored"] == 4


def test_store_is_wal_and_has_the_contract_columns(tmp_path):
    path = tmp_path / "h.db"
    SQLiteStore(f"sqlite:///{path}").insert([result()], 3.0)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    columns = {row[1] for row in db.execute("PRAGMA table_info(hashes)")}
    assert {"id", "hash", "worker", "produced_at", "hashed_at", "stored_at"} <= columns


def test_stats_percentiles_and_per_worker(tmp_path):
    store = SQLiteStore(f"sqlite:///{tmp_path}/h.db")
    store.insert([result("vm-1", 0, t) for t in range(1, 101)] + [result("vm-2", 0, 5)], 0)
    stats = store.stats()
    assert stats["per_worker"] == {"vm-1": 100, "vm-2": 1}
    assert stats["latency_seconds"]["p50"] == pytest.approx(50, abs=1)
    assert stats["latency_seconds"]["p99"] == pytest.approx(99, abs=1)


@pytest.mark.parametrize("url", ["postgres://x/y", "sqlite://host/x.db", "sqlite:///", "hashes.db"])
def test_bad_store_urls_say_what_to_write(url):
    with pytest.raises(StoreError, match="sqlite:///"):
        sqlite_path(url)


def test_relative_and_absolute_paths():
    assert sqlite_path("sqlite:///var/h.db") == "var/h.db"
    assert sqlite_path("sqlite:////tmp/h.db") == "/tmp/h.db"


def test_a_store_is_made_with_its_directories(tmp_path):
    path = tmp_path / "new" / "dir" / "h.db"
    SQLiteStore(f"sqlite:///{path}").close()
    assert path.is_file()


def test_reading_a_missing_store_says_so_and_creates_nothing(tmp_path):
    path = tmp_path / "absent" / "h.db"
    with pytest.raises(StoreMissing, match="no such file"):
        SQLiteStore(f"sqlite:///{path}", create=False)
    assert not (tmp_path / "absent").exists()


def test_an_existing_store_opens_for_reading(tmp_path):
    path = tmp_path / "h.db"
    SQLiteStore(f"sqlite:///{path}").insert([result()], 1.0)
    assert SQLiteStore(f"sqlite:///{path}", create=False).stats()["stored"] == 1


def test_a_file_that_is_not_sqlite_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, not a database\n" * 100)
    for create in (True, False):
        with pytest.raises(StoreError, match="not a SQLite database"):
            SQLiteStore(f"sqlite:///{path}", create=create)
    assert path.read_text().startswith("hello"), "left as it was"


def test_a_sqlite_file_of_something_else_is_not_read_as_a_store(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as other:
        other.execute("CREATE TABLE people (name TEXT)")
    with pytest.raises(StoreError, match="not a virtscale store"):
        SQLiteStore(f"sqlite:///{path}", create=False)


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(StoreError, match="is a directory"):
        SQLiteStore(f"sqlite:///{tmp_path}")


def test_a_directory_that_cannot_be_made_is_refused():
    with pytest.raises(StoreError, match="cannot be opened: No such file or directory"):
        SQLiteStore("sqlite:////proc/no-such-process/h.db")


def test_a_commit_that_fails_raises_store_failed_and_stores_nothing(tmp_path, monkeypatch):
    path = tmp_path / "h.db"
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT", 0.1)
    store = SQLiteStore(f"sqlite:///{path}")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # holds the write lock past the busy timeout
    try:
        with pytest.raises(StoreFailed, match="writing 2 result"):
            store.insert([result(), result()], 1.0)
    finally:
        blocker.execute("ROLLBACK")
    assert store.stats()["stored"] == 0
    assert store.insert([result()], 1.0) == (1, 0), "usable again once the lock is gone"


@pytest.mark.parametrize("create", [True, False])
def test_tables_of_the_right_names_but_other_columns_are_not_a_store(tmp_path, create):
    path = tmp_path / "lookalike.db"
    with sqlite3.connect(path) as other:
        other.execute("CREATE TABLE hashes (license TEXT)")
        other.execute("CREATE TABLE counters (name TEXT, value INTEGER)")
    with pytest.raises(StoreError, match=r"table hashes has no .*hash_ms.* column: not a virtscale store"):
        SQLiteStore(f"sqlite:///{path}", create=create)


def test_stats_that_sqlite_cannot_read_raise_store_error(tmp_path):
    store = SQLiteStore(f"sqlite:///{tmp_path / 'h.db'}")
    store._db.execute("DROP TABLE counters")
    with pytest.raises(StoreError, match="cannot be read: no such table: counters"):
        store.stats()
    store.close()


# -- the exact words, and what only a mutation of the code showed untested --------------------


def test_errors_quote_the_store_url(tmp_path):
    url = "sqlite:////proc/no-such-process/h.db"
    with pytest.raises(StoreError) as refused:
        SQLiteStore(url)
    assert (
        str(refused.value)
        == f"--store {url!r} cannot be opened: No such file or directory: /proc/no-such-process"
    )
    file = tmp_path / "file"
    file.write_text("")
    url = f"sqlite:///{file}/h.db"
    with pytest.raises(StoreError) as refused:
        SQLiteStore(url)
    assert str(refused.value) == f"--store {url!r} cannot be opened: {file} is not a directory"


def test_a_url_of_another_kind_is_quoted_without_its_password():
    with pytest.raises(StoreError) as refused:
        sqlite_path("postgresql://collector:s3cret@db:5432/virtscale")
    assert "s3cret" not in str(refused.value)
    assert str(refused.value).endswith("got 'postgresql://collector:***@db:5432/virtscale'")


def test_a_file_that_is_not_sqlite_is_named_so(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, not a database\n" * 100)
    with pytest.raises(StoreError) as refused:
        SQLiteStore(f"sqlite:///{path}")
    assert str(refused.value) == f"--store 'sqlite:///{path}' cannot be used: it is not a SQLite database"


def test_missing_tables_and_columns_are_each_named(tmp_path):
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with pytest.raises(StoreError) as refused:
        SQLiteStore(f"sqlite:///{empty}", create=False)
    assert str(refused.value).endswith("cannot be used: no counters, hashes table: not a virtscale store")
    lookalike = tmp_path / "lookalike.db"
    with sqlite3.connect(lookalike) as other:
        other.execute(
            "CREATE TABLE hashes (id TEXT, hash TEXT, worker TEXT, produced_at REAL, hashed_at REAL)"
        )
        other.execute("CREATE TABLE counters (name TEXT, value INTEGER)")
    with pytest.raises(StoreError) as refused:
        SQLiteStore(f"sqlite:///{lookalike}", create=False)
    assert str(refused.value).endswith("table hashes has no hash_ms, stored_at column: not a virtscale store")


def test_a_failed_write_names_the_store(tmp_path, monkeypatch):
    path = tmp_path / "h.db"
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT", 0.1)
    store = SQLiteStore(f"sqlite:///{path}")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreFailed) as failed:
            store.insert([result()], 1.0)
    finally:
        blocker.execute("ROLLBACK")
    assert str(failed.value) == f"store sqlite:///{path}: writing 1 result(s) failed: database is locked"


def test_a_store_in_the_working_directory_needs_no_directory_made(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    SQLiteStore("sqlite:///hashes.db").close()
    assert (tmp_path / "hashes.db").is_file()


def test_the_writer_thread_may_use_a_store_opened_on_another(tmp_path):
    store = SQLiteStore(f"sqlite:///{tmp_path / 'h.db'}")
    written = []
    writer = threading.Thread(target=lambda: written.append(store.insert([result()], 1.0)))
    writer.start()
    writer.join()
    assert written == [(1, 0)]


def test_a_new_store_has_no_duplicates_and_figures_to_the_millisecond(tmp_path):
    store = SQLiteStore(f"sqlite:///{tmp_path / 'h.db'}")
    assert store.stats() == {
        "stored": 0,
        "duplicates_ignored": 0,
        "latency_seconds": {"p50": None, "p95": None, "p99": None},
        "per_worker": {},
    }
    store.insert([result("vm-1", 0.0, 1.23456)], 0.0)
    assert store.stats()["latency_seconds"] == {"p50": 1.235, "p95": 1.235, "p99": 1.235}
