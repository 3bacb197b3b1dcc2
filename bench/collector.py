"""Collector rows per second, SQLite against PostgreSQL, in one run: the store alone (batches
inserted straight, no broker) and whole collectors draining a queue of results (one, then two
on the same queue and store). PostgreSQL is the server of `make postgres`, in a schema of the
run's own, dropped afterwards."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pika
import psycopg

from bench.pipeline import BENCH_CONNECTION, URL, bare_connection
from virtscale import defaults
from virtscale.broker import declare_topology, delete_topology, queue_counts
from virtscale.collector.store_url import open_store
from virtscale.messages import Result
from virtscale.naming import QueueNames

POSTGRES_URL = os.environ.get("VIRTSCALE_BENCH_POSTGRES_URL", defaults.DEV_POSTGRES_URL)
POSTGRES_PASSWORD_FILE = os.environ.get(
    "VIRTSCALE_BENCH_POSTGRES_PASSWORD_FILE", defaults.DEV_POSTGRES_PASSWORD_FILE
)


@dataclass
class Target:
    """A store to measure: its --store flags, and how to read the stored_at of every row."""

    name: str
    flags: list[str]
    password: str | None
    stored_at: Callable[[], list[float]]


def results(count: int) -> list[Result]:
    now = time.time()
    return [Result(str(uuid.uuid4()), "$2b$04$" + "a" * 53, "bench", now, now, 1.0) for _ in range(count)]


@contextlib.contextmanager
def sqlite_target(directory: str, label: str) -> Iterator[Target]:
    path = os.path.join(directory, f"{label}.db")

    def stored_at() -> list[float]:
        with contextlib.suppress(sqlite3.OperationalError), sqlite3.connect(path) as db:
            return [row[0] for row in db.execute("SELECT stored_at FROM hashes")]
        return []

    yield Target("SQLite", ["--store", f"sqlite:///{path}"], None, stored_at)


@contextlib.contextmanager
def postgres_target(label: str) -> Iterator[Target]:
    with open(POSTGRES_PASSWORD_FILE, encoding="utf-8") as handle:
        password = handle.read().strip()
    schema = f"bench_{label}_{uuid.uuid4().hex[:8]}"
    url = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    with psycopg.connect(POSTGRES_URL, password=password, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:

        def stored_at() -> list[float]:
            with psycopg.connect(url, password=password) as db:
                if not db.execute("SELECT to_regclass('hashes') IS NOT NULL").fetchone()[0]:
                    return []
                return [row[0] for row in db.execute("SELECT stored_at FROM hashes")]

        flags = ["--store", url, "--store-password-file", POSTGRES_PASSWORD_FILE]
        yield Target("PostgreSQL", flags, password, stored_at)
    finally:
        with psycopg.connect(POSTGRES_URL, password=password, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def store_alone_rate(target: Target, rows: int, batch: int) -> float:
    """Rows per second of Store.insert, one transaction per batch."""
    store = open_store(target.flags[1], password=target.password)
    store.check()
    batches = [results(batch) for _ in range(rows // batch)]
    started = time.perf_counter()
    for each in batches:
        store.insert(each, time.time())
    elapsed = time.perf_counter() - started
    store.close()
    return len(batches) * batch / elapsed


def queue_results(names: QueueNames, rows: int) -> None:
    """``rows`` results in the results queue before any collector starts."""
    connection = bare_connection()
    channel = connection.channel()
    for result in results(rows):
        channel.basic_publish("", names.results, result.to_json(), pika.BasicProperties(delivery_mode=2))
    connection.close()
    while queue_counts(URL, names.results, BENCH_CONNECTION)[0] < rows:
        time.sleep(0.1)


def collector_rate(target: Target, rows: int, collectors: int) -> float:
    """Rows per second of ``collectors`` collector processes draining ``rows`` queued results,
    from the stored_at of the rows (start-up excluded): the first batch marks the start."""
    names = QueueNames(f"bench-{uuid.uuid4().hex[:8]}")
    declare_topology(URL, names, defaults.DELIVERY_LIMIT, BENCH_CONNECTION)
    try:
        queue_results(names, rows)
        command = [
            sys.executable,
            "-m",
            "virtscale.collector",
            "run",
            "--amqp-url",
            URL,
            "--queue",
            names.jobs,
        ]
        running = [
            subprocess.Popen([*command, *target.flags, "--log-level", "WARNING"]) for _ in range(collectors)
        ]
        while len(stamps := target.stored_at()) < rows:
            if any(process.poll() is not None for process in running):
                raise RuntimeError(f"a collector on {target.name} exited before storing {rows} rows")
            time.sleep(0.5)
        for process in running:
            process.terminate()
            process.wait(60)
    finally:
        delete_topology(URL, names, BENCH_CONNECTION)
    first = min(stamps)
    return sum(1 for stamp in stamps if stamp > first) / (max(stamps) - first)


def collector_rows(rows: int = 20000, batch: int = defaults.COLLECTOR_BATCH, rounds: int = 3) -> None:
    """Each figure is the best of ``rounds``, SQLite and PostgreSQL taking turns, so that a busy
    spell of a shared machine weighs on both alike."""
    print(f"\nCollector rows per second: {rows} results, batches of {batch}, best of {rounds}, taking turns")
    print(f"{'store':<11} {'what':<32} {'rows/s':>9} {'vs SQLite':>9}")
    measures = [
        ("store alone (Store.insert)", lambda target: store_alone_rate(target, rows, batch)),
        ("1 collector, queued results", lambda target: collector_rate(target, rows, 1)),
        ("2 collectors, one queue", lambda target: collector_rate(target, rows, 2)),
    ]
    with tempfile.TemporaryDirectory(prefix="virtscale-bench-") as directory:
        for index, (what, measure) in enumerate(measures):
            figures: dict[str, float] = {}
            for turn in range(rounds):
                for make in (lambda label: sqlite_target(directory, label), postgres_target):
                    with make(f"m{index}r{turn}") as target:
                        figures[target.name] = max(figures.get(target.name, 0.0), measure(target))
            for name, rate in figures.items():
                print(f"{name:<11} {what:<32} {rate:>9.0f} {rate / figures['SQLite']:>9.2f}")
