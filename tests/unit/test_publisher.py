"""The producer's answer to a publish the broker refuses (a nack: a job queue at its length limit
with overflow reject-publish; or an unroutable return): the job is published again, later, not in
a loop as fast as the nacks come back. Driven through a stand-in session and a fake clock."""

from __future__ import annotations

from dataclasses import dataclass

from tests.support.clock import FakeClock
from virtscale import defaults
from virtscale.naming import QueueNames
from virtscale.producer.licenses import LicenseGenerator
from virtscale.producer.publisher import DRAIN_TIMEOUT, Producer, ProducerReport


@dataclass
class Publish:
    body: bytes
    on_confirm: object
    message_id: str


class StandInSession:
    """What the producer calls on its Session; publishes are kept for the test to confirm."""

    def __init__(self):
        self.usable = True
        self.published: list[Publish] = []

    def publish(self, _routing_key, body, on_confirm, *, message_id=None, headers=None) -> None:
        self.published.append(Publish(body, on_confirm, message_id))

    def call_later(self, _delay, _callback) -> None:
        pass


def producer_on(session: StandInSession, clock: FakeClock, count: int) -> Producer:
    producer = Producer(
        "amqp://guest:guest@127.0.0.1:1/%2F",
        QueueNames("jobs"),
        LicenseGenerator(3),
        rate=None,
        count=count,
        clock=clock,
    )
    producer._session = session
    producer._on_ready(session)
    return producer


def test_after_a_nack_nothing_is_published_until_the_republish_delay_has_passed():
    clock, session = FakeClock(), StandInSession()
    producer = producer_on(session, clock, count=5)
    assert len(session.published) == 5
    refused = session.published[0]
    refused.on_confirm(False)
    producer._fill()
    assert len(session.published) == 5, "a nack is not answered by an immediate republish"
    clock.now += defaults.REPUBLISH_DELAY / 2
    producer._fill()
    assert len(session.published) == 5
    clock.now += defaults.REPUBLISH_DELAY / 2
    producer._fill()
    assert [publish.message_id for publish in session.published[5:]] == [refused.message_id]
    assert producer.report.republished == 1


def test_a_job_lost_with_its_session_goes_out_again_as_soon_as_a_new_session_is_ready():
    clock, session = FakeClock(), StandInSession()
    producer = producer_on(session, clock, count=3)
    session.usable = False  # the session ended: its publishes come back unconfirmed
    for publish in session.published:
        publish.on_confirm(False)
    renewed = StandInSession()
    producer._session = renewed
    producer._on_ready(renewed)
    assert len(renewed.published) == 3, "the reconnect had its own backoff: no further wait"


def test_set_delta_paces_at_one_job_per_delta():
    producer = Producer(
        "amqp://guest:guest@127.0.0.1:1/%2F", QueueNames("jobs"), LicenseGenerator(3), rate=None
    )
    producer.set_delta(0.25)
    assert producer.rate(0.0) == 4.0 and producer.rate(100.0) == 4.0


class StoppableSession(StandInSession):
    def __init__(self):
        super().__init__()
        self.stopped = False
        self.later: list = []

    def threadsafe(self, callback) -> None:
        callback()

    def call_later(self, _delay, callback) -> None:
        self.later.append(callback)

    def stop(self) -> None:
        self.stopped = True


def test_a_stop_waits_for_the_outstanding_confirms_then_gives_up_after_the_drain_timeout(caplog):
    clock, session = FakeClock(), StoppableSession()
    producer = producer_on(session, clock, count=4)
    session.published[0].on_confirm(True)
    producer.request_stop()
    assert not session.stopped, "three confirms outstanding"
    clock.now += DRAIN_TIMEOUT
    producer._tick()
    assert not session.stopped, "not past the drain timeout yet"
    clock.now += 0.001
    producer._tick()
    assert session.stopped
    assert "gave up waiting for 3 confirm(s)" in caplog.text
    assert producer.report.generated == 4 and producer.report.confirmed == 1


def test_a_stop_ends_at_once_when_every_publish_is_confirmed():
    clock, session = FakeClock(), StoppableSession()
    producer = producer_on(session, clock, count=2)
    for publish in session.published:
        publish.on_confirm(True)
    assert session.stopped is False
    producer.request_stop()
    assert session.stopped


def test_a_count_is_done_once_that_many_are_confirmed_and_no_more_are_made():
    clock, session = FakeClock(), StoppableSession()
    producer = producer_on(session, clock, count=3)
    assert len(session.published) == 3
    for publish in session.published[:2]:
        publish.on_confirm(True)
    producer._tick()
    assert not session.stopped and len(session.published) == 3
    session.published[2].on_confirm(True)
    producer._tick()
    assert session.stopped and producer.report.confirmed == 3


def test_a_duration_ends_the_run_once_the_last_publish_is_confirmed():
    clock, session = FakeClock(), StoppableSession()
    producer = Producer(
        "amqp://guest:guest@127.0.0.1:1/%2F",
        QueueNames("jobs"),
        LicenseGenerator(3),
        rate=lambda _t: 10.0,
        duration=2.0,
        clock=clock,
    )
    producer._session = session
    producer._on_ready(session)
    for _ in range(30):
        clock.now += 0.1
        producer._tick()
    assert 18 <= producer.report.generated <= 21, "10 a second for 2 s"
    assert not session.stopped, "confirms outstanding"
    for publish in session.published:
        publish.on_confirm(True)
    producer._tick()
    assert session.stopped


def test_pacing_makes_no_burst_after_a_stall():
    clock, session = FakeClock(), StoppableSession()
    producer = Producer(
        "amqp://guest:guest@127.0.0.1:1/%2F",
        QueueNames("jobs"),
        LicenseGenerator(3),
        rate=lambda _t: 5.0,
        clock=clock,
    )
    producer._session = session
    producer._on_ready(session)
    clock.now += 60  # a minute with no tick: 300 jobs owed, at most one second's worth sent
    producer._tick()
    assert len(session.published) == 5


def test_progress_is_logged_once_per_interval_with_the_confirm_rate(caplog):
    caplog.set_level("INFO")
    clock, session = FakeClock(), StoppableSession()
    producer = producer_on(session, clock, count=10)
    for publish in session.published:
        publish.on_confirm(True)
    clock.now += defaults.PROGRESS_INTERVAL - 0.5
    producer._log_progress()
    assert "published" not in caplog.text
    clock.now += 0.5
    producer._log_progress()
    assert "published 10, confirmed 10, outstanding 0, 2.0 confirmed/s" in caplog.text


def test_the_report_line_says_every_figure():
    report = ProducerReport(generated=9, confirmed=7, republished=3, unconfirmed=2)
    assert report.line() == "confirmed 7 of 9 generated (3 republished, 2 unconfirmed)"


def test_unpaced_a_confirm_tops_the_window_up_once_per_burst():
    clock, session = FakeClock(), StoppableSession()
    producer = Producer(
        "amqp://guest:guest@127.0.0.1:1/%2F",
        QueueNames("jobs"),
        LicenseGenerator(3),
        rate=None,
        count=10,
        max_outstanding=4,
        clock=clock,
    )
    producer._session = session
    producer._on_ready(session)
    assert len(session.published) == 4, "the window"
    session.later.clear()
    session.published[0].on_confirm(True)
    session.published[1].on_confirm(True)
    assert len(session.later) == 1, "one fill scheduled for the burst"
    session.later.pop()()
    assert len(session.published) == 6
