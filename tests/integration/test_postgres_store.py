"""The PostgreSQL store against the real server `make postgres` set up: the same table and stats as
SQLite, errors that name no password, make postgres itself, and two collectors on one queue
writing into one database, one of them SIGKILLed mid-run."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid

import pytest

from tests.conftest import TEST_CONNECTION, publish_raw, require, run_module, wait_until
from tests.integration.test_pipeline import result_body, start_collector
from tests.support import postgres as test_postgres
from tests.support.deploy_scripts import DEPLOY, load
from virtscale.broker import queue_counts
from virtscale.collector.postgres_store import PostgresStore
from virtscale.collector.sqlite_store import SQLiteStore
from virtscale.messages import Result

pytestmark = pytest.mark.broker


def result(worker: str, produced: float, hashed: float) -> Result:
    return Result(str(uuid.uuid4()), "$2b$04$" + "a" * 53, worker, produced, hashed, 1.5)


def pg_store(schema, create: bool = True) -> PostgresStore:
    return PostgresStore(schema.url(), create=create, password=test_postgres.password())


def test_insert_is_idempotent_by_id_and_counts_what_it_ignored(postgres):
    store = pg_store(postgres)
    first = [result("vm-1", 100, 101) for _ in range(10)]
    assert store.insert(first, 1.0) == (10, 0)
    assert store.insert([*first[:4], first[0], result("vm-1", 100, 101)], 2.0) == (1, 5)
    stats = store.stats()
    store.close()
    assert (stats["stored"], stats["duplicates_ignored"]) == (11, 5)
    assert len(postgres.ids()) == 11 and {r.id for r in first} <= set(postgres.ids())


def test_the_table_is_the_sqlite_one_keyed_by_id(postgres):
    pg_store(postgres).check()
    with postgres.connect() as connection:
        columns = dict(
            connection.execute(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = %s AND table_name = 'hashes'",
                (postgres.name,),
            ).fetchall()
        )
        [key] = connection.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a"
            " ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
            " WHERE i.indrelid = to_regclass('hashes') AND i.indisprimary"
        ).fetchall()
    assert columns == {
        "id": "text",
        "hash": "text",
        "worker": "text",
        "produced_at": "double precision",
        "hashed_at": "double precision",
        "hash_ms": "double precision",
        "stored_at": "double precision",
    }
    assert key == ("id",)


def test_both_stores_give_the_same_stats_for_the_same_rows(postgres, tmp_path):
    # Worker names whose order differs by collation: SQLite compares bytes, a locale would not.
    workers = ["vm-10", "vm-2", "VM-3", "_w", "vm-é"]
    rows = [result(workers[i % 5], 1000.0, 1000.0 + (i * 37 % 101) / 7) for i in range(203)]
    stores = [pg_store(postgres), SQLiteStore(f"sqlite:///{tmp_path / 'h.db'}")]
    for store in stores:
        store.insert(rows[:150], 5.0)
        store.insert(rows[100:], 6.0)
    postgres_stats, sqlite_stats = (store.stats() for store in stores)
    for store in stores:
        store.close()
    assert postgres_stats == sqlite_stats
    assert list(postgres_stats["per_worker"]) == sorted(workers)
    assert postgres_stats["duplicates_ignored"] == 50
    assert postgres_stats["latency_seconds"]["p50"] is not None


def test_collectors_starting_together_create_the_tables_once(postgres):
    stores = [pg_store(postgres) for _ in range(4)]
    failures = []

    def start(store):
        try:
            store.check()
        except Exception as exc:
            failures.append(exc)

    threads = [threading.Thread(target=start, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for store in stores:
        store.close()
    assert failures == []


def collector(*argv: str, env: dict[str, str] | None = None):
    return run_module("virtscale.collector", *argv, timeout=60, env=env)


def test_stats_of_a_database_without_the_table_says_so_and_creates_nothing(postgres):
    run = collector("stats", *postgres.store_args())
    assert run.returncode == 1, run.stderr
    [line] = run.stderr.strip().splitlines()
    assert "no hashes table (`virtscale-collector run` creates it)" in line
    assert postgres.ids() == [] and run.stdout == ""


def test_stats_prints_the_sqlite_shape(postgres):
    store = pg_store(postgres)
    store.insert([result("vm-1", 10, 11), result("vm-2", 10, 13)], 20.0)
    store.close()
    run = collector("stats", *postgres.store_args(), "--amqp-url", "amqp://guest:guest@127.0.0.1:1/%2F")
    assert run.returncode == 0, run.stderr
    stats = json.loads(run.stdout)
    assert stats == {
        "stored": 2,
        "duplicates_ignored": 0,
        "latency_seconds": {"p50": 2.0, "p95": 2.9, "p99": 2.98},
        "per_worker": {"vm-1": 1, "vm-2": 1},
        "dead_lettered": None,
        "impostor_results": None,
    }


def test_a_table_of_another_shape_is_not_a_store(postgres):
    with postgres.connect() as connection:
        connection.execute("CREATE TABLE hashes (license TEXT)")
        connection.execute("CREATE TABLE counters (name TEXT, value BIGINT)")
    for command in ("run", "stats"):
        run = collector(command, *postgres.store_args())
        assert run.returncode == 2, run.stderr
        [line] = run.stderr.strip().splitlines()
        assert re.search(r"table hashes has no .*hash_ms.* column: not a virtscale store", line), line


def test_a_refused_login_exits_1_with_one_line_and_no_password(postgres):
    url = re.sub(r"://[^@]*@", "://no_such_role_x:s3cret-pw@", test_postgres.URL)
    for command in ("run", "stats"):
        run = collector(command, "--store", url)
        assert run.returncode == 1, run.stderr
        [line] = run.stderr.strip().splitlines()
        assert 'role "no_such_role_x" does not exist' in line
        assert "s3cret" not in line


def test_no_password_is_shown_when_the_store_fails(postgres, tmp_path):
    password_file = tmp_path / "password"
    password_file.write_text("file-s3cret\n")
    with_password = re.sub(r"://([^@:]*)@", r"://\1:url-s3cret@", postgres.url())
    unreachable = re.sub(r":\d+/", ":1/", with_password)
    refused = re.sub(r"://[^@]*@", "://no_such_role_x:url-s3cret@", with_password)
    for url in (with_password, unreachable, refused):
        for extra in ([], ["--store-password-file", str(password_file)]):
            run = collector("stats", "--store", url, *extra, "--log-level", "DEBUG")
            assert run.returncode == 1, run.stderr
            assert len(run.stderr.strip().splitlines()) == 1, run.stderr
            assert "s3cret" not in run.stdout + run.stderr


# -- two collectors, one database --------------------------------------------------------------


def batch_reports(log: str) -> tuple[int, int]:
    """(stored, duplicates ignored) that one collector's DEBUG log reports, batch by batch."""
    pairs = re.findall(r"stored (\d+), ignored (\d+) duplicate", log)
    return sum(int(s) for s, _d in pairs), sum(int(d) for _s, d in pairs)


def test_two_collectors_one_killed_mid_run_store_every_result_once(broker_url, names, processes, postgres):
    ids = [str(uuid.uuid4()) for _ in range(3000)]
    copies = ids[:300]  # published twice: the second copy must be counted as ignored, not stored
    url, *password_flags = postgres.store_args()[1:]
    store = [url, *password_flags, "--log-level", "DEBUG"]
    # The first holds its last partial batch unacked (its flush interval outlasts the test), so
    # killing it leaves deliveries the broker must hand to the second.
    first = start_collector(processes, broker_url, names, *store, "--batch", "170", "--flush-interval", "600")
    second = start_collector(processes, broker_url, names, *store, "--batch", "50", "--flush-interval", ".05")

    def consumers() -> int:
        return queue_counts(broker_url, names.results, TEST_CONNECTION)[1]

    wait_until(lambda: consumers() == 2, 60, "two collectors consuming")
    publish_raw(broker_url, names.results, [result_body(job_id) for job_id in ids + copies])

    def first_holds_its_last_partial_batch() -> bool:
        if queue_counts(broker_url, names.results, TEST_CONNECTION)[0] != 0:
            return False
        before = postgres.count()
        time.sleep(1)  # the second flushes within 0.05 s: a count that stays put is the first's hold
        if postgres.count() != before:
            return False
        if before == len(ids):  # its share came out in whole batches: one more result, to hold
            ids.append(str(uuid.uuid4()))
            publish_raw(broker_url, names.results, [result_body(ids[-1])])
            return False
        return True

    wait_until(first_holds_its_last_partial_batch, 180, "the first collector holding a partial batch")
    held = len(ids) - postgres.count()
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    assert held > 0, "killed while it held results"
    wait_until(lambda: postgres.count() == len(ids), 120, f"all {len(ids)} stored")
    wait_until(lambda: queue_counts(broker_url, names.results, TEST_CONNECTION)[0] == 0, 60, "queue empty")
    second.send_signal(signal.SIGTERM)
    assert second.wait(60) == 0, processes.output(second)

    assert sorted(postgres.ids()) == sorted(ids), "every result stored, each once"
    stats = json.loads(collector("stats", *postgres.store_args(), "--amqp-url", broker_url).stdout)
    reports = [batch_reports(processes.output(process)) for process in (first, second)]
    assert all(stored > 0 for stored, _ignored in reports), f"both wrote into the database: {reports}"
    # What the two collectors say they stored and ignored adds up to the rows and the counter.
    assert sum(stored for stored, _ignored in reports) == stats["stored"] == len(ids)
    assert sum(ignored for _stored, ignored in reports) == stats["duplicates_ignored"]
    assert stats["duplicates_ignored"] >= len(copies), "every second copy counted as ignored"
    assert stats["dead_lettered"] == 0


# -- make postgres ---------------------------------------------------------------------------


def psql(sql: str) -> str:
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", "psql", "-X", "-Atq", "-c", sql],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    ).stdout.strip()


@pytest.fixture
def throwaway_account(postgres):
    """A role and database name for one run of the account script, dropped afterwards."""
    require(os.geteuid() == 0, "root (to run psql as the postgres user)")
    name = f"test_account_{uuid.uuid4().hex[:8]}"
    yield name
    psql(f"DROP DATABASE IF EXISTS {name}")
    psql(f"DROP ROLE IF EXISTS {name}")


def test_make_postgres_makes_the_role_database_and_secret_once(throwaway_account, tmp_path):
    name = throwaway_account
    url = f"postgresql://{name}@127.0.0.1:5432/{name}"
    secret = tmp_path / "secrets" / "postgres"
    script = [sys.executable, str(DEPLOY / "postgres_account.py"), "--url", url, "--password-file", secret]
    runs = [subprocess.run(script, capture_output=True, text=True, timeout=60) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert run.stdout.splitlines()[-1] == url, "prints the URL, without the password"
    password = secret.read_text().strip()
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert password not in runs[0].stdout + runs[0].stderr
    assert psql(f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{name}'") == name
    # The role's stored verifier is the one libpq makes from the password in the file.
    verifier = psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{name}'")
    iterations, salt = verifier.split("$")[1].split(":")
    with test_postgres.connect() as connection:
        made = connection.pgconn.encrypt_password(password.encode(), name.encode(), b"scram-sha-256").decode()
    made_iterations, made_salt = made.split("$")[1].split(":")
    scram_verifier = load("postgres_account").scram_verifier
    assert verifier == scram_verifier(password, base64.b64decode(salt), int(iterations))
    assert made == scram_verifier(password, base64.b64decode(made_salt), int(made_iterations))
