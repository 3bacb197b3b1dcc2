"""The scaler, whole ticks at a time, on readings it did not really make: a management API that
answers without counts (a broker restart, a new queue), refused credentials, libvirt errors of
every class, and a libvirtd that lists no domains right after a restart.

libvirt is the test driver behind a fault-injecting wrapper (tests/support/libvirt_faults.py);
RabbitMQ is the real one, its management API a local stand-in where a fault must be injected.
Time is a fake clock, so boot timeouts and stabilization windows pass at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import known_jobs, publish_raw, run_module
from tests.support.clock import FakeClock
from tests.support.libvirt_faults import FAULTS, Opener
from tests.support.management_stub import ManagementStub, queue_body
from virtscale.scaler import hypervisor as hypervisor_module
from virtscale.scaler.hypervisor import Hypervisor
from virtscale.scaler.loop import REATTACH_TICKS, EventsFile, Scaler
from virtscale.scaler.policy import DESTROY, SHUTDOWN, START, Policy, PolicyConfig
from virtscale.scaler.queue_monitor import QueueMonitor

pytestmark = pytest.mark.broker

NODE = Path(__file__).parent.parent / "data" / "pool-node.xml"
URI = f"test://{NODE}"
POOL = ["vm-1", "vm-2", "vm-3", "vm-4"]


@pytest.fixture
def stub():
    server = ManagementStub()
    yield server
    server.close()


@pytest.fixture
def opener(monkeypatch):
    """libvirt.open for URI hands out one fault-injecting wrapper around a real connection."""
    faulty = Opener(URI)
    monkeypatch.setattr(hypervisor_module.libvirt, "open", faulty)
    return faulty


def make_scaler(amqp_url, queue, management_url, clock, *, extra_hypervisors=(), password="guest", **policy):
    config = PolicyConfig(
        **{
            "min_vms": 1,
            "max_vms": 3,
            "target_backlog": 50,
            "scale_up_cooldown": 0,
            "scale_down_stabilization": 0,
            "boot_timeout": 30,
            **policy,
        }
    )
    hypervisors = [Hypervisor(URI, "vm", clock=clock), *extra_hypervisors]
    monitor = QueueMonitor(management_url, ("guest", password), "/", queue, amqp_url)
    return Scaler(hypervisors, monitor, Policy(config), window=30, clock=clock)


def start_domains(scaler, *names: str) -> None:
    connection = scaler.hypervisors[0]._connect()
    for name in names:
        connection.lookupByName(name).create()


def running(scaler) -> list[str]:
    connection = scaler.hypervisors[0]._connect()
    return [name for name in POOL if connection.lookupByName(name).isActive()]


def acted(report, *kinds: str) -> list[tuple[str, str]]:
    return [(a.domain, a.action) for a in report.decision.actions if not kinds or a.action in kinds]


# -- 1. a management API answer without counts -------------------------------------------


def test_a_new_queue_just_published_to_reads_exact_or_degraded_never_empty(broker_url, names, management):
    clock = FakeClock()
    scaler = make_scaler(broker_url, names.jobs, management, clock, max_vms=3)
    publish_raw(broker_url, names.jobs, known_jobs(1000, seed=1, produced_at=1.0)[1])
    report = scaler.tick()
    assert report.reading.ready == 1000, "the passive declare's exact count (or the API's own)"
    assert report.degraded or report.reading.depth == 1000
    assert acted(report) == [("vm-1", START), ("vm-2", START), ("vm-3", START)]


def test_counts_missing_after_a_broker_restart_are_not_zero_and_nothing_is_removed(broker_url, names, stub):
    clock = FakeClock()
    scaler = make_scaler(broker_url, names.jobs, stub.url, clock, target_backlog=500, idle_to_zero=0)
    start_domains(scaler, "vm-1", "vm-2")
    publish_raw(broker_url, names.jobs, known_jobs(800, seed=1, produced_at=1.0)[1])
    stub.body = queue_body(names.jobs, ready=800, unacked=2, consuming=("vm-1", "vm-2"))
    for _ in range(2):
        report = scaler.tick()
        assert not report.degraded and acted(report) == []
        clock.now += 10
    stub.body = queue_body(
        names.jobs, ready=None, unacked=None, consuming=None, publish_rate=None, ack_rate=None
    )
    for _ in range(20):  # 200 s: past the boot timeout (30 s) and the stabilization window (0 s)
        report = scaler.tick()
        assert report.degraded and "messages_ready" in " ".join(report.problems)
        assert report.reading.ready == 800, "the exact ready count, from a passive declare"
        assert report.reading.publish_rate is None and report.reading.ack_rate is None
        assert acted(report) == [], report.decision.reason
        signals = report.decision.signals
        assert (signals["ready"], signals["booting"]) == (2, 0), "running VMs are not 'booting' again"
        clock.now += 10
    assert running(scaler) == ["vm-1", "vm-2"]
    assert scaler.policy.failed == {}
    stub.body = queue_body(names.jobs, ready=800, unacked=2, consuming=("vm-1", "vm-2"))
    assert not scaler.tick().degraded


def test_counts_that_lag_a_publish_are_checked_by_a_passive_declare(broker_url, names, stub):
    clock = FakeClock()
    scaler = make_scaler(broker_url, names.jobs, stub.url, clock)
    publish_raw(broker_url, names.jobs, known_jobs(300, seed=1, produced_at=1.0)[1])
    stub.body = queue_body(names.jobs, ready=0, unacked=0)  # its first statistics, from before the publish
    report = scaler.tick()
    assert report.degraded and "lag" in " ".join(report.problems)
    assert report.reading.ready == 300
    assert [action for _domain, action in acted(report)] == [START] * 3


# -- 4. refused credentials --------------------------------------------------------------


def test_refused_credentials_while_running_are_degraded_loud_and_remove_nothing(
    broker_url, names, management, caplog
):
    clock = FakeClock()
    url = broker_url.replace("guest:guest@", "guest:wrong-password@")
    scaler = make_scaler(url, names.jobs, management, clock, password="wrong-password")
    start_domains(scaler, "vm-1", "vm-2", "vm-3")
    for tick in range(1, 4):
        report = scaler.tick()
        event = report.event()
        assert report.degraded and report.refused and event["refused"] is True
        assert any("refused the credentials" in problem for problem in event["problems"])
        errors = [
            r
            for r in caplog.records
            if r.levelname == "ERROR" and "refuses the scaler (fix the configuration)" in r.getMessage()
        ]
        assert len(errors) == tick, "an ERROR line every tick"
        assert acted(report, SHUTDOWN, DESTROY) == []
        clock.now += 100
    assert running(scaler) == ["vm-1", "vm-2", "vm-3"]


@pytest.mark.parametrize("command", [["status"], ["run", "--once", "--dry-run"]])
def test_refused_credentials_at_start_exit_1_with_one_line(broker_url, names, management, command):
    url = broker_url.replace("guest:guest@", "guest:wrong-password@")
    run = run_module(
        "virtscale.scaler", *command, "--connect", URI, "--amqp-url", url, "--queue", names.jobs, timeout=60
    )
    assert run.returncode == 1, (run.stdout, run.stderr)
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and "refused the credentials" in lines[0], run.stderr
    assert "wrong-password" not in run.stderr and run.stdout == ""


def test_a_broker_out_of_reach_at_start_is_not_refusal_status_runs_degraded():
    run = run_module(
        "virtscale.scaler",
        "status",
        "--connect",
        URI,
        "--amqp-url",
        "amqp://guest:guest@127.0.0.1:1/%2F",
        "--management-url",
        "http://127.0.0.1:9",
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("queue: depth ?") and "[degraded]" in run.stdout.splitlines()[0]


# -- 3. every libvirt error: a degraded tick or a failed action, never a crash -------------


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_a_libvirt_error_while_sampling_makes_the_tick_degraded_and_removes_nothing(
    broker_url, names, stub, opener, fault
):
    clock = FakeClock()
    scaler = make_scaler(broker_url, names.jobs, stub.url, clock)
    start_domains(scaler, "vm-1", "vm-2", "vm-3")
    stub.body = queue_body(names.jobs, ready=0, unacked=0, consuming=("vm-1", "vm-2", "vm-3"))
    assert acted(scaler.tick()) == [], "a fresh policy holds what runs for one window"
    clock.now += 10
    opener.connection.faults["getAllDomainStats"] = fault
    report = scaler.tick()
    assert report.degraded and any(fault.message in problem for problem in report.problems)
    assert report.unseen == POOL and report.samples == []
    assert acted(report) == [], report.decision.reason
    clock.now += 10
    after = scaler.tick()
    assert not after.degraded, after.problems
    assert acted(after) == [("vm-3", SHUTDOWN)], "the same tick without the fault scales down"


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_a_libvirt_error_on_a_start_fails_that_action_only(broker_url, names, stub, opener, fault):
    clock = FakeClock()
    scaler = make_scaler(broker_url, names.jobs, stub.url, clock)
    start_domains(scaler, "vm-1")
    stub.body = queue_body(names.jobs, ready=500, unacked=1, consuming=("vm-1",))
    opener.connection.faults["create"] = fault
    report = scaler.tick()
    assert acted(report) == [("vm-2", START), ("vm-3", START)]
    assert len(report.failed_actions) == 1 and fault.message in report.failed_actions[0]
    assert report.failed_actions == report.event()["problems"]
    assert running(scaler) == ["vm-1", "vm-3"], "the next action still ran"
    clock.now += 10
    assert acted(scaler.tick(), SHUTDOWN, DESTROY) == []


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_a_libvirt_error_on_a_shutdown_is_a_failed_action(broker_url, names, stub, opener, fault):
    clock = FakeClock()
    scaler = make_scaler(broker_url, names.jobs, stub.url, clock)
    start_domains(scaler, "vm-1", "vm-2", "vm-3")
    stub.body = queue_body(names.jobs, ready=0, unacked=0, consuming=("vm-1", "vm-2", "vm-3"))
    scaler.tick()
    clock.now += 10
    opener.connection.faults["shutdown"] = fault
    report = scaler.tick()
    assert acted(report) == [("vm-3", SHUTDOWN)]
    assert len(report.failed_actions) == 1 and fault.message in report.failed_actions[0]
    assert running(scaler) == ["vm-1", "vm-2", "vm-3"]


def test_a_domain_undefined_between_the_list_and_the_call(broker_url, names, stub, opener):
    clock = FakeClock()
    scaler = make_scaler(broker_url, names.jobs, stub.url, clock)
    start_domains(scaler, "vm-1")
    stub.body = queue_body(names.jobs, ready=500, unacked=1, consuming=("vm-1",))
    opener.connection.hooks["lookupByName"] = lambda connection: connection.lookupByName("vm-2").undefine()
    report = scaler.tick()
    assert acted(report) == [("vm-2", START), ("vm-3", START)]
    assert len(report.failed_actions) == 1 and "start vm-2" in report.failed_actions[0]
    assert "Domain not found" in report.failed_actions[0]

    def vanish(connection) -> None:
        domain = connection.lookupByName("vm-3")
        domain.destroy()
        domain.undefine()

    opener.connection.hooks["info"] = vanish  # the per-domain call after the bulk list
    clock.now += 10
    report = scaler.tick()
    assert "vm-3" in {sample.name for sample in report.samples}, "listed, then gone: no crash"
    assert acted(report, SHUTDOWN) == []


def test_one_failing_connection_does_not_hide_the_others(broker_url, names, stub, opener):
    clock = FakeClock()
    other = Hypervisor("test:///default", "test", clock=clock)
    other.tag("test")  # the test driver's own domain, made a member of pool "test"
    scaler = make_scaler(broker_url, names.jobs, stub.url, clock, extra_hypervisors=[other])
    stub.body = queue_body(names.jobs, ready=0, unacked=0)
    scaler.tick()
    opener.connection.faults["getAllDomainStats"] = FAULTS["internal-error"]
    report = scaler.tick()
    assert report.degraded and [sample.name for sample in report.samples] == ["test"]
    assert report.unseen == POOL


# -- 2. libvirtd restarted: its first lists lack the domains -----------------------------


def booting_vm_then_libvirtd_restart(broker_url, names, stub, opener, empty_lists: int):
    """vm-1 consuming, vm-2 just started by the scaler; then libvirtd restarts (the connection
    is lost) and, reopened, lists no domain for ``empty_lists`` samples."""
    clock = FakeClock()
    scaler = make_scaler(broker_url, names.jobs, stub.url, clock, max_vms=2, boot_timeout=600)
    start_domains(scaler, "vm-1")
    stub.body = queue_body(names.jobs, ready=80, unacked=1, consuming=("vm-1",))
    assert acted(scaler.tick()) == [("vm-2", START)]
    clock.now += 5
    opener.connection.faults["getAllDomainStats"] = FAULTS["system-error"]
    lost = scaler.tick()
    assert lost.degraded and lost.unseen == POOL and acted(lost) == []
    opener.connection.empty_lists = empty_lists
    return scaler, clock


def test_a_booting_vm_missing_right_after_a_reconnect_is_not_failed(broker_url, names, stub, opener):
    scaler, clock = booting_vm_then_libvirtd_restart(broker_url, names, stub, opener, empty_lists=2)
    for tick in (1, 2):
        clock.now += 5
        report = scaler.tick()
        assert report.degraded and f"({tick}/{REATTACH_TICKS})" in " ".join(report.problems)
        assert report.unseen == POOL and "stopped before it consumed" not in report.decision.reason
        assert acted(report) == [] and scaler.policy.failed == {}
    clock.now += 5
    report = scaler.tick()
    assert not report.degraded and sorted(s.name for s in report.samples) == POOL
    assert scaler.policy.booting.keys() == {"vm-2"} and scaler.policy.failed == {}
    assert opener.opens == 2


def test_the_wait_for_libvirt_to_list_its_domains_again_is_bounded(broker_url, names, stub, opener):
    scaler, clock = booting_vm_then_libvirtd_restart(broker_url, names, stub, opener, empty_lists=100)
    doubtful = 0
    for _ in range(REATTACH_TICKS + 2):
        clock.now += 5
        report = scaler.tick()
        doubtful += report.degraded
    assert doubtful == REATTACH_TICKS
    assert report.unseen == [] and not report.degraded, "then an empty list is believed"


def test_an_empty_list_where_there_were_domains_is_doubted_without_a_reconnect(
    broker_url, names, stub, opener
):
    clock = FakeClock()
    scaler = make_scaler(broker_url, names.jobs, stub.url, clock, boot_timeout=600)
    stub.body = queue_body(names.jobs, ready=80, unacked=0)
    assert acted(scaler.tick()) == [("vm-1", START), ("vm-2", START)]
    opener.connection.empty_lists = 1
    clock.now += 5
    report = scaler.tick()
    assert report.degraded and "not listed this time" in " ".join(report.problems)
    assert scaler.policy.failed == {} and acted(report) == []
    clock.now += 5
    assert not scaler.tick().degraded
    assert scaler.policy.booting.keys() == {"vm-1", "vm-2"}


# -- 4. libvirtd down for whole ticks ------------------------------------------------------


def test_a_tick_while_libvirt_is_unreachable_is_degraded_and_acts_on_nothing(broker_url, names, stub, opener):
    clock = FakeClock()
    scaler = make_scaler(broker_url, names.jobs, stub.url, clock)
    start_domains(scaler, "vm-1", "vm-2", "vm-3")
    stub.body = queue_body(names.jobs, ready=0, unacked=0, consuming=("vm-1", "vm-2", "vm-3"))
    scaler.tick()
    opener.connection.faults["getAllDomainStats"] = FAULTS["system-error"]  # libvirtd stops
    opener.down = True
    hypervisor = scaler.hypervisors[0]
    # idle (would shut one down), loaded (would start vm-4), idle: the connection is lost in
    # the first tick, and each next one finds libvirtd's socket closed.
    for ready, problem in ((0, "End of file"), (5000, "libvirt-sock"), (0, "libvirt-sock")):
        clock.now = max(clock.now + 10, hypervisor.next_attempt)
        stub.body = queue_body(names.jobs, ready=ready, unacked=0, consuming=("vm-1", "vm-2", "vm-3"))
        report = scaler.tick()
        assert report.degraded and report.unseen == POOL and report.samples == []
        assert any(problem in reported for reported in report.problems), report.problems
        assert acted(report) == [] and report.failed_actions == [], report.decision.reason
        event = report.event()
        assert event["hosts"][URI]["reachable"] is False and event["degraded"] is True
        assert {name: domain["state"] for name, domain in event["domains"].items()} == dict.fromkeys(
            POOL, "unknown"
        )
    assert opener.refused == 2, "the first failure is the lost connection's, then one open a tick"
    opener.down = False
    clock.now = hypervisor.next_attempt
    stub.body = queue_body(names.jobs, ready=0, unacked=0, consuming=("vm-1", "vm-2", "vm-3"))
    back = scaler.tick()
    assert not back.degraded, back.problems
    assert acted(back) == [("vm-3", SHUTDOWN)], "the same idle tick, libvirt back: it scales down"
    assert running(scaler) == ["vm-1", "vm-2"]


# -- 5. the boot timeout, whole ticks on libvirt -------------------------------------------


def test_a_vm_not_consuming_within_the_boot_timeout_is_failed_destroyed_and_replaced(
    broker_url, names, stub, opener
):
    clock = FakeClock()
    scaler = make_scaler(broker_url, names.jobs, stub.url, clock, max_vms=2)  # boot timeout 30 s
    start_domains(scaler, "vm-1")
    stub.body = queue_body(names.jobs, ready=500, unacked=1, consuming=("vm-1",))
    assert acted(scaler.tick()) == [("vm-2", START)]
    clock.now += 29.9
    waiting = scaler.tick()
    assert acted(waiting) == [] and waiting.event()["signals"]["booting_vms"] == ["vm-2"]
    assert running(scaler) == ["vm-1", "vm-2"]
    clock.now += 0.1
    report = scaler.tick()
    assert acted(report) == [("vm-2", DESTROY), ("vm-3", START)], report.decision.reason
    assert report.failed_actions == []
    assert report.event()["signals"]["failed_vms"] == ["vm-2"]
    assert "vm-2 not consuming 30s after start: failed" in report.decision.reason
    assert running(scaler) == ["vm-1", "vm-3"], "vm-2 pulled, vm-3 booting in its place"
    clock.now += 10
    stub.body = queue_body(names.jobs, ready=500, unacked=2, consuming=("vm-1", "vm-3"))
    after = scaler.tick()
    assert acted(after) == [] and after.event()["signals"]["failed_vms"] == []
    assert running(scaler) == ["vm-1", "vm-3"], "the failed VM is not started again at once"


# -- 6. several --connect hosts, the events file -------------------------------------------

NODE_B = Path(__file__).parent.parent / "data" / "pool-node-b.xml"
URI_B = f"test://{NODE_B}"


def states_on(hypervisor: Hypervisor) -> dict[str, str]:
    """The pool's domains as that host's own libvirt connection lists them."""
    connection = hypervisor._connect()
    return {
        domain.name(): "running" if domain.isActive() else "shutoff"
        for domain in connection.listAllDomains()
        if domain.name().startswith("vm-")
    }


def test_each_connection_is_its_own_host_and_each_action_goes_to_the_host_of_its_domain(
    broker_url, names, stub, opener
):
    clock = FakeClock()
    node_b = Hypervisor(URI_B, "vm", clock=clock)
    scaler = make_scaler(broker_url, names.jobs, stub.url, clock, extra_hypervisors=[node_b], max_vms=6)
    node_a = scaler.hypervisors[0]
    stub.body = queue_body(names.jobs, ready=5000, unacked=0)
    report = scaler.tick()
    assert report.problems == [] and report.failed_actions == []
    assert sorted(report.hosts) == sorted([URI, URI_B])
    assert {name: domain["host"] for name, domain in report.event()["domains"].items()} == {
        **dict.fromkeys(POOL, URI),
        "vm-5": URI_B,
        "vm-6": URI_B,
    }
    assert acted(report) == [(name, START) for name in POOL], "the policy's step up is at most 4"
    clock.now += 5
    assert acted(scaler.tick()) == [("vm-5", START), ("vm-6", START)], "then on the other host"
    assert states_on(node_a) == dict.fromkeys(POOL, "running") | {"vm-9": "running", "vm-8": "shutoff"}
    assert states_on(node_b) == {"vm-5": "running", "vm-6": "running"}
    clock.now += 10
    stub.body = queue_body(names.jobs, ready=0, unacked=0, consuming=(*POOL, "vm-5", "vm-6"))
    idle = scaler.tick()
    assert idle.hosts[URI]["domains"] == {"running": 4} and idle.hosts[URI_B]["domains"] == {"running": 2}
    assert acted(idle) == [("vm-4", SHUTDOWN)] and idle.failed_actions == []
    assert states_on(node_a) == dict.fromkeys(POOL, "running") | {
        "vm-4": "shutoff",
        "vm-9": "running",
        "vm-8": "shutoff",
    }
    assert states_on(node_b) == {"vm-5": "running", "vm-6": "running"}


#: Every field README.md and DESIGN.md give each line of the events file.
EVENT_FIELDS = {
    "time",
    "depth",
    "ready",
    "unacked",
    "publish_rate",
    "ack_rate",
    "consumers",
    "domains",
    "desired",
    "actions",
    "reason",
    "signals",
    "unseen",
    "degraded",
    "refused",
    "problems",
    "hosts",
    "notes",
    "leader",
    "lease_holder",
}


def test_each_tick_is_one_json_line_of_the_events_file_with_every_field(
    broker_url, names, stub, opener, tmp_path
):
    clock = FakeClock()
    scaler = make_scaler(broker_url, names.jobs, stub.url, clock, max_vms=2)
    scaler.wall_clock = lambda: 1_700_000_000.12345
    path = tmp_path / "events.jsonl"
    events = EventsFile(str(path))
    scaler.on_tick = events.write
    start_domains(scaler, "vm-1")
    stub.body = queue_body(
        names.jobs, ready=120, unacked=3, consuming=("vm-1",), publish_rate=12.5, ack_rate=4.0
    )
    scaler.tick()
    opener.connection.faults["getAllDomainStats"] = FAULTS["internal-error"]
    clock.now += 5
    scaler.tick()
    lines = path.read_text().splitlines()
    assert len(lines) == 2, "one line a tick, written as it happens"
    first, second = (json.loads(line) for line in lines)
    assert set(first) == EVENT_FIELDS and set(second) == EVENT_FIELDS
    assert first["time"] == 1_700_000_000.123
    assert (first["depth"], first["ready"], first["unacked"]) == (123, 120, 3)
    assert (first["publish_rate"], first["ack_rate"], first["consumers"]) == (12.5, 4.0, 1)
    assert first["domains"]["vm-1"] == {"state": "running", "cpu": None, "consuming": True, "host": URI}
    assert first["domains"]["vm-2"] == {"state": "shutoff", "cpu": None, "consuming": False, "host": URI}
    assert sorted(first["domains"]) == POOL, "the pool's domains only"
    assert first["desired"] == 2 and first["actions"] == [{"domain": "vm-2", "action": "start"}]
    assert first["reason"].endswith("start vm-2") and first["signals"]["booting_vms"] == []
    assert first["signals"]["failed_vms"] == []
    assert (first["degraded"], first["refused"], first["problems"], first["unseen"]) == (False, False, [], [])
    assert first["hosts"] == {URI: {"reachable": True, "domains": {"running": 1, "shutoff": 3}, "cap": None}}
    assert first["leader"] is True and first["lease_holder"] is None, "a sole scaler holds no lease"
    assert second["degraded"] is True and second["actions"] == [] and second["depth"] == 123
    assert second["signals"]["booting_vms"] == ["vm-2"], "started in the tick before"
    assert any(FAULTS["internal-error"].message in problem for problem in second["problems"])
    assert second["unseen"] == POOL and second["hosts"][URI]["reachable"] is False
    assert {domain["state"] for domain in second["domains"].values()} == {"unknown"}
    assert all(domain["cpu"] is None for domain in second["domains"].values())
    events.close()
