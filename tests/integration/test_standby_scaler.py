"""Two scalers on one pool: libvirt's test driver (test:///default, which every connection of this
process shares, so both see one pool), the real RabbitMQ and real leases. The leader's lease is
cut as by a kill -9; the standby takes over the pool as it finds it. Policy time is a fake clock;
the lease runs on the real one."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import libvirt
import pytest

from tests.conftest import known_jobs, publish_raw, run_module, wait_until
from tests.integration.test_leadership import TIMING, user_without_lease_rights  # noqa: F401 - a fixture
from tests.integration.test_scaler import NODE, pool_flags, wait_for_depth, wait_for_statistics
from tests.support.clock import FakeClock
from tests.support.proxy import CuttableProxy
from virtscale.scaler.hypervisor import Hypervisor
from virtscale.scaler.leadership import Leadership, LeaseTiming
from virtscale.scaler.loop import Scaler
from virtscale.scaler.policy import DESTROY, START, Policy, PolicyConfig
from virtscale.scaler.queue_monitor import QueueMonitor

pytestmark = pytest.mark.broker

SHARED = "test:///default"
#: Lease clocks for scalers that tick while the test waits on the broker: a leader pauses only
#: if its checks are late by 5 s (a test run beside busy guests can starve the lease's thread).
PATIENT = LeaseTiming(heartbeat=5, validity=5.0, check_interval=0.2, action_margin=0.5, probe_interval=0.2)
CONFIG = PolicyConfig(min_vms=1, max_vms=2, target_backlog=50, scale_up_cooldown=0, boot_timeout=100)

DOMAIN = """<domain type="test">
  <name>{name}</name><memory>1048576</memory><vcpu>1</vcpu><os><type>hvm</type></os>
  <metadata>
    <virtscale:pool xmlns:virtscale="http://virtscale.org/xmlns/pool/1" name="{pool}" origin="defined"/>
  </metadata>
</domain>"""


@pytest.fixture
def shared_pool() -> Iterator[tuple[str, list[str]]]:
    """Three shut-off domains of a pool of their own on the process-wide test driver."""
    pool = f"standby-{uuid.uuid4().hex[:8]}"
    names = [f"{pool}-{n}" for n in (1, 2, 3)]
    connection = libvirt.open(SHARED)
    for name in names:
        connection.defineXML(DOMAIN.format(name=name, pool=pool))
    yield pool, names
    for name in names:
        domain = connection.lookupByName(name)
        if domain.isActive():
            domain.destroy()
        domain.undefine()
    connection.close()


def scaler_on(pool: str, names, management: str, amqp_url: str, clock, leadership) -> Scaler:
    monitor = QueueMonitor(management, ("guest", "guest"), "/", names.jobs, amqp_url)
    hypervisor = Hypervisor(SHARED, pool, clock=clock)
    return Scaler([hypervisor], monitor, Policy(CONFIG), window=30, clock=clock, leadership=leadership)


def acted(report) -> list[tuple[str, str]]:
    return [(action.domain, action.action) for action in report.decision.actions]


def test_a_standby_takes_over_a_killed_leaders_pool_as_it_finds_it(
    broker_url, names, management, shared_pool
):
    pool, domains = shared_pool
    proxy = CuttableProxy(("127.0.0.1", 5672))
    leases = [
        Leadership(proxy.url(), names.jobs, pool, identity="leader", timing=PATIENT),
        Leadership(broker_url, names.jobs, pool, identity="standby", timing=PATIENT),
    ]
    try:
        for lease in leases:
            lease.start()
            assert lease.wait_settled(10)
        clock = FakeClock()
        leader, standby = (scaler_on(pool, names, management, broker_url, clock, lease) for lease in leases)
        publish_raw(broker_url, names.jobs, known_jobs(120, seed=3, produced_at=1.0)[1])
        wait_for_statistics(leader)
        wait_for_depth(leader, 120)
        wait_until(lambda: leases[0].term() is not None, 20, "the first scaler leading")
        first = [standby.tick(), leader.tick()]
        assert [(r.leader, acted(r)) for r in first] == [
            (False, []),
            (True, [(domains[0], START), (domains[1], START)]),
        ]
        clock.now += 5
        seen = standby.tick()
        assert seen.event()["leader"] is False and seen.event()["lease_holder"] is None and acted(seen) == []
        assert sorted(seen.decision.signals["booting_vms"]) == domains[:2]
        proxy.cut()  # the leader is gone (it no longer ticks either)
        wait_until(lambda: leases[1].term() is not None, 30, "the standby leading")
        clock.now += 5
        took_over = standby.tick()
        assert took_over.leader and acted(took_over) == [], "its booting VMs count: nothing started twice"
        clock.now = 1005 + CONFIG.boot_timeout - 1
        assert acted(standby.tick()) == []
        clock.now = 1005 + CONFIG.boot_timeout  # the boot deadline as the standby first saw it
        report = standby.tick()
        assert sorted(acted(report)) == [(domains[0], DESTROY), (domains[1], DESTROY), (domains[2], START)]
    finally:
        for lease in leases:
            lease.stop()
        proxy.close()


class LosesTheLease:
    """A leadership that leads when asked at the start of a tick and loses the lease (``lost``)
    while its first action is under way: the moment a network cut could fall on."""

    wake = None
    identity = "fickle"
    lost = False

    def term(self) -> int | None:
        return 1

    def still_leads(self, term: int) -> bool:
        return not self.lost

    def holder(self) -> str:
        return self.identity

    def standby_note(self) -> str:
        return "standby"


def test_actions_left_when_the_lease_is_lost_mid_tick_are_not_taken_nor_booked(
    broker_url, names, management, shared_pool
):
    pool, domains = shared_pool
    clock = FakeClock()
    leadership = LosesTheLease()
    scaler = scaler_on(pool, names, management, broker_url, clock, leadership)
    hypervisor = scaler.hypervisors[0]
    start = hypervisor.start

    def start_then_lose(name: str) -> None:
        start(name)
        leadership.lost = True

    hypervisor.start = start_then_lose
    publish_raw(broker_url, names.jobs, known_jobs(120, seed=4, produced_at=1.0)[1])
    wait_for_statistics(scaler)
    wait_for_depth(scaler, 120)
    report = scaler.tick()
    assert acted(report) == [(domains[0], START)], "the second start was not taken, nor listed"
    assert report.event()["problems"] == [f"lease lost before: start {domains[1]}"]
    assert scaler.policy.booting == {domains[0]: 1000}
    leadership.lost = False
    clock.now += 5
    later = scaler.tick()
    assert domains[1] not in scaler.policy.failed and not later.decision.signals["failed_vms"]


@pytest.fixture
def held_lease(broker_url, names) -> Iterator[Leadership]:
    """The lease of the test node's pool on this test's queue, held here as a leader would."""
    lease = Leadership(broker_url, names.jobs, "vm", identity="scaler-elsewhere:7", timing=TIMING)
    lease.start()
    assert lease.wait_settled(10)
    wait_until(lambda: lease.term() is not None, 20, "the lease held")
    yield lease
    lease.stop()


def test_run_once_beside_a_leader_is_a_standby_that_names_it(broker_url, names, management, held_lease):
    publish_raw(broker_url, names.jobs, known_jobs(200, seed=5, produced_at=1.0)[1])
    run = run_module("virtscale.scaler", "run", "--once", *pool_flags(broker_url, names), "--max", "2")
    assert run.returncode == 0, run.stderr
    event = json.loads(run.stdout.strip().splitlines()[-1])
    assert event["leader"] is False and event["actions"] == []
    assert event["lease_holder"] == "scaler-elsewhere:7"
    assert event["reason"].startswith("standby: another scaler holds the lease")
    status = run_module("virtscale.scaler", "status", *pool_flags(broker_url, names))
    assert status.returncode == 0, status.stderr
    assert "leader: scaler-elsewhere:7" in status.stdout.splitlines()


def test_run_with_a_user_that_may_not_hold_the_lease_exits_1_with_one_line(
    names,
    management,
    user_without_lease_rights,  # noqa: F811 - the fixture imported above
):
    url = f"amqp://{user_without_lease_rights}:pw@127.0.0.1:5672/%2F"
    run = run_module("virtscale.scaler", "run", "--once", "--connect", f"test://{NODE}", "--amqp-url", url,
                     "--queue", names.jobs, timeout=60)  # fmt: skip
    assert run.returncode == 1, (run.stdout, run.stderr)
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and "403" in lines[0] and "make broker" in lines[0], run.stderr
