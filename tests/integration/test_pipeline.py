"""The pipeline end to end against the real RabbitMQ: producer -> workers -> collector -> SQLite."""

from __future__ import annotations

import json
import signal
import sqlite3
import uuid

import pytest
from virtscale.collector.store import Store
from virtscale.producer.licenses import LicenseGenerator

from tests.conftest import drain_queue, known_jobs, publish_raw, queue_depth, stored_ids, wait_until
from tests.support.proxy import CuttableProxy
from virtscale import defaults

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
    stats = Store(f"sqlite:///{db}").stats()
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
