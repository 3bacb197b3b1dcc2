"""The worker's command line and its signals, as a real process against the real RabbitMQ: a first
SIGTERM finishes and acks the jobs in hand, then exits 0; a second exits at once, and the broker
takes the unfinished jobs back."""

from __future__ import annotations

import signal

import pytest

from tests.conftest import TEST_CONNECTION, known_jobs, publish_raw, queue_depth, wait_until
from virtscale.broker import queue_counts

pytestmark = pytest.mark.broker


def start_worker(processes, broker_url, names, cost: str):
    return processes.start(
        "virtscale.worker",
        "--amqp-url",
        broker_url,
        "--queue",
        names.jobs,
        "--cost",
        cost,
        "--concurrency",
        "2",
        "--name",
        "w-signals",
        # One job per slot: a sized prefetch (a second of work a slot) would take all at once.
        "--prefetch-per-slot",
        "1",
        name="worker",
    )


def test_sigterm_finishes_the_jobs_in_hand_and_exits_0(broker_url, names, processes):
    _ids, bodies = known_jobs(20, seed=24, produced_at=1.0)
    publish_raw(broker_url, names.jobs, bodies)
    worker = start_worker(processes, broker_url, names, "10")
    wait_until(lambda: queue_depth(broker_url, names.results) >= 1, 60, "the first result")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0, processes.output(worker)
    hashed = queue_depth(broker_url, names.results)
    assert hashed < 20, "the stop came too late to test anything"
    assert queue_depth(broker_url, names.jobs) == 20 - hashed, "every job it did not hash given back"
    assert f"stopped: {hashed} hashed" in processes.output(worker), "every result's job acked"


def test_a_second_sigterm_exits_at_once_giving_the_jobs_back(broker_url, names, processes):
    # cost 17: a hash takes seconds, far longer than the wait below for the exit.
    _ids, bodies = known_jobs(4, seed=25, produced_at=1.0)
    publish_raw(broker_url, names.jobs, bodies)
    worker = start_worker(processes, broker_url, names, "17")
    wait_until(lambda: queue_counts(broker_url, names.jobs, TEST_CONNECTION)[0] == 2, 60, "two jobs in hand")
    worker.send_signal(signal.SIGTERM)
    wait_until(lambda: "finishing the jobs in hand" in processes.output(worker), 30, "the first SIGTERM")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(5) == 1, processes.output(worker)
    assert "second SIGTERM: exiting at once" in processes.output(worker)
    wait_until(lambda: queue_depth(broker_url, names.jobs) == 4, 30, "both jobs back in the queue")
    assert queue_depth(broker_url, names.results) == 0
