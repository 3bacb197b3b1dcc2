"""The producer's answer to a publish the broker refuses (a nack: a job queue at its length limit
with overflow reject-publish; or an unroutable return): the job is published again, later, not in
a loop as fast as the nacks come back. Driven through a stand-in session and a fake clock."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from tests.support.clock import FakeClock
from virtscale import defaults
from virtscale.naming import QueueNames
from virtscale.producer.licenses import LicenseGenerator
from virtscale.producer.publisher import DRAIN_TIMEOUT, TICK, Producer, ProducerReport


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
    assert "gave up waiting for 3 confirm(s)" in [r.getMessage() for r in caplog.records]
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


class RecordingSession(StoppableSession):
    """Also keeps each publish's routing key and each call_later's delay and callback."""

    def __init__(self):
        super().__init__()
        self.routing_keys: list[str] = []
        self.delays: list[tuple[float, object]] = []

    def publish(self, routing_key, body, on_confirm, *, message_id=None, headers=None) -> None:
        self.routing_keys.append(routing_key)
        super().publish(routing_key, body, on_confirm, message_id=message_id, headers=headers)

    def call_later(self, delay, callback) -> None:
        self.delays.append((delay, callback))
        super().call_later(delay, callback)


def unpaced(session, clock, *, count: int, window: int) -> Producer:
    producer = Producer(
        "amqp://guest:guest@127.0.0.1:1/%2F",
        QueueNames("jobs"),
        LicenseGenerator(3),
        rate=None,
        count=count,
        max_outstanding=window,
        clock=clock,
    )
    producer._session = session
    producer._on_ready(session)
    return producer


def test_each_job_goes_to_the_job_queue_under_its_own_id_with_a_fresh_license():
    session = RecordingSession()
    before = time.time()
    unpaced(session, FakeClock(), count=3, window=10)
    generate = LicenseGenerator(3)
    jobs = [json.loads(publish.body) for publish in session.published]
    assert session.routing_keys == ["jobs"] * 3
    assert [job["license"] for job in jobs] == [generate() for _ in range(3)]
    assert [job["id"] for job in jobs] == [publish.message_id for publish in session.published]
    assert all(before <= job["produced_at"] <= time.time() for job in jobs)


def test_a_refused_job_is_logged_by_its_id_and_published_again_as_it_was(caplog):
    clock, session = FakeClock(), RecordingSession()
    producer = unpaced(session, clock, count=1, window=1)
    [first] = session.published
    first.on_confirm(False)
    assert [r.getMessage() for r in caplog.records] == [
        f"job {first.message_id} not confirmed; will publish it again"
    ]
    clock.now += defaults.REPUBLISH_DELAY
    producer._fill()
    assert [(p.body, p.message_id) for p in session.published] == [(first.body, first.message_id)] * 2
    assert producer.report.republished == 1


def test_the_window_holds_republished_and_new_jobs_together():
    clock, session = FakeClock(), RecordingSession()
    producer = unpaced(session, clock, count=8, window=5)
    a, b, c, d = session.published[:4]
    a.on_confirm(False)
    d.on_confirm(False)
    b.on_confirm(True)
    c.on_confirm(True)
    clock.now += defaults.REPUBLISH_DELAY
    producer._fill()
    # 1 outstanding: room for 4, the 2 refused first, then 2 of the 3 jobs still to make.
    assert [p.message_id for p in session.published[5:7]] == [a.message_id, d.message_id]
    assert len(session.published) == 9 and producer.report.generated == 7
    assert producer.report.republished == 2


def test_confirms_top_the_window_up_at_once_and_ticks_come_every_tick():
    session = RecordingSession()
    producer = unpaced(session, FakeClock(), count=0, window=2)
    assert session.delays == [(TICK, producer._tick)]
    session.published[0].on_confirm(True)
    assert session.delays[-1] == (0, producer._fill)


def test_a_stop_before_any_session_is_only_remembered():
    producer = Producer(
        "amqp://guest:guest@127.0.0.1:1/%2F", QueueNames("jobs"), LicenseGenerator(3), rate=None
    )
    producer.request_stop()
    assert producer.stop_requested.is_set()


def test_a_run_is_out_of_time_once_its_duration_has_passed_to_the_tick():
    clock, session = FakeClock(), RecordingSession()
    producer = Producer(
        "amqp://guest:guest@127.0.0.1:1/%2F",
        QueueNames("jobs"),
        LicenseGenerator(3),
        rate=lambda _t: 1.0,
        duration=2.0,
        clock=clock,
    )
    producer._session = session
    producer._on_ready(session)
    clock.now += 1.999
    assert not producer._out_of_time()
    clock.now += 0.001
    assert producer._out_of_time()


def test_pacing_follows_the_rate_at_the_elapsed_time_and_a_slow_rate_sends_one_after_a_stall():
    clock, session = FakeClock(), RecordingSession()
    producer = Producer(
        "amqp://guest:guest@127.0.0.1:1/%2F",
        QueueNames("jobs"),
        LicenseGenerator(3),
        rate=lambda t: 0.5 if t >= 5 else 0.0,
        clock=clock,
    )
    producer._session = session
    producer._on_ready(session)
    clock.now += 4
    producer._tick()
    assert session.published == [], "no rate in the first 5 s"
    clock.now += 20  # 0.5 a second for 20 s owes 10, but at most one is sent after a stall
    producer._tick()
    assert len(session.published) == 1


def test_progress_says_the_rate_of_each_interval_alone(caplog):
    caplog.set_level("INFO")
    clock, session = FakeClock(), RecordingSession()
    producer = unpaced(session, clock, count=20, window=20)
    for publish in session.published[:10]:
        publish.on_confirm(True)
    clock.now += defaults.PROGRESS_INTERVAL
    producer._log_progress()
    for publish in session.published[10:]:
        publish.on_confirm(True)
    clock.now += defaults.PROGRESS_INTERVAL
    producer._log_progress()
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("published")]
    assert said == [
        "published 20, confirmed 10, outstanding 10, 2.0 confirmed/s",
        "published 20, confirmed 20, outstanding 0, 2.0 confirmed/s",
    ]


def test_set_delta_says_the_new_pace(caplog):
    caplog.set_level("INFO")
    producer = Producer(
        "amqp://guest:guest@127.0.0.1:1/%2F", QueueNames("jobs"), LicenseGenerator(3), rate=None
    )
    producer.set_delta(0.5)
    assert [r.getMessage() for r in caplog.records] == ["delta set to 0.500 s (2.00 jobs/s)"]
