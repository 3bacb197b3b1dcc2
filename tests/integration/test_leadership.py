"""The pool's lease against the real RabbitMQ: several Leaderships in one process, their
connections cut or frozen through a proxy. Short lease clocks keep each test to seconds; the
assertions are about order (who led when), never about durations."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import requests

from tests.conftest import MANAGEMENT_URL, wait_until
from tests.support.proxy import CuttableProxy
from virtscale.scaler.leadership import Leadership, LeaseTiming
from virtscale.scaler.queue_monitor import QueueMonitor

pytestmark = pytest.mark.broker

#: Quick clocks: a silent connection is freed after 6-9 s, a new holder waits 2.5 s; a check may
#: be late by 1.8 s (a busy machine) before the leader pauses.
TIMING = LeaseTiming(heartbeat=3, validity=2.0, check_interval=0.2, action_margin=0.5, probe_interval=0.2)


class Timeline:
    """Samples which leaderships may act, every few milliseconds, from a thread of its own."""

    def __init__(self, **leaderships: Leadership):
        self.leaderships = leaderships
        self.samples: list[tuple[float, frozenset[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            leading = frozenset(name for name, lease in self.leaderships.items() if lease.term() is not None)
            self.samples.append((time.monotonic(), leading))
            time.sleep(0.002)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def led(self, name: str) -> list[float]:
        return [when for when, leading in self.samples if name in leading]

    def wait_for(self, name: str) -> None:
        """Until a sample shows ``name`` leading (a busy machine may run the sampler late)."""
        wait_until(lambda: self.led(name), 20, f"a sample of {name} leading")

    def overlaps(self) -> list[float]:
        return [when for when, leading in self.samples if len(leading) > 1]


@pytest.fixture
def leases(broker_url) -> Iterator:
    """Makes Leaderships on one fresh pool (through ``via`` a proxy, if given); stops them all."""
    pool = f"test-{uuid.uuid4().hex[:8]}"
    made: list[Leadership] = []

    def make(
        identity: str, via: CuttableProxy | None = None, url: str | None = None, **options
    ) -> Leadership:
        url = url or (via.url() if via else broker_url)
        lease = Leadership(url, "jobs", pool, identity=identity, timing=TIMING, **options)
        lease.start()
        made.append(lease)
        return lease

    yield make
    for lease in made:
        lease.stop()


@pytest.fixture
def proxy() -> Iterator[CuttableProxy]:
    cuttable = CuttableProxy(("127.0.0.1", 5672))
    yield cuttable
    cuttable.close()


def holding(lease: Leadership) -> bool:
    return lease._holding


def leads(lease: Leadership) -> bool:
    """Whether ``lease`` comes to lead (bounded: a broken lease fails rather than hangs)."""
    wait_until(lambda: lease.term() is not None, 20, f"{lease.identity} leading")
    return True


def test_of_two_scalers_on_one_pool_exactly_one_leads_and_the_other_takes_over_when_it_stops(leases):
    first = leases("first")
    assert first.wait_settled(10) and leads(first)
    second = leases("second")
    assert second.wait_settled(10)
    timeline = Timeline(first=first, second=second)
    timeline.wait_for("first")
    assert second.term() is None, "a standby while the first holds the lease"
    stopped_at = time.monotonic()
    first.stop()
    wait_until(lambda: second.term() is not None, 20, "the standby leading")
    timeline.wait_for("second")
    timeline.stop()
    assert timeline.overlaps() == []
    assert max(timeline.led("first")) <= stopped_at
    assert min(timeline.led("second")) >= stopped_at + TIMING.takeover_wait, "the new holder waits first"


def test_several_standbys_racing_for_a_freed_lease_leave_exactly_one_leader(leases):
    first = leases("first")
    assert first.wait_settled(10) and leads(first)
    others = [leases(f"standby-{n}") for n in range(3)]
    for lease in others:
        assert lease.wait_settled(10)
    timeline = Timeline(**{lease.identity: lease for lease in [first, *others]})
    first.stop()
    wait_until(lambda: any(lease.term() is not None for lease in others), 20, "one standby leading")
    time.sleep(TIMING.validity)  # a loser of the race would have come to lead by now
    timeline.stop()
    assert timeline.overlaps() == []
    assert sum(holding(lease) for lease in others) == 1


def test_a_leader_whose_connection_is_cut_stops_at_once_and_a_standby_takes_over(leases, proxy):
    first = leases("first", via=proxy)
    assert first.wait_settled(10) and leads(first)
    second = leases("second")
    assert second.wait_settled(10) and second.term() is None
    timeline = Timeline(first=first, second=second)
    cut_at = time.monotonic()
    proxy.cut()
    wait_until(lambda: second.term() is not None, 20, "the standby leading")
    timeline.wait_for("second")
    proxy.restore()
    wait_until(lambda: first._was_standby, 20, "the old leader back, as a standby")
    timeline.stop()
    assert timeline.overlaps() == []
    assert min(timeline.led("second")) >= cut_at + TIMING.takeover_wait
    assert holding(second) and not holding(first)


def test_a_leader_cut_off_silently_stops_before_the_broker_frees_its_lease(leases, proxy):
    """A partition: nothing passes and nothing closes. The leader's checks go unanswered, so it stops
    within its validity; the broker frees the lease only after two missed heartbeats, and only
    then can the standby claim it."""
    first = leases("first", via=proxy)
    assert first.wait_settled(10) and leads(first)
    second = leases("second")
    assert second.wait_settled(10) and second.term() is None
    claimed: list[float] = []
    watcher = threading.Thread(
        target=lambda: claimed.append(
            wait_until(lambda: holding(second) and time.monotonic(), 60, "a claim")
        ),
        daemon=True,
    )
    timeline = Timeline(first=first, second=second)
    watcher.start()
    timeline.wait_for("first")
    frozen_at = time.monotonic()
    proxy.freeze()
    wait_until(lambda: second.term() is not None, 60, "the standby leading")
    watcher.join()
    timeline.stop()
    assert timeline.overlaps() == []
    last_led = max(timeline.led("first"))
    last_check = first._confirmed_at  # the broker received it, and freed the lease 2 heartbeats later
    assert last_check <= frozen_at and last_led < last_check + TIMING.validity
    assert last_led < claimed[0], "the old leader had stopped before the broker freed its lease"
    assert claimed[0] > last_check + 2 * TIMING.heartbeat


def test_the_management_api_names_the_holder(leases, broker_url):
    monitor = QueueMonitor(MANAGEMENT_URL, ("guest", "guest"), "/", "jobs", broker_url)
    first = leases("scaler-a:101", holder_lookup=monitor.lease_holder)
    assert first.wait_settled(10)
    assert monitor.lease_holder(first.queue) == "scaler-a:101"
    second = leases("scaler-b:102", holder_lookup=monitor.lease_holder)
    assert second.wait_settled(10)
    assert second.holder() == "scaler-a:101" and first.holder() == "scaler-a:101"
    first.stop()
    second.stop()
    wait_until(lambda: monitor.lease_holder(first.queue) == "", 10, "no holder once both stopped")


@pytest.fixture
def user_without_lease_rights(management) -> Iterator[str]:
    """A broker user with the scaler's old rights: the management API, nothing over AMQP."""
    name = f"test-nolease-{uuid.uuid4().hex[:8]}"
    api = f"{management}/api"
    auth = ("guest", "guest")
    requests.put(f"{api}/users/{name}", json={"password": "pw", "tags": "monitoring"}, auth=auth, timeout=10)
    requests.put(
        f"{api}/permissions/%2F/{name}",
        json={"configure": "^$", "write": r"^amq\.default$", "read": "^$"},
        auth=auth,
        timeout=10,
    ).raise_for_status()
    yield name
    requests.delete(f"{api}/users/{name}", auth=auth, timeout=10)


def test_a_user_without_the_lease_rights_is_told_what_to_fix(leases, user_without_lease_rights):
    lease = leases("refused", url=f"amqp://{user_without_lease_rights}:pw@127.0.0.1:5672/%2F")
    assert lease.wait_settled(20)
    assert lease.refusal is not None and "403" in lease.refusal and "make broker" in lease.refusal
    assert lease.term() is None
