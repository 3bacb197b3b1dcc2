"""The worker's pacing of its I/O loop, without a broker: the prefetch timed before the first
subscription, the interval between publishing passes, and pika's buffered frames joined into
one send."""

from __future__ import annotations

import collections

import pytest
from pika.adapters.utils import io_services_utils

from virtscale import defaults, pika_writes
from virtscale.naming import QueueNames
from virtscale.worker import consumer
from virtscale.worker.consumer import Worker, sized_prefetch
from virtscale.worker.hashing import Hashed

URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def worker(**options) -> Worker:
    return Worker(URL, QueueNames("jobs"), cost=4, concurrency=2, name="w-unit", **options)


def hashes_taking(monkeypatch, *cpu_seconds: float) -> list[str]:
    """hash_license stood in for: each call takes the next CPU time given; the inputs recorded."""
    inputs, times = [], iter(cpu_seconds)

    def timed(license_number: str, _cost: int) -> Hashed:
        inputs.append(license_number)
        return Hashed("$2b$04$x", 1000.0, next(times))

    monkeypatch.setattr(consumer, "hash_license", timed)
    return inputs


def test_the_prefetch_is_timed_before_the_first_subscription_from_the_median_hash(monkeypatch):
    # After four hashes 63 ms have gone, past the 50 ms budget: the fifth does not start.
    inputs = hashes_taking(monkeypatch, 0.010, 0.012, 0.011, 0.030, 0.5)
    subject = worker()
    subject._calibrate()
    assert inputs == [consumer.CALIBRATION_INPUT] * 4, "never a license number"
    assert subject.mean_hash_seconds == 0.012, "the median of 10, 12, 11 and 30 ms"
    assert subject.prefetch == sized_prefetch(2, 0.012) == 2 * 83
    assert subject._timed_jobs == 1, "the calibration counts as one timed hash"


def test_at_most_five_calibration_hashes_however_fast(monkeypatch):
    inputs = hashes_taking(monkeypatch, *[0.001] * 10)
    subject = worker()
    subject._calibrate()
    assert len(inputs) == consumer.CALIBRATION_HASHES == 5
    assert subject.prefetch == 2 * 1000


def test_a_slow_cost_is_timed_once(monkeypatch):
    inputs = hashes_taking(monkeypatch, 0.8, 0.8)
    subject = worker()
    subject._calibrate()
    assert len(inputs) == 1
    assert subject.prefetch == 2 * 1


def test_a_fixed_prefetch_is_not_timed(monkeypatch):
    inputs = hashes_taking(monkeypatch)
    subject = worker(prefetch_per_slot=3)
    subject._calibrate()
    assert inputs == [] and subject.prefetch == 6 and subject.mean_hash_seconds is None


def test_publishing_passes_are_paced_by_the_work_a_slot_holds_beyond_its_job():
    subject = worker(prefetch_per_slot=1)
    assert subject._results_interval() == 0.0, "nothing timed yet: no pause"
    subject.mean_hash_seconds = 0.060
    assert subject._results_interval() == 0.0, "one job a slot: a pause would leave the slot idle"
    subject.prefetch = 2 * 3
    # Two 60 ms jobs a slot beyond the one it hashes: a share of those 120 ms.
    assert subject._results_interval() == pytest.approx(defaults.RESULTS_INTERVAL_SHARE * 0.120)
    sized = worker()
    sized.mean_hash_seconds, sized.prefetch = 0.001, sized_prefetch(2, 0.001)
    assert sized._results_interval() == pytest.approx(0.1 * 0.999), "a second a slot, less one job"
    deep = worker(prefetch_per_slot=50)
    deep.mean_hash_seconds = 0.1
    assert deep._results_interval() == defaults.RESULTS_INTERVAL == 0.1, "4.9 s a slot: the cap"


class Transport:
    """What pika_writes wraps: pika's queue of buffered chunks, and a _produce that sends the
    first chunk each call, as pika's does once per chunk."""

    def __init__(self, *chunks: bytes):
        self._tx_buffers = collections.deque(chunks)
        self.sent: list[bytes] = []

    def _produce(self) -> None:
        while self._tx_buffers:
            self.sent.append(self._tx_buffers.popleft())


def test_buffered_frames_go_out_in_one_send_in_their_order():
    transport = Transport(b"method", b"header", b"body", b"ack")
    pika_writes._joined(Transport._produce)(transport)
    assert transport.sent == [b"methodheaderbodyack"]


def test_a_backlog_past_the_join_limit_goes_in_several_sends(monkeypatch):
    monkeypatch.setattr(pika_writes, "JOIN_LIMIT", 10)
    transport = Transport(b"aaaa", b"bbbb", b"cccc", b"dddd")
    pika_writes._joined(Transport._produce)(transport)
    assert transport.sent == [b"aaaabbbbcccc", b"dddd"], "joined until the limit is reached"
    assert b"".join(transport.sent) == b"aaaabbbbccccdddd"


def test_pikas_transports_are_wrapped_once():
    pika_writes.install()
    pika_writes.install()
    for transport in (io_services_utils._AsyncTransportBase, io_services_utils._AsyncSSLTransport):
        produce = vars(transport)["_produce"]
        assert produce.virtscale_joined
        assert not getattr(produce.__wrapped__, "virtscale_joined", False), "not wrapped twice"


class LostSession:
    """A session a reconnect has replaced, which still looks usable: nothing may wait on it."""

    usable = True

    def call_later(self, _delay, _callback):
        raise AssertionError("a pass waited on a lost session")


def test_a_pass_marked_on_a_lost_session_publishes_at_once_and_skips_its_hashes():
    subject = worker()
    subject.mean_hash_seconds, subject.prefetch = 0.001, sized_prefetch(2, 0.001)
    lost = LostSession()
    subject._session = object()  # the current one
    subject._published_at = consumer.time.monotonic()  # a pass just now: the next one would wait
    subject._finished.append((lost, 1, None, None, 0.0))
    subject._wake_pending_on = lost
    subject._publish_finished()
    assert not subject._finished and subject._wake_pending_on is None
