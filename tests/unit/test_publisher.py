"""The producer's answer to a publish the broker refuses (a nack: a job queue at its length limit
with overflow reject-publish; or an unroutable return): the job is published again, later, not in
a loop as fast as the nacks come back. Driven through a stand-in session and a fake clock."""

from __future__ import annotations

from dataclasses import dataclass

from tests.support.clock import FakeClock
from virtscale import defaults
from virtscale.naming import QueueNames
from virtscale.producer.licenses import LicenseGenerator
from virtscale.producer.publisher import Producer


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
