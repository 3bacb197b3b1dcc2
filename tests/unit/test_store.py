import sqlite3
import uuid

import pytest
from virtscale.collector.store import Store, StoreError, sqlite_path

from virtscale.messages import Result


def result(worker="vm-1", produced=100.0, hashed=101.0) -> Result:
    return Result(str(uuid.uuid4()), "$2b$04$" + "a" * 53, worker, produced, hashed, 1.5)


def test_insert_is_idempotent_by_id(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/h.db")
    first = [result() for _ in range(10)]
    assert store.insert(first, 1.0) == (10, 0)
    assert store.insert([*first[:4], result()], 2.0) == (1, 4)
    stats = store.stats()
    assert stats["stored"] == 11
    assert stats["duplicates_ignored"] == 4


def test_store_is_wal_and_has_the_contract_columns(tmp_path):
    path = tmp_path / "h.db"
    Store(f"sqlite:///{path}").insert([result()], 3.0)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    columns = {row[1] for row in db.execute("PRAGMA table_info(hashes)")}
    assert {"id", "hash", "worker", "produced_at", "hashed_at", "stored_at"} <= columns


def test_stats_percentiles_and_per_worker(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/h.db")
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
