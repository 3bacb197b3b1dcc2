"""The warm pool's worker side, against the real RabbitMQ: SIGUSR1 drains and parks the worker
(off the queue, process alive, nothing in hand), SIGUSR2 resumes it, SIGTERM ends it parked."""

from __future__ import annotations

import signal

import pytest

from tests.conftest import TEST_CONNECTION, known_jobs, publish_raw, wait_until
from virtscale.broker import queue_counts

pytestmark = pytest.mark.broker


def consumers(url: str, queue: str) -> int:
    return queue_counts(url, queue, TEST_CONNECTION)[1]


def test_a_parked_worker_leaves_the_queue_takes_nothing_and_resumes(broker_url, names, processes):
    worker = processes.start(
        "virtscale.worker", "--amqp-url", broker_url, "--queue", names.jobs, "--cost", "4", "--name", "w-park"
    )
    wait_until(lambda: consumers(broker_url, names.jobs) == 1, 30, "the worker consuming")
    worker.send_signal(signal.SIGUSR1)
    wait_until(lambda: consumers(broker_url, names.jobs) == 0, 30, "the parked worker off the queue")
    _ids, bodies = known_jobs(20, seed=5)
    publish_raw(broker_url, names.jobs, bodies)
    wait_until(lambda: queue_counts(broker_url, names.jobs, TEST_CONNECTION)[0] == 20, 10, "jobs waiting")
    assert worker.poll() is None, "parked, not exited"
    assert queue_counts(broker_url, names.jobs, TEST_CONNECTION)[0] == 20, "a parked worker takes nothing"
    worker.send_signal(signal.SIGUSR2)
    wait_until(lambda: queue_counts(broker_url, names.results, TEST_CONNECTION)[0] == 20, 60, "all hashed")
    worker.send_signal(signal.SIGUSR1)
    wait_until(lambda: consumers(broker_url, names.jobs) == 0, 30, "parked again")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, "SIGTERM ends a parked worker cleanly"
