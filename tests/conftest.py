"""Shared fixtures: the real RabbitMQ on this machine, per-test queues, component processes."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pytest

from tests.support import postgres as test_postgres
from virtscale.broker import Session, declare_topology, delete_topology
from virtscale.naming import QueueNames
from virtscale.producer.licenses import LicenseGenerator

BROKER_URL = os.environ.get("VIRTSCALE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
MANAGEMENT_URL = os.environ.get("VIRTSCALE_TEST_MANAGEMENT_URL", "http://127.0.0.1:15672")
IN_CI = os.environ.get("CI", "").lower() == "true"

#: How the tests' own AMQP connections show in the management UI.
TEST_CONNECTION = "virtscale-tests"


def require(available: bool, what: str) -> None:
    """Skip when a service is missing locally; fail under CI=true, where it must be there."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is not reachable, and CI=true requires it")
    pytest.skip(f"{what} is not reachable")


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def broker_url() -> str:
    require(port_open("127.0.0.1", 5672), "RabbitMQ on 127.0.0.1:5672")
    return BROKER_URL


@pytest.fixture
def names(broker_url: str) -> Iterator[QueueNames]:
    """A fresh job/result/dead queue trio for one test, deleted afterwards."""
    queue_names = QueueNames(f"test-{uuid.uuid4().hex[:10]}")
    declare_topology(broker_url, queue_names, 5, TEST_CONNECTION)
    yield queue_names
    delete_topology(broker_url, queue_names, TEST_CONNECTION)


def wait_until(condition: Callable[[], object], timeout: float, what: str, every: float = 0.2):
    """Poll until ``condition`` is truthy; fail with ``what`` after ``timeout`` (a bound, not a
    timing assertion: it only stops a broken test from hanging)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


class Processes:
    """Components started as real processes, their output kept in files, all killed at the end."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.started: list[tuple[subprocess.Popen, Path]] = []

    def start(self, module: str, *args: str, name: str | None = None) -> subprocess.Popen:
        log_path = self.directory / f"{name or module}-{len(self.started)}.log"
        handle = open(log_path, "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.started.append((process, log_path))
        return process

    def output(self, process: subprocess.Popen) -> str:
        for candidate, path in self.started:
            if candidate is process:
                return path.read_text(errors="replace")
        raise KeyError(process)

    def all_output(self) -> str:
        return "\n".join(path.read_text(errors="replace") for _process, path in self.started)

    def stop_all(self) -> None:
        for process, _path in self.started:
            if process.poll() is None:
                process.kill()
                process.wait(10)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    running = Processes(tmp_path)
    yield running
    running.stop_all()


def publish_raw(url: str, queue: str, bodies: list[bytes]) -> None:
    """Publish bodies as they are (confirmed), bypassing the producer: bad input, known ids. They
    carry the login as user_id, as a worker's results do."""
    parameters = pika.URLParameters(url)
    connection = pika.BlockingConnection(parameters)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        properties = pika.BasicProperties(delivery_mode=2, user_id=parameters.credentials.username)
        for body in bodies:
            channel.basic_publish("", queue, body, properties)
    finally:
        connection.close()


def drain_queue(url: str, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
    """Take every message now in ``queue``."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    taken = []
    try:
        channel = connection.channel()
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return taken
            taken.append((properties, body))
    finally:
        connection.close()


def run_module(
    module: str, *argv: str, timeout: float = 120, check: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """A component's command line, run to completion with no terminal, output captured;
    ``env`` adds to (or overrides) this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", module, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=check,
        env={**os.environ, **(env or {})},
    )


def known_jobs(count: int, seed: int, produced_at: float | None = None) -> tuple[set[str], list[bytes]]:
    """Job bodies with ids the test knows, and those ids."""
    generate = LicenseGenerator(seed)
    jobs = [
        {
            "id": str(uuid.uuid4()),
            "license": generate(),
            "produced_at": time.time() if produced_at is None else produced_at,
        }
        for _ in range(count)
    ]
    return {job["id"] for job in jobs}, [json.dumps(job).encode() for job in jobs]


def stored_ids(path: Path) -> list[str]:
    """Every id in a collector's store; [] before it exists. The id is the table's primary key,
    so no id shows twice here whatever happened: duplicates_ignored() tells how many copies of a
    result the collector received and dropped."""
    try:
        with sqlite3.connect(path) as connection:
            return [row[0] for row in connection.execute("SELECT id FROM hashes")]
    except sqlite3.OperationalError:
        return []


def duplicates_ignored(path: Path) -> int:
    """How many results a collector received for ids it had already stored (its store keeps the
    figure), i.e. how many jobs were hashed and delivered more than once."""
    with sqlite3.connect(path) as connection:
        row = connection.execute("SELECT value FROM counters WHERE name = 'duplicates'").fetchone()
    return row[0] if row else 0


def queue_depth(url: str, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


@pytest.fixture
def management(broker_url: str) -> str:
    """The real broker's management API, or a skip (a failure under CI) where it is not up."""
    require(port_open("127.0.0.1", 15672), "RabbitMQ management API on 127.0.0.1:15672")
    return MANAGEMENT_URL


@pytest.fixture
def postgres() -> Iterator[test_postgres.Schema]:
    """A schema of its own in the PostgreSQL of `make postgres`, dropped afterwards; a skip (a
    failure under CI) where that server is not reachable."""
    require(test_postgres.reachable(), f"PostgreSQL at {test_postgres.URL}")
    schema = test_postgres.Schema()
    yield schema
    schema.drop()


@pytest.fixture
def acks(monkeypatch) -> list[int]:
    """Every delivery tag acked through a Session, as it is acked."""
    acked: list[int] = []
    ack = Session.ack

    def counted(session, delivery_tag: int) -> None:
        acked.append(delivery_tag)
        ack(session, delivery_tag)

    monkeypatch.setattr(Session, "ack", counted)
    return acked
