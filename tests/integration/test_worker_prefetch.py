"""The worker's prefetch sized by time, against the real RabbitMQ: about a second of work per
slot, timed before the first subscription, so the first consumer already holds it; a fixed
--prefetch-per-slot is kept as given."""

from __future__ import annotations

import re
import signal

import pytest
import requests

from tests.conftest import TEST_CONNECTION, known_jobs, port_open, publish_raw, require, wait_until
from virtscale.broker import queue_counts

pytestmark = pytest.mark.broker

MANAGEMENT_URL = "http://127.0.0.1:15672"


def consumer_prefetch(queue: str) -> list[int]:
    """The prefetch count of each consumer of ``queue``, as the broker applies it."""
    response = requests.get(f"{MANAGEMENT_URL}/api/consumers/%2F", auth=("guest", "guest"), timeout=10)
    response.raise_for_status()
    return [c["prefetch_count"] for c in response.json() if c["queue"]["name"] == queue]


def served_prefetch(queue: str) -> list[int]:
    """consumer_prefetch once the management API lists the consumer (its figures lag)."""
    return wait_until(lambda: consumer_prefetch(queue), 30, f"the consumer of {queue} listed")


def start_worker(processes, broker_url, names, *extra):
    return processes.start(
        "virtscale.worker",
        "--amqp-url",
        broker_url,
        "--queue",
        names.jobs,
        "--cost",
        "4",
        "--concurrency",
        "2",
        "--name",
        "w-prefetch",
        *extra,
        name="worker",
    )


def results(broker_url, names) -> int:
    return queue_counts(broker_url, names.results, TEST_CONNECTION)[0]


def test_the_first_consumer_holds_about_a_second_of_work_per_slot(broker_url, names, processes):
    require(port_open("127.0.0.1", 15672), "RabbitMQ management on 127.0.0.1:15672")
    publish_raw(broker_url, names.jobs, known_jobs(3000, seed=3, produced_at=1.0)[1])
    worker = start_worker(processes, broker_url, names)
    started = wait_until(
        lambda: re.findall(
            r"prefetch (\d+) \(([\d.]+) ms a hash, 1 s of work per slot\), queue", processes.output(worker)
        ),
        60,
        "the start-up line",
    )
    sized, hash_ms = int(started[0][0]), float(started[0][1])
    # A cost-4 hash takes a few milliseconds at most: a second of it is far more than one a slot.
    assert sized >= 2 * 10
    # 2 slots of a second each (the logged time is rounded to 0.1 ms).
    assert 0.9 <= sized * hash_ms / 2000 <= 1.1
    assert served_prefetch(names.jobs) == [sized], "the first consumer already has it"
    wait_until(lambda: results(broker_url, names) == 3000, 120, "every job hashed")
    # A later change of the mean re-subscribes: the consumer the broker now serves has the latest.
    latest = int(re.findall(r"prefetch (\d+) \(", processes.output(worker))[-1])
    assert served_prefetch(names.jobs) == [latest]
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0, processes.output(worker)
    assert queue_counts(broker_url, names.jobs, TEST_CONNECTION)[0] == 0


def test_an_explicit_prefetch_per_slot_is_kept(broker_url, names, processes):
    require(port_open("127.0.0.1", 15672), "RabbitMQ management on 127.0.0.1:15672")
    publish_raw(broker_url, names.jobs, known_jobs(1000, seed=4, produced_at=1.0)[1])
    worker = start_worker(processes, broker_url, names, "--prefetch-per-slot", "3")
    wait_until(lambda: results(broker_url, names) == 1000, 120, "every job hashed")
    assert served_prefetch(names.jobs) == [6]
    assert "prefetch 6, queue" in processes.output(worker)
    assert not re.search(r"prefetch \d+ \(", processes.output(worker))
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0, processes.output(worker)
