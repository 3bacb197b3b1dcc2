"""The pipeline end to end against the real RabbitMQ: producer -> workers -> collector -> SQLite."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest
import requests

from tests.conftest import (
    MANAGEMENT_URL,
    TEST_CONNECTION,
    drain_queue,
    known_jobs,
    port_open,
    publish_raw,
    queue_depth,
    require,
    stored_ids,
    wait_until,
)
from tests.support.proxy import CuttableProxy
from virtscale import defaults
from virtscale.broker import queue_counts
from virtscale.collector import sqlite_store as store_module
from virtscale.collector.consumer import Collector
from virtscale.collector.sqlite_store import SQLiteStore
from virtscale.messages import Result
from virtscale.naming import connection_name, worker_from_consumer_tag
from virtscale.producer.licenses import LicenseGenerator

pytestmark = pytest.mark.broker


def common(url, names):
    return ["--amqp-url", url, "--queue", names.jobs]


def start_collector(processes, url, names, store_url, *extra):
    return processes.start(
        "virtscale.collector",
        "run",
        *common(url, names),
        "--store",
        store_url,
        *extra,
        name="collector",
    )


def start_worker(processes, url, names, name, cost="4", *extra):
    return processes.start(
        "virtscale.worker",
        *common(url, names),
        "--cost",
        cost,
        "--name",
        name,
        "--concurrency",
        "2",
        *extra,
        name=name,
    )


def stored_count(path) -> int:
    return len(stored_ids(path))


def test_end_to_end_with_several_workers(broker_url, names, processes, tmp_path):
    db = tmp_path / "hashes.db"
    collector = start_collector(processes, broker_url, names, f"sqlite:///{db}")
    workers = [start_worker(processes, broker_url, names, f"w{i}") for i in range(3)]
    producer = processes.start(
        "virtscale.producer",
        *common(broker_url, names),
        "--count",
        "600",
        "--rate",
        "0",
        "--seed",
        "5",
        name="producer",
    )
    assert producer.wait(120) == 0, processes.output(producer)
    assert "confirmed 600 of 600" in processes.output(producer)
    wait_until(lambda: stored_count(db) == 600, 180, "600 hashes stored")
    stats = SQLiteStore(f"sqlite:///{db}").stats()
    assert stats["stored"] == 600
    assert set(stats["per_worker"]) == {"w0", "w1", "w2"}, "every worker took part"
    for process in [*workers, collector]:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, processes.output(process)
    assert queue_depth(broker_url, names.jobs) == 0
    assert queue_depth(broker_url, names.results) == 0
    with sqlite3.connect(db) as connection:
        hashes = [row[0] for row in connection.execute("SELECT hash FROM hashes")]
    assert all(h.startswith("$2b$04$") and len(h) == 60 for h in hashes)


def test_kill_9_of_a_worker_mid_job_loses_nothing(broker_url, names, processes, tmp_path):
    db = tmp_path / "hashes.db"
    ids, bodies = known_jobs(80, seed=1, produced_at=1.0)
    publish_raw(broker_url, names.jobs, bodies)
    start_collector(processes, broker_url, names, f"sqlite:///{db}")
    # cost 10: each hash takes tens of milliseconds, so the kill lands in the middle of jobs.
    doomed = start_worker(processes, broker_url, names, "doomed", "10")
    wait_until(lambda: stored_count(db) >= 5, 120, "the first hashes")
    doomed.kill()
    doomed.wait(10)
    assert stored_count(db) < 80, "the kill came too late to test anything"
    start_worker(processes, broker_url, names, "survivor", "10")
    wait_until(lambda: stored_count(db) == 80, 240, "all 80 hashes stored")
    assert set(stored_ids(db)) == ids
    assert queue_depth(broker_url, names.dead) == 0


def test_connection_cut_mid_run_every_component_recovers(broker_url, names, processes, tmp_path):
    proxy = CuttableProxy(("127.0.0.1", 5672))
    try:
        url = proxy.url()
        db = tmp_path / "hashes.db"
        start_collector(processes, url, names, f"sqlite:///{db}")
        start_worker(processes, url, names, "w-cut")
        producer = processes.start(
            "virtscale.producer",
            *common(url, names),
            "--count",
            "400",
            "--rate",
            "40",
            "--seed",
            "9",
            name="producer",
        )
        wait_until(lambda: stored_count(db) >= 50, 120, "the first hashes")
        proxy.cut()
        wait_until(lambda: "retrying in" in processes.all_output(), 30, "a reconnect attempt")
        proxy.restore()
        assert producer.wait(240) == 0, processes.output(producer)
        assert "confirmed 400 of 400" in processes.output(producer)
        wait_until(lambda: stored_count(db) == 400, 240, "all 400 hashes stored")
        assert proxy.connections_made >= 6, "each of the three components reconnected"
    finally:
        proxy.close()


def test_every_component_fails_over_past_a_broker_node_that_is_down(broker_url, names, processes, tmp_path):
    with socket.socket() as probe:  # a port nobody listens on: a node that is down
        probe.bind(("127.0.0.1", 0))
        down = f"amqp://guest:guest@127.0.0.1:{probe.getsockname()[1]}/%2F"
    nodes = f"{down},{broker_url}"
    db = tmp_path / "hashes.db"
    start_collector(processes, nodes, names, f"sqlite:///{db}")
    start_worker(processes, nodes, names, "w-failover")
    producer = processes.start(
        "virtscale.producer", *common(nodes, names), "--count", "100", "--rate", "0", name="producer"
    )
    assert producer.wait(120) == 0, processes.output(producer)
    wait_until(lambda: stored_count(db) == 100, 120, "100 hashes stored")
    logs = processes.all_output()
    assert logs.count(f"{down.split('@')[1]} unavailable: connection refused") >= 3, (
        "each tried the dead node"
    )
    assert "guest:guest" not in logs


BAD_BODIES = {
    "not json": b"this is not json",
    "binary": bytes(range(256)),
    "array": b"[1,2,3]",
    "missing license": json.dumps({"id": str(uuid.uuid4()), "produced_at": 1}).encode(),
    "missing id": json.dumps({"license": "KL-01-AB-0001", "produced_at": 1}).encode(),
    "empty license": json.dumps({"id": str(uuid.uuid4()), "license": "", "produced_at": 1}).encode(),
    "long license": json.dumps({"id": str(uuid.uuid4()), "license": "x" * 73, "produced_at": 1}).encode(),
    "number license": json.dumps({"id": str(uuid.uuid4()), "license": 7, "produced_at": 1}).encode(),
    "bad id": json.dumps({"id": "1234", "license": "KL-01-AB-0001", "produced_at": 1}).encode(),
    "string time": json.dumps({"id": str(uuid.uuid4()), "license": "a", "produced_at": "now"}).encode(),
    "extra field": json.dumps({"id": str(uuid.uuid4()), "license": "a", "produced_at": 1, "x": 1}).encode(),
    "huge body": b"{" + b" " * 1_000_000 + b"}",
    "empty body": b"",
}


def test_malformed_jobs_are_dead_lettered_with_a_reason(broker_url, names, processes, tmp_path):
    db = tmp_path / "hashes.db"
    good_ids, good_bodies = known_jobs(20, seed=2, produced_at=1.0)
    mixed = [body for pair in zip(BAD_BODIES.values(), good_bodies, strict=False) for body in pair]
    publish_raw(broker_url, names.jobs, mixed + good_bodies[len(BAD_BODIES) :])
    start_collector(processes, broker_url, names, f"sqlite:///{db}")
    worker = start_worker(processes, broker_url, names, "w-bad")
    wait_until(lambda: stored_count(db) == 20, 120, "the 20 good jobs stored")
    wait_until(lambda: queue_depth(broker_url, names.dead) == len(BAD_BODIES), 60, "dead letters")
    assert worker.poll() is None, "the worker is still alive"
    dead = drain_queue(broker_url, names.dead)
    reasons = [properties.headers[defaults.REASON_HEADER] for properties, _body in dead]
    assert all(reasons), reasons
    assert {properties.headers["x-virtscale-worker"] for properties, _body in dead} == {"w-bad"}
    assert sorted(body for _p, body in dead) == sorted(BAD_BODIES.values()), "bodies kept unchanged"
    assert set(stored_ids(db)) == good_ids
    assert any("more than 4096" in reason for reason in reasons)
    assert any("more than bcrypt's 72" in reason for reason in reasons)


def test_no_license_number_in_any_log_or_the_store(broker_url, names, processes, tmp_path):
    db = tmp_path / "hashes.db"
    start_collector(processes, broker_url, names, f"sqlite:///{db}", "--log-level", "DEBUG")
    start_worker(processes, broker_url, names, "w-quiet", "4", "--log-level", "DEBUG")
    producer = processes.start(
        "virtscale.producer",
        *common(broker_url, names),
        "--count",
        "200",
        "--rate",
        "0",
        "--seed",
        "77",
        "--log-level",
        "DEBUG",
        name="producer",
    )
    assert producer.wait(120) == 0
    wait_until(lambda: stored_count(db) == 200, 120, "200 hashes stored")
    generate = LicenseGenerator(77)
    licenses = [generate() for _ in range(200)]
    logs = processes.all_output()
    store_bytes = b"".join(path.read_bytes() for path in tmp_path.glob("hashes.db*"))
    assert "DEBUG" in logs, "debug logging was on"
    leaked = [number for number in licenses if number in logs or number.encode() in store_bytes]
    assert leaked == []


def test_refused_credentials_exit_non_zero_with_one_clear_line(broker_url, names, processes):
    worker = processes.start(
        "virtscale.worker",
        "--amqp-url",
        "amqp://nobody:wrong@127.0.0.1:5672/%2F",
        "--queue",
        names.jobs,
        name="refused",
    )
    assert worker.wait(60) == 1
    assert "refused the credentials" in processes.output(worker)


def test_missing_queue_is_a_clear_fatal_error(broker_url, processes):
    worker = processes.start(
        "virtscale.worker", "--amqp-url", broker_url, "--queue", f"absent-{uuid.uuid4().hex}", name="absent"
    )
    assert worker.wait(60) == 1
    assert "make broker" in processes.output(worker)


def test_a_collector_dead_letters_malformed_results_with_a_reason(broker_url, names, processes, tmp_path):
    db = tmp_path / "hashes.db"
    bad = [b"not json", json.dumps({"id": str(uuid.uuid4()), "hash": "md5$x"}).encode()]
    publish_raw(broker_url, names.results, [*bad, result_body()])
    start_collector(processes, broker_url, names, f"sqlite:///{db}")
    wait_until(lambda: queue_depth(broker_url, names.dead) == len(bad), 60, "two dead letters")
    wait_until(lambda: stored_count(db) == 1, 60, "the good result stored")
    dead = drain_queue(broker_url, names.dead)
    assert sorted(body for _p, body in dead) == sorted(bad), "bodies kept unchanged"
    assert all(properties.headers[defaults.REASON_HEADER] for properties, _body in dead)
    assert queue_depth(broker_url, names.results) == 0


# -- the collector's writer thread ---------------------------------------------------------

#: Heartbeat, in seconds, of the collectors below: a stalled I/O thread would be cut off at once.
SHORT_HEARTBEAT = 1


def result_body(job_id: str | None = None) -> bytes:
    return Result(
        id=job_id or str(uuid.uuid4()),
        hash="$2b$04$" + "a" * 53,
        worker="w-test",
        produced_at=1.0,
        hashed_at=2.0,
        hash_ms=3.0,
    ).to_json()


def management(path: str):
    response = requests.get(f"{MANAGEMENT_URL}/api/{path}", auth=("guest", "guest"), timeout=10)
    response.raise_for_status()
    return response.json()


def queue_info(queue: str) -> dict:
    return management(f"queues/%2F/{urllib.parse.quote(queue, safe='')}")


def named_connections(name: str) -> list[dict]:
    return [c for c in management("connections") if c.get("user_provided_name") == name]


def publish_to_a_consuming_collector(broker_url, names, count: int) -> tuple[str, str, list[str]]:
    """Once the collector consumes: its connection's name pattern and the broker's name for the
    connection, and the ids of ``count`` results published to it."""
    wait_until(
        lambda: queue_counts(broker_url, names.results, TEST_CONNECTION)[1] == 1,
        60,
        "the collector consuming",
    )
    name = connection_name("collector", socket.gethostname(), names.jobs)
    connection = wait_until(lambda: named_connections(name), 60, "its connection")[0]["name"]
    ids = [str(uuid.uuid4()) for _ in range(count)]
    publish_raw(broker_url, names.results, [result_body(job_id) for job_id in ids])
    return name, connection, ids


def unacked_on(connection: str) -> int:
    """Deliveries unacked on the channels of one connection (by the broker's name for it)."""
    channels = management("channels")
    # A closing channel may come with empty connection details: it is not that connection's.
    return sum(
        c.get("messages_unacknowledged", 0)
        for c in channels
        if (c.get("connection_details") or {}).get("name") == connection
    )


@pytest.fixture
def management_api(broker_url) -> str:
    require(port_open("127.0.0.1", 15672), "RabbitMQ management on 127.0.0.1:15672")
    return MANAGEMENT_URL


class WriteLock:
    """Another connection holding SQLite's write lock on a store file until released."""

    def __init__(self, path):
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        if self._db is not None:
            self._db.execute("ROLLBACK")
            self._db.close()
            self._db = None


@pytest.fixture
def write_lock():
    """Take a write lock with ``write_lock(path)``; whatever a test leaves held is released."""
    held: list[WriteLock] = []

    def take(path) -> WriteLock:
        held.append(WriteLock(path))
        return held[-1]

    yield take
    for lock in held:
        lock.release()


class ProbedStore(SQLiteStore):
    """A store that tells how many writes have begun (the last may be waiting on a lock)."""

    def __init__(self, url: str):
        super().__init__(url)
        self.writes_begun = 0

    def insert(self, results, stored_at):
        self.writes_begun += 1
        return super().insert(results, stored_at)


class CollectorThread:
    """A collector run in this process, so the test can give its store a long busy timeout."""

    def __init__(self, url, names, store, batch_size=100, flush_interval=0.05):
        self.collector = Collector(url, names, store, batch_size=batch_size, flush_interval=flush_interval)
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.collector.run()
        except BaseException as exc:
            self.failure = exc

    def join(self) -> None:
        self._thread.join(60)
        assert not self._thread.is_alive(), "the collector stopped"

    def stop(self) -> None:
        self.collector.request_stop()
        self.join()
        assert self.failure is None, self.failure


@pytest.fixture
def patient_store(tmp_path, monkeypatch):
    """A store whose writes wait as long as a test holds a lock (SQLite's busy timeout raised)."""
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT", 600)
    path = tmp_path / "hashes.db"
    store = ProbedStore(f"sqlite:///{path}")
    yield path, store
    store.close()


def test_results_are_acked_only_after_their_commit(
    broker_url, names, management_api, patient_store, write_lock, caplog
):
    path, store = patient_store
    lock = write_lock(path)
    collector = CollectorThread(f"{broker_url}?heartbeat={SHORT_HEARTBEAT}", names, store)
    try:
        name, connection, ids = publish_to_a_consuming_collector(broker_url, names, 30)
        wait_until(lambda: queue_info(names.results).get("messages_unacknowledged") == 30, 60, "30 unacked")
        wait_until(lambda: store.writes_begun, 60, "a write begun")
        assert stored_ids(path) == []
        # The writer thread waits on the lock; the I/O thread must keep the heartbeats going.
        time.sleep(5 * SHORT_HEARTBEAT)
        assert queue_info(names.results).get("messages_unacknowledged") == 30, "nothing acked before commit"
        assert [c["name"] for c in named_connections(name)] == [connection], "the same connection, still open"
        lock.release()
        wait_until(lambda: sorted(stored_ids(path)) == sorted(ids), 60, "all 30 stored")
        wait_until(lambda: queue_info(names.results).get("messages") == 0, 60, "all 30 acked")
    finally:
        lock.release()
        collector.stop()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "no reconnect, no error"
    assert collector.collector.stored == 30


def test_a_batch_committed_after_its_session_was_lost_is_not_acked_on_the_next(
    broker_url, names, management_api, patient_store, write_lock, caplog
):
    path, store = patient_store
    lock = write_lock(path)
    proxy = CuttableProxy(("127.0.0.1", 5672))
    # One batch of exactly the 30 results, flushed as the last arrives.
    collector = CollectorThread(proxy.url(), names, store, batch_size=30, flush_interval=600)
    try:
        name, first, ids = publish_to_a_consuming_collector(broker_url, names, 30)
        wait_until(lambda: store.writes_begun == 1, 60, "the batch in the writer's hands")
        proxy.cut()  # while the writer waits on the lock
        proxy.restore()
        second = wait_until(
            lambda: [c["name"] for c in named_connections(name) if c["name"] != first], 60, "a new session"
        )[0]
        # The new session holds the 30 again, unacked, under delivery tags that restart at 1: an ack
        # meant for the old batch would now hit these before they are stored.
        wait_until(lambda: unacked_on(second) == 30, 60, "the 30 redelivered to the new session")
        lock.release()
        wait_until(lambda: sorted(stored_ids(path)) == sorted(ids), 60, "all 30 stored")
        wait_until(lambda: collector.collector.duplicates == 30, 60, "the second copies ignored")
        wait_until(
            lambda: queue_counts(broker_url, names.results, TEST_CONNECTION)[0] == 0, 60, "the queue empty"
        )
    finally:
        lock.release()
        collector.stop()
        proxy.close()
    lost = [r.getMessage() for r in caplog.records if "connection lost" in r.getMessage()]
    assert len(lost) == 1, "one reconnect (the cut): no ack of an old tag broke the new channel"
    assert not [r for r in caplog.records if "PRECONDITION_FAILED" in r.getMessage()]


# -- names in the management UI ------------------------------------------------------------


def test_connections_and_consumers_are_named(broker_url, names, processes, tmp_path, management_api):
    host = socket.gethostname()
    start_collector(processes, broker_url, names, f"sqlite:///{tmp_path}/hashes.db")
    start_worker(processes, broker_url, names, "w-named")
    processes.start("virtscale.producer", *common(broker_url, names), "--rate", "2", name="producer")
    expected = {
        f"virtscale-producer {host} {names.jobs}",
        f"virtscale-collector {host} {names.jobs}",
        f"virtscale-worker w-named {names.jobs}",
    }

    def connection_names() -> set[str]:
        return {c.get("user_provided_name") for c in management("connections")}

    wait_until(lambda: expected <= connection_names(), 60, f"connections named {sorted(expected)}")

    def consumer_tags() -> dict[str, list[str]]:
        tags: dict[str, list[str]] = {}
        for consumer in management("consumers"):
            tags.setdefault(consumer["queue"]["name"], []).append(consumer["consumer_tag"])
        return tags

    tags = wait_until(
        lambda: (found := consumer_tags()) and names.jobs in found and names.results in found and found,
        60,
        "a consumer on the job queue and one on the result queue",
    )
    [worker_tag] = tags[names.jobs]
    [collector_tag] = tags[names.results]
    assert re.fullmatch(r"virtscale-worker:w-named:[0-9a-f]{8}", worker_tag), worker_tag
    assert worker_from_consumer_tag(worker_tag) == "w-named", "the scaler can read the name back"
    assert re.fullmatch(rf"virtscale-collector:{re.escape(host)}:[0-9a-f]{{8}}", collector_tag), collector_tag


# -- the worker on Debian 12's Python packages ----------------------------------------------

DEBIAN_PYTHON = "/usr/bin/python3"


def debian_packages_present() -> bool:
    probe = subprocess.run(
        [DEBIAN_PYTHON, "-s", "-c", "import pika, bcrypt, tenacity; print(pika.__version__)"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )
    return probe.returncode == 0 and probe.stdout.startswith("1.2.")


def test_the_worker_runs_on_debian_12_packages_alone(broker_url, names, processes, tmp_path):
    """As in the VM image: /usr/bin/python3 with python3-pika 1.2, python3-bcrypt and
    python3-tenacity, the code laid out as installed, nothing from the virtualenv."""
    require(
        os.path.exists(DEBIAN_PYTHON) and debian_packages_present(),
        "Debian 12's python3-pika 1.2, python3-bcrypt and python3-tenacity (deploy/setup.sh)",
    )
    root = Path(__file__).resolve().parents[2]
    shutil.copytree(
        root / "virtscale", tmp_path / "opt" / "virtscale", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(
        root / "worker",
        tmp_path / "opt" / "virtscale" / "worker",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    ids, bodies = known_jobs(20, seed=12, produced_at=1.0)
    bodies.append(b"not a job")
    publish_raw(broker_url, names.jobs, bodies)
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log_file:
        worker = subprocess.Popen(
            [DEBIAN_PYTHON, "-s", "-m", "virtscale.worker", *common(broker_url, names), "--cost", "4"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env={
                "PATH": "/usr/bin:/bin",
                "PYTHONPATH": str(tmp_path / "opt"),
                "VIRTSCALE_WORKER_NAME": "vm-deb",
            },
        )
        try:
            wait_until(lambda: queue_depth(broker_url, names.results) == 20, 120, "20 results")
            wait_until(lambda: queue_depth(broker_url, names.dead) == 1, 60, "one dead letter")
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(60) == 0, log_path.read_text()
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)
    results = [json.loads(body) for _p, body in drain_queue(broker_url, names.results)]
    assert {result["id"] for result in results} == ids
    assert {result["worker"] for result in results} == {"vm-deb"}
    [(properties, _body)] = drain_queue(broker_url, names.dead)
    assert properties.headers["x-virtscale-worker"] == "vm-deb"
    assert "Traceback" not in log_path.read_text()
