"""The collector against the real RabbitMQ, run in this process: a result is acked once its batch
is committed, or once its dead letter is confirmed; a copy of a stored result is counted and
acked, not stored again; a store that fails by a fault of ours stops the collector with nothing
of the batch acked."""

from __future__ import annotations

import logging
import re
import socket
import threading
import uuid

import pika
import pytest
import requests

from tests.conftest import (
    MANAGEMENT_URL,
    TEST_CONNECTION,
    drain_queue,
    publish_raw,
    queue_depth,
    stored_ids,
    wait_until,
)
from tests.integration.test_pipeline import CollectorThread, result_body
from virtscale import defaults
from virtscale.broker import queue_counts
from virtscale.collector.consumer import Collector
from virtscale.collector.sqlite_store import SQLiteStore

pytestmark = pytest.mark.broker

#: Seconds a step may take before the test fails: each takes a second or two when all is well.
PATIENCE = 10


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "hashes.db"
    opened = SQLiteStore(f"sqlite:///{path}")
    yield path, opened
    opened.close()


def management_get(path: str):
    response = requests.get(f"{MANAGEMENT_URL}/api/{path}", auth=("guest", "guest"), timeout=10)
    response.raise_for_status()
    return response.json()


def consuming(broker_url, names) -> None:
    wait_until(
        lambda: queue_counts(broker_url, names.results, TEST_CONNECTION)[1] == 1, PATIENCE, "consuming"
    )


def test_a_copy_of_a_stored_result_is_counted_acked_and_not_stored_again(
    broker_url, names, store, acks, caplog
):
    caplog.set_level("DEBUG", logger="virtscale.collector")
    path, sqlite = store
    thread = CollectorThread(broker_url, names, sqlite, batch_size=3, flush_interval=0.05)
    collector = thread.collector
    try:
        consuming(broker_url, names)
        ids = [str(uuid.uuid4()) for _ in range(4)]
        a, b, c, d = ids
        # Copies in more than one batch of 3: the figure adds up over the batches.
        publish_raw(broker_url, names.results, [result_body(job_id) for job_id in [a, b, c, a, d, b, c]])
        wait_until(lambda: len(acks) == 7, PATIENCE, "all 7 acked")
    finally:
        thread.stop()
    assert sorted(stored_ids(path)) == sorted(ids)
    assert (collector.stored, collector.duplicates) == (4, 3), "7 received: 4 stored, 3 copies ignored"
    assert sqlite.stats()["duplicates_ignored"] == 3
    said = [r.getMessage() for r in caplog.records]
    assert "collector stopped: 4 stored, 3 duplicates ignored, 0 from a publisher not entitled" in said
    assert "stored 3, ignored 0 duplicate(s)" in said, "the first batch"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert queue_depth(broker_url, names.results) == 0


def test_a_malformed_result_is_dead_lettered_with_its_id_and_acked_once_confirmed(
    broker_url, names, store, acks
):
    path, sqlite = store
    thread = CollectorThread(broker_url, names, sqlite)
    message_id = str(uuid.uuid4())
    try:
        consuming(broker_url, names)
        connection = pika.BlockingConnection(pika.URLParameters(broker_url))
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            channel.basic_publish(
                "", names.results, b"not a result", pika.BasicProperties(message_id=message_id)
            )
        finally:
            connection.close()
        good = str(uuid.uuid4())
        publish_raw(broker_url, names.results, [result_body(good)])
        wait_until(lambda: len(acks) == 2, PATIENCE, "both acked")
    finally:
        thread.stop()
    [(properties, body)] = drain_queue(broker_url, names.dead)
    assert body == b"not a result" and properties.message_id == message_id
    assert properties.headers[defaults.REASON_HEADER] == "body is not JSON"
    assert stored_ids(path) == [good]
    assert queue_depth(broker_url, names.results) == 0


class FaultyStore(SQLiteStore):
    """A store whose insert fails by a fault that is not the store's state (an injected bug)."""

    def insert(self, results, stored_at):
        raise RuntimeError("injected")


def test_a_write_that_fails_by_a_fault_of_ours_stops_the_collector_with_nothing_acked(
    broker_url, names, tmp_path, acks, caplog
):
    faulty = FaultyStore(f"sqlite:///{tmp_path / 'hashes.db'}")
    thread = CollectorThread(broker_url, names, faulty)
    try:
        consuming(broker_url, names)
        publish_raw(broker_url, names.results, [result_body() for _ in range(5)])
        thread.join()
    finally:
        faulty.close()
    assert isinstance(thread.failure, RuntimeError) and str(thread.failure) == "injected"
    said = [r.getMessage() for r in caplog.records]
    assert "writing a batch failed: RuntimeError('injected'); stopping, nothing of it acked" in said
    assert acks == []
    wait_until(lambda: queue_depth(broker_url, names.results) == 5, PATIENCE, "all 5 back in the queue")


class ThreadNoting(SQLiteStore):
    """A store that notes the thread each write runs on."""

    threads: set[str]

    def insert(self, results, stored_at):
        self.threads.add(threading.current_thread().name)
        return super().insert(results, stored_at)


@pytest.mark.parametrize("host", [None, "collector-host-7"])
def test_its_connection_consumer_and_writer_thread_are_named(
    broker_url, names, tmp_path, acks, management, host
):
    store = ThreadNoting(f"sqlite:///{tmp_path / 'h.db'}")
    store.threads = set()
    collector = Collector(broker_url, names, store, batch_size=7, flush_interval=0.05, host=host)
    thread = threading.Thread(target=collector.run, daemon=True)
    thread.start()
    expected_host = host or socket.gethostname()
    try:
        consuming(broker_url, names)
        consumer = wait_until(
            lambda: [
                c
                for c in management_get("consumers")
                if c["queue"]["name"] == names.results
                and (c.get("channel_details") or {}).get("connection_name")
            ],
            PATIENCE,
            "the consumer in the management API",
        )[0]
        assert re.fullmatch(
            rf"virtscale-collector:{re.escape(expected_host)}:[0-9a-f]{{8}}", consumer["consumer_tag"]
        )
        assert consumer["prefetch_count"] == 14, "two batches"
        connection = consumer["channel_details"]["connection_name"]
        assert [
            c["user_provided_name"] for c in management_get("connections") if c["name"] == connection
        ] == [f"virtscale-collector {expected_host} {names.jobs}"]
        publish_raw(broker_url, names.results, [result_body()])
        wait_until(lambda: acks, PATIENCE, "the result acked")
    finally:
        collector.request_stop()
        thread.join(PATIENCE)
        store.close()
    assert store.threads == {"store_0"}


def test_a_full_batch_is_written_at_once_without_waiting_for_the_timer(broker_url, names, store, acks):
    path, sqlite = store
    thread = CollectorThread(broker_url, names, sqlite, batch_size=3, flush_interval=600)
    try:
        consuming(broker_url, names)
        ids = [str(uuid.uuid4()) for _ in range(3)]
        publish_raw(broker_url, names.results, [result_body(job_id) for job_id in ids])
        wait_until(lambda: len(acks) == 3, PATIENCE, "the batch of 3 written and acked")
    finally:
        thread.stop()
    assert sorted(stored_ids(path)) == sorted(ids)
