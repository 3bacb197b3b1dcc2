"""The queue reading from management API answers a test injects (a local stand-in for the API),
with AMQP out of reach: a field the broker did not report is missing, never 0."""

from __future__ import annotations

import pytest

from tests.support.clock import FakeClock
from tests.support.management_stub import ManagementStub, queue_body
from virtscale.scaler.queue_monitor import STATS_SETTLE, QueueMonitor

#: Nobody listens on port 1: every passive declare fails at once, as with a broker not up yet.
AMQP_DOWN = "amqp://guest:guest@127.0.0.1:1/%2F"


@pytest.fixture
def stub():
    server = ManagementStub()
    yield server
    server.close()


def monitor_of(stub: ManagementStub, clock=None) -> QueueMonitor:
    return QueueMonitor(stub.url, ("guest", "guest"), "/", "jobs", AMQP_DOWN, clock=clock or FakeClock())


def test_a_queue_object_without_its_counts_is_degraded_not_zero(stub):
    stub.body = queue_body("jobs", ready=None, unacked=None, consuming=None, publish_rate=None, ack_rate=None)
    reading = monitor_of(stub).read()
    assert reading.degraded
    assert (reading.ready, reading.unacked, reading.consumers, reading.depth) == (None, None, None, None)
    assert (reading.publish_rate, reading.ack_rate) == (None, None)
    assert not reading.consumers_known
    for field in ("messages_ready", "messages_unacknowledged", "consumers", "consumer_details"):
        assert field in reading.problem
    assert "AMQP" in reading.problem, "the passive declare was tried"


@pytest.mark.parametrize(
    ("missing", "field"),
    [
        (dict(ready=None), "messages_ready"),
        (dict(unacked=None), "messages_unacknowledged"),
        (dict(consuming=None), "consumer_details"),
    ],
)
def test_each_missing_count_makes_the_reading_degraded_and_says_which(stub, missing, field):
    stub.body = queue_body("jobs", **{"ready": 7, "unacked": 2, "consuming": ("vm-1",), **missing})
    reading = monitor_of(stub).read()
    assert reading.degraded and field in reading.problem
    if field == "consumer_details":
        assert not reading.consumers_known and reading.consuming == frozenset()
    if field == "messages_unacknowledged":
        assert reading.unacked is None and reading.depth == 7, "the ready count alone: a lower bound"


def test_a_complete_queue_object_is_read_as_it_is(stub):
    stub.body = queue_body(
        "jobs", ready=7, unacked=2, consuming=("vm-1", "vm-2"), publish_rate=3.5, ack_rate=3.0
    )
    reading = monitor_of(stub).read()
    assert not reading.degraded and reading.problem is None
    assert (reading.ready, reading.unacked, reading.consumers, reading.depth) == (7, 2, 2, 9)
    assert (reading.publish_rate, reading.ack_rate) == (3.5, 3.0)
    assert reading.consumers_known and reading.consuming == {"vm-1", "vm-2"}


def test_a_rate_the_broker_did_not_report_is_none_not_zero(stub):
    stub.body = queue_body("jobs", ready=7, publish_rate=None, ack_rate=None)
    reading = monitor_of(stub).read()
    assert reading.publish_rate is None and reading.ack_rate is None
    assert not reading.degraded, "a queue never published to has no rates: no signal is missing"


def test_an_empty_queue_in_the_first_counts_is_not_believed_until_confirmed(stub):
    clock = FakeClock()
    monitor = monitor_of(stub, clock)
    stub.body = queue_body("jobs", ready=None, unacked=None, consuming=None)
    assert monitor.read().degraded
    stub.body = queue_body("jobs", ready=0, unacked=0)
    first = monitor.read()
    assert first.degraded and "not confirmed" in first.problem, "AMQP down: the first zero is unchecked"
    clock.now += STATS_SETTLE
    assert not monitor.read().degraded, "counts there for STATS_SETTLE: an empty queue is believed"
    stub.body = queue_body("jobs", ready=None, unacked=None, consuming=None)
    monitor.read()
    stub.body = queue_body("jobs", ready=0, unacked=0)
    assert monitor.read().degraded, "counts that come back after a gap are checked again"


def test_refused_credentials_make_the_reading_refused(stub):
    stub.status, stub.body = 401, {"error": "not_authorized", "reason": "Login failed"}
    reading = monitor_of(stub).read()
    assert reading.refused and reading.degraded
    assert "refused the credentials (401" in reading.problem
    assert monitor_of(stub).refusal().startswith("management API at http://127.0.0.1:")


def test_a_broker_out_of_reach_at_start_is_no_refusal(stub, caplog):
    stub.close()
    monitor = QueueMonitor(stub.url, ("guest", "guest"), "/", "jobs", AMQP_DOWN)
    assert monitor.refusal() is None
    assert "will keep trying" in caplog.text
    reading = monitor.read()
    assert reading.degraded and not reading.refused and reading.depth is None


def test_the_queue_is_read_from_the_next_node_when_one_is_down(stub):
    down = ManagementStub()
    down.close()
    stub.body = queue_body("jobs", ready=7, unacked=2, consuming=("vm-1",))
    monitor = QueueMonitor(
        [down.url, stub.url], ("guest", "guest"), "/", "jobs", AMQP_DOWN, clock=FakeClock()
    )
    for _ in range(2):
        reading = monitor.read()
        assert not reading.degraded and reading.depth == 9
    assert stub.requests == 2
