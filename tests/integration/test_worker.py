"""The worker against the real RabbitMQ, run in this process: what it stores is the bcrypt of each
job's license, and a job is acked only once the broker has confirmed its result (or its dead
letter). A queue at its length limit with overflow reject-publish makes the broker refuse a
publish (a nack): the worker must then give the job back, never ack it."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid

import bcrypt
import pika
import pytest
import requests

from tests.conftest import (
    MANAGEMENT_URL,
    TEST_CONNECTION,
    drain_queue,
    known_jobs,
    publish_raw,
    queue_depth,
    wait_until,
)
from virtscale import defaults
from virtscale.broker import queue_counts
from virtscale.naming import QueueNames
from virtscale.worker import consumer as consumer_module
from virtscale.worker.consumer import Worker

pytestmark = pytest.mark.broker

#: Seconds a step may take before the test fails (a bound against a hang, not a timing: a step
#: takes a few seconds when all is well, several times that on a loaded machine).
PATIENCE = 30

#: The delivery limit the `names` fixture declares the job queue with.
DELIVERY_LIMIT = 5


class WorkerThread:
    """A worker run in this process; ``delivered`` holds the body of every delivery it took."""

    def __init__(self, url, names, cost=4, concurrency=2, prefetch_per_slot=None):
        self.worker = Worker(
            url,
            names,
            cost=cost,
            concurrency=concurrency,
            name="w-in-process",
            prefetch_per_slot=prefetch_per_slot,
        )
        self.delivered: list[bytes] = []
        on_delivery = self.worker._on_delivery

        def counted(delivery_tag, properties, body) -> None:
            self.delivered.append(body)
            on_delivery(delivery_tag, properties, body)

        self.worker._on_delivery = counted
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="worker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:
            self.failure = exc

    def stop(self) -> None:
        self.worker.request_stop()
        self.join()

    def join(self) -> None:
        self._thread.join(PATIENCE)
        assert not self._thread.is_alive(), "the worker stopped"
        assert self.failure is None, self.failure


def limit_queue(url: str, queue: str, length: int, exchange: str, fill: int = 0) -> None:
    """Declare ``queue`` anew, refusing publishes (a broker nack) once it holds ``length``, and
    bound again to the results ``exchange`` the worker publishes to (the delete unbound it)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.queue_delete(queue)
        channel.queue_declare(
            queue, durable=True, arguments={"x-max-length": length, "x-overflow": "reject-publish"}
        )
        channel.queue_bind(queue, exchange, routing_key=queue)
    finally:
        connection.close()
    publish_raw(url, queue, [b"filler"] * fill)


def publish_with_id(url: str, queue: str, body: bytes, message_id: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2, message_id=message_id))
    finally:
        connection.close()


def management_get(path: str):
    response = requests.get(f"{MANAGEMENT_URL}/api/{path}", auth=("guest", "guest"), timeout=10)
    response.raise_for_status()
    return response.json()


def licenses_by_id(bodies: list[bytes]) -> dict[str, str]:
    return {job["id"]: job["license"] for job in map(json.loads, bodies)}


def test_each_hash_is_the_bcrypt_of_its_job_s_license(broker_url, names, acks):
    ids, bodies = known_jobs(12, seed=21, produced_at=1.0)
    publish_raw(broker_url, names.jobs, bodies)
    thread = WorkerThread(broker_url, names)
    try:
        wait_until(lambda: queue_depth(broker_url, names.results) == 12, PATIENCE, "12 results")
        wait_until(lambda: len(acks) == 12, PATIENCE, "12 jobs acked")
    finally:
        thread.stop()
    licenses = licenses_by_id(bodies)
    delivered = drain_queue(broker_url, names.results)
    results = [json.loads(body) for _properties, body in delivered]
    assert sorted(result["id"] for result in results) == sorted(ids)
    assert [properties.message_id for properties, _body in delivered] == [r["id"] for r in results]
    # Milliseconds to 3 decimals: rounded so, and not to whole milliseconds.
    assert all(result["hash_ms"] == round(result["hash_ms"], 3) for result in results)
    assert any(result["hash_ms"] != round(result["hash_ms"], 2) for result in results)
    for result in results:
        assert result["hash"].startswith("$2b$04$"), result["hash"]
        assert bcrypt.checkpw(licenses[result["id"]].encode(), result["hash"].encode()), result["id"]
        assert not bcrypt.checkpw(b"another license", result["hash"].encode())
        assert result["worker"] == "w-in-process" and result["produced_at"] == 1.0
        assert result["hashed_at"] > result["produced_at"] and result["hash_ms"] > 0
    assert thread.worker.hashed == 12 and thread.worker.dead_lettered == 0
    assert queue_depth(broker_url, names.jobs) == 0


def test_a_job_whose_result_the_broker_refuses_is_given_back_never_acked(broker_url, names, acks, caplog):
    """A result queue that takes 3: the other jobs' results are nacked by the broker, so those jobs
    go back to their queue, again and again, until the delivery limit dead-letters them."""
    limit_queue(broker_url, names.results, 3, names.results_exchange)
    _ids, bodies = known_jobs(10, seed=22, produced_at=1.0)
    publish_raw(broker_url, names.jobs, bodies)
    # A fixed prefetch: a resize re-subscribes, and the deliveries it gives back would also count
    # toward the delivery limit, without a refusal to log.
    thread = WorkerThread(broker_url, names, prefetch_per_slot=1)
    try:
        wait_until(
            lambda: queue_depth(broker_url, names.dead) == 7, PATIENCE, "7 jobs past the delivery limit"
        )
        wait_until(
            lambda: queue_counts(broker_url, names.jobs, TEST_CONNECTION)[0] == 0, PATIENCE, "none left"
        )
    finally:
        thread.stop()
    assert len(acks) == 3, "only the jobs whose result was confirmed are acked"
    assert thread.worker.hashed == 3
    results = {json.loads(body)["id"] for _properties, body in drain_queue(broker_url, names.results)}
    dead = drain_queue(broker_url, names.dead)
    assert {properties.headers["x-first-death-reason"] for properties, _body in dead} == {"delivery_limit"}
    assert not results & {json.loads(body)["id"] for _properties, body in dead}
    assert len(results | {json.loads(body)["id"] for _p, body in dead}) == 10, "every job accounted for"
    refused = [r for r in caplog.records if "result not confirmed; job requeued" in r.getMessage()]
    assert len(refused) == 7 * (DELIVERY_LIMIT + 1), "each refused job tried at every delivery"


def test_a_malformed_job_is_not_acked_while_its_dead_letter_is_refused(broker_url, names, acks, caplog):
    """The dead-letter queue full: every dead letter the worker sends is nacked by the broker, so
    the job goes back to its queue each time, until the broker's own delivery limit takes it."""
    limit_queue(broker_url, names.dead, 1, names.results_exchange, fill=1)
    message_id = str(uuid.uuid4())
    publish_with_id(broker_url, names.jobs, b"not a job", message_id)
    thread = WorkerThread(broker_url, names, prefetch_per_slot=1)  # no resize: see above

    def refusals() -> list[str]:
        return [r.getMessage() for r in caplog.records if "dead letter not confirmed" in r.getMessage()]

    try:
        wait_until(lambda: len(refusals()) == DELIVERY_LIMIT + 1, PATIENCE, "a refusal at every delivery")
        wait_until(
            lambda: queue_counts(broker_url, names.jobs, TEST_CONNECTION)[0] == 0, PATIENCE, "none ready"
        )
    finally:
        thread.stop()
    assert acks == [] and thread.worker.dead_lettered == 0, "never acked: its dead letter was refused"
    assert set(refusals()) == {f"job {message_id}: dead letter not confirmed; job requeued"}
    said = [r.getMessage() for r in caplog.records]
    assert f"dead-lettering message {message_id}: body is not JSON" in said


def test_a_malformed_job_is_dead_lettered_with_its_reason_and_id_then_acked(broker_url, names, acks):
    message_id = str(uuid.uuid4())
    publish_with_id(broker_url, names.jobs, b"not a job", message_id)
    thread = WorkerThread(broker_url, names, prefetch_per_slot=1)  # no resize: see above
    try:
        wait_until(lambda: acks, PATIENCE, "the job acked")
    finally:
        thread.stop()
    [(properties, body)] = drain_queue(broker_url, names.dead)
    assert body == b"not a job"
    assert properties.headers[defaults.REASON_HEADER] == "body is not JSON"
    assert properties.headers["x-virtscale-worker"] == "w-in-process"
    assert properties.message_id == message_id, "the dead letter keeps the job's message id"
    assert thread.worker.dead_lettered == 1 and thread.worker.hashed == 0
    assert len(acks) == 1
    assert queue_depth(broker_url, names.jobs) == 0


def test_a_stop_finishes_and_acks_the_jobs_in_hand_and_takes_no_more(broker_url, names, acks, caplog):
    caplog.set_level("INFO", logger="virtscale.worker")
    # cost 10: each hash takes long enough that the stop finds jobs in hand.
    _ids, bodies = known_jobs(20, seed=23, produced_at=1.0)
    publish_raw(broker_url, names.jobs, bodies)
    # One job per slot: a sized prefetch (a second of work a slot) would take all 20 at once.
    thread = WorkerThread(broker_url, names, cost=10, concurrency=2, prefetch_per_slot=1)
    wait_until(lambda: thread.worker.hashed >= 1, PATIENCE, "the first job hashed")
    thread.stop()
    delivered = {json.loads(body)["id"] for body in thread.delivered}
    results = {json.loads(body)["id"] for _properties, body in drain_queue(broker_url, names.results)}
    assert len(thread.delivered) == len(delivered), "no job delivered twice"
    assert results == delivered, "every job it took, hashed; none given back"
    assert len(acks) == len(delivered) == thread.worker.hashed
    assert len(delivered) < 20, "the stop came too late to test anything"
    assert queue_counts(broker_url, names.jobs, TEST_CONNECTION)[0] == 20 - len(delivered)
    said = [r.getMessage() for r in caplog.records if r.name == "virtscale.worker.consumer"]
    start = f"worker w-in-process: cost 10, 2 slot(s), prefetch 2, queue {names.jobs}"
    assert said[0] == start
    assert any(re.fullmatch(r"worker w-in-process draining: [12] job\(s\) in hand", line) for line in said)
    assert said[-1] == f"worker w-in-process stopped: {len(delivered)} hashed, 0 dead-lettered"


def consumers(url: str, queue: str) -> int:
    return queue_counts(url, queue, TEST_CONNECTION)[1]


def test_a_parked_worker_holds_nothing_takes_nothing_resumes_and_ends_parked(
    broker_url, names, acks, caplog, management
):
    caplog.set_level("INFO", logger="virtscale.worker")
    thread = WorkerThread(broker_url, names)
    worker = thread.worker
    wait_until(lambda: consumers(broker_url, names.jobs) == 1, PATIENCE, "the worker consuming")
    consumer = wait_until(
        lambda: [
            c
            for c in management_get("consumers")
            if c["queue"]["name"] == names.jobs and (c.get("channel_details") or {}).get("connection_name")
        ],
        PATIENCE,
        "the consumer in the management API",
    )[0]
    assert re.fullmatch(r"virtscale-worker:w-in-process:[0-9a-f]{8}", consumer["consumer_tag"])
    # Sized by time before it subscribed: the first consumer holds about a second of cost-4 work.
    assert consumer["prefetch_count"] == worker.prefetch > 2 * 20
    connection = consumer["channel_details"]["connection_name"]
    assert [c["user_provided_name"] for c in management_get("connections") if c["name"] == connection] == [
        f"virtscale-worker w-in-process {names.jobs}"
    ]
    assert not worker.stop_parked(), "not parked yet"
    worker.request_park()
    wait_until(lambda: consumers(broker_url, names.jobs) == 0, PATIENCE, "the parked worker off the queue")
    _ids, bodies = known_jobs(5, seed=26, produced_at=1.0)
    publish_raw(broker_url, names.jobs, bodies)
    wait_until(
        lambda: queue_counts(broker_url, names.jobs, TEST_CONNECTION)[0] == 5, PATIENCE, "5 jobs waiting"
    )
    assert worker.hashed == 0 and thread.delivered == [], "a parked worker takes nothing"
    worker.request_resume()
    wait_until(lambda: len(acks) == 5, PATIENCE, "the 5 jobs hashed after the resume")
    assert worker.hashed == 5 and not worker.parking
    worker.request_park()
    wait_until(lambda: consumers(broker_url, names.jobs) == 0, PATIENCE, "parked again")
    parked = "worker w-in-process: parked, nothing in hand; waiting to be resumed"
    wait_until(lambda: [r.getMessage() for r in caplog.records].count(parked) == 2, PATIENCE, "parked")
    assert worker.stop_parked(), "it was parked"
    thread.join()
    assert queue_depth(broker_url, names.results) == 5
    said = [r.getMessage() for r in caplog.records if r.name == "virtscale.worker.consumer"]
    assert said.count("worker w-in-process: parked, nothing in hand; waiting to be resumed") == 2
    assert said.count("worker w-in-process: resumed") == 1


def test_a_dead_letter_without_a_usable_id_is_logged_by_its_delivery_tag(broker_url, names, acks, caplog):
    publish_raw(broker_url, names.jobs, [b"not a job"])
    thread = WorkerThread(broker_url, names)
    try:
        wait_until(lambda: acks, PATIENCE, "the job dead-lettered and acked")
    finally:
        thread.stop()
    assert re.fullmatch(
        r"dead-lettering message #\d+: body is not JSON",
        next(r.getMessage() for r in caplog.records if "dead-lettering" in r.getMessage()),
    )
    [(properties, body)] = drain_queue(broker_url, names.dead)
    assert body == b"not a job" and properties.message_id is None


def test_a_job_bcrypt_refuses_is_dead_lettered_as_it_was(broker_url, names, acks, monkeypatch, caplog):
    """An injected failure: bcrypt raising on a job that passed validation. It is never retried."""
    ids, bodies = known_jobs(3, seed=27, produced_at=1.0)
    doomed = json.loads(bodies[1])
    hash_license = consumer_module.hash_license

    def refusing(license_number: str, cost: int):
        if license_number == doomed["license"]:
            raise ValueError("injected")
        return hash_license(license_number, cost)

    monkeypatch.setattr(consumer_module, "hash_license", refusing)
    publish_raw(broker_url, names.jobs, bodies)
    thread = WorkerThread(broker_url, names)
    try:
        wait_until(lambda: len(acks) == 3, PATIENCE, "the 3 jobs acked")
    finally:
        thread.stop()
    [(properties, body)] = drain_queue(broker_url, names.dead)
    assert json.loads(body) == doomed, "the job as it was"
    assert properties.headers[defaults.REASON_HEADER] == "hashing failed: ValueError"
    assert properties.headers["x-virtscale-worker"] == "w-in-process"
    assert properties.message_id == doomed["id"]
    assert f"job {doomed['id']}: hashing failed: ValueError" in [r.getMessage() for r in caplog.records]
    results = {json.loads(body)["id"] for _properties, body in drain_queue(broker_url, names.results)}
    assert results == ids - {doomed["id"]}
    assert thread.worker.hashed == 2 and thread.worker.dead_lettered == 1


def test_a_license_that_is_no_plate_reaches_no_log_line_or_reason(broker_url, names, acks, caplog):
    """The scrubber knows plate shapes only: a license of any other shape must never be logged."""
    caplog.set_level("DEBUG")
    secret = "no-plate:Q7#x"
    good = {"id": str(uuid.uuid4()), "license": secret, "produced_at": 1.0}
    bad = {"id": str(uuid.uuid4()), "license": secret, "produced_at": 1.0, "extra": 1}
    publish_raw(broker_url, names.jobs, [json.dumps(job).encode() for job in (good, bad)])
    thread = WorkerThread(broker_url, names)
    try:
        wait_until(lambda: len(acks) == 2, PATIENCE, "both jobs settled")
    finally:
        thread.stop()
    [(properties, _body)] = drain_queue(broker_url, names.dead)
    assert secret not in properties.headers[defaults.REASON_HEADER]
    assert secret not in caplog.text
    assert f"job {good['id']} hashed" in caplog.text, "debug lines were on"


def test_no_more_hashes_at_once_than_slots_on_threads_named_bcrypt(broker_url, names, acks, monkeypatch):
    """One slot and three jobs prefetched: the jobs are hashed one after another."""
    hash_license = consumer_module.hash_license
    lock = threading.Lock()
    running, most, threads = 0, 0, set()

    def watched(license_number: str, cost: int):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            threads.add(threading.current_thread().name)
        try:
            time.sleep(0.05)  # long enough for a second hash to overlap, were it allowed to
            return hash_license(license_number, cost)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(consumer_module, "hash_license", watched)
    _ids, bodies = known_jobs(6, seed=28, produced_at=1.0)
    publish_raw(broker_url, names.jobs, bodies)
    worker = Worker(broker_url, names, cost=4, concurrency=1, name="w-one", prefetch_per_slot=3)
    assert worker.prefetch == 3
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(acks) == 6, PATIENCE, "the 6 jobs hashed")
    finally:
        worker.request_stop()
        thread.join(PATIENCE)
    assert most == 1
    assert all(name.startswith("bcrypt_") for name in threads), threads


def test_the_default_is_one_job_per_slot():
    worker = Worker("amqp://guest:guest@127.0.0.1:1/%2F", QueueNames("jobs"), cost=4, concurrency=3, name="w")
    assert worker.prefetch == 3
