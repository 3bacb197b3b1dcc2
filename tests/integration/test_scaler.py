"""The scaler against libvirt's test driver (a pool of vm-1..vm-4 plus an outside domain)
and the real RabbitMQ. Time is a fake clock, so stabilization windows pass at once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import known_jobs, publish_raw, require, run_module, wait_until
from tests.support.clock import FakeClock
from virtscale.scaler.hypervisor import Hypervisor
from virtscale.scaler.loop import Scaler
from virtscale.scaler.policy import Policy, PolicyConfig
from virtscale.scaler.queue_monitor import QueueMonitor

pytestmark = pytest.mark.broker

NODE = Path(__file__).parent.parent / "data" / "pool-node.xml"
POOL = ("vm-1", "vm-2", "vm-3", "vm-4")


def make_scaler(broker_url, names, clock, management_url, *, dry_run=False, uri=None, pool="vm", **policy):
    config = PolicyConfig(
        **{
            "min_vms": 1,
            "max_vms": 3,
            "target_backlog": 50,
            "scale_up_cooldown": 0,
            "scale_down_stabilization": 60,
            "boot_timeout": 600,
            **policy,
        }
    )
    hypervisor = Hypervisor(uri or f"test://{NODE}", pool, clock=clock)
    monitor = QueueMonitor(management_url, ("guest", "guest"), "/", names.jobs, broker_url)
    return Scaler([hypervisor], monitor, Policy(config), window=30, dry_run=dry_run, clock=clock)


def domain_states(scaler) -> dict[str, tuple[str, int]]:
    """name -> (state, run id) for every domain, pool or not, on the scaler's own connection."""
    connection = scaler.hypervisors[0]._connect()
    return {
        d.name(): (("running" if d.isActive() else "shutoff"), d.ID()) for d in connection.listAllDomains()
    }


def wait_for_depth(scaler, at_least: int) -> None:
    # The management API refreshes queue figures every few seconds.
    wait_until(lambda: (scaler.monitor.read().depth or 0) >= at_least, 30, f"depth >= {at_least}")


def wait_for_statistics(scaler) -> None:
    """Until the management API reports the new queue's counts (some seconds after its declare):
    before that every reading is degraded, as it must be."""
    wait_until(lambda: not scaler.monitor.read().degraded, 30, "the queue's statistics")


def test_a_loaded_queue_boots_vms_up_to_max_and_never_touches_other_domains(broker_url, names, management):
    clock = FakeClock()
    scaler = make_scaler(broker_url, names, clock, management)
    before = domain_states(scaler)
    publish_raw(broker_url, names.jobs, known_jobs(500, seed=1, produced_at=1.0)[1])
    wait_for_depth(scaler, 500)
    report = scaler.tick()
    assert [(a.domain, a.action) for a in report.decision.actions] == [
        ("vm-1", "start"),
        ("vm-2", "start"),
        ("vm-3", "start"),
    ]
    after = domain_states(scaler)
    assert [name for name in POOL if after[name][0] == "running"] == ["vm-1", "vm-2", "vm-3"]
    assert after["database"] == before["database"], "the outside domain is untouched"
    clock.now += 5
    assert scaler.tick().decision.actions == (), "at --max, booting VMs count: nothing more"


def test_an_idle_queue_shuts_vms_down_after_stabilization(broker_url, names, management, processes):
    clock = FakeClock()
    scaler = make_scaler(broker_url, names, clock, management)
    connection = scaler.hypervisors[0]._connect()
    for name in ("vm-1", "vm-2", "vm-3"):
        connection.lookupByName(name).create()
        # The guest's worker, played here by a local worker process with the domain's name.
        processes.start(
            "virtscale.worker",
            "--amqp-url",
            broker_url,
            "--queue",
            names.jobs,
            "--name",
            name,
            "--cost",
            "4",
            name=name,
        )
    wait_until(lambda: len(scaler.monitor.read().consuming) == 3, 60, "three VMs consuming")
    wait_for_statistics(scaler)
    shutdowns = []
    for _ in range(20):
        report = scaler.tick()
        shutdowns += [
            (round(clock.now - 1000), a.domain) for a in report.decision.actions if a.action == "shutdown"
        ]
        clock.now += 10
    assert [domain for _t, domain in shutdowns] == ["vm-3", "vm-2"], "down to --min 1, from the end"
    assert shutdowns[0][0] >= 60, "not before the stabilization window"
    states = domain_states(scaler)
    assert states["vm-1"][0] == "running" and states["vm-3"][0] == "shutoff"
    assert states["database"][0] == "running"


def test_dry_run_decides_but_changes_nothing(broker_url, names, management):
    clock = FakeClock()
    scaler = make_scaler(broker_url, names, clock, management, dry_run=True)
    before = domain_states(scaler)
    publish_raw(broker_url, names.jobs, known_jobs(300, seed=1, produced_at=1.0)[1])
    wait_for_depth(scaler, 300)
    report = scaler.tick()
    assert any(a.action == "start" for a in report.decision.actions)
    assert domain_states(scaler) == before


def test_management_api_unreachable_means_no_scale_down(broker_url, names, processes):
    clock = FakeClock()
    scaler = make_scaler(broker_url, names, clock, "http://127.0.0.1:9", scale_down_stabilization=0)
    connection = scaler.hypervisors[0]._connect()
    for name in ("vm-1", "vm-2"):
        connection.lookupByName(name).create()
    for _ in range(10):
        report = scaler.tick()
        assert report.degraded
        assert report.reading.ready == 0, "the passive-declare fallback still reads the queue"
        assert report.decision.actions == (), report.decision.reason
        clock.now += 100
    assert report.decision.desired == 2
    assert "no scale-down" in report.decision.reason


def test_libvirtd_unreachable_is_retried_with_backoff_and_recovers(broker_url, names, management, tmp_path):
    real_socket = "/var/run/libvirt/libvirt-sock"
    require(os.path.exists(real_socket), "libvirtd (its socket /var/run/libvirt/libvirt-sock)")
    socket_path = tmp_path / "libvirt-sock"
    clock = FakeClock()
    scaler = make_scaler(
        broker_url,
        names,
        clock,
        management,
        uri=f"qemu+unix:///system?socket={socket_path}",
        pool="virtscale-test-none-*",
    )
    hypervisor = scaler.hypervisors[0]
    waits = []
    for _ in range(4):
        report = scaler.tick()
        assert report.degraded and "Failed to connect socket" in " ".join(report.problems)
        waits.append(hypervisor.next_attempt - clock.now)
        clock.now = hypervisor.next_attempt
    assert waits == sorted(waits) and waits[-1] > waits[0], "backoff grows"
    socket_path.symlink_to(real_socket)
    wait_for_statistics(scaler)
    report = scaler.tick()
    assert not report.degraded, report.problems


def pool_flags(broker_url: str, names) -> list[str]:
    """The flags that point `run` and `status` at the test node and this test's queue."""
    return ["--connect", f"test://{NODE}", "--amqp-url", broker_url, "--queue", names.jobs]


def test_cli_once_prints_the_event_and_starts_vms(broker_url, names, management):
    publish_raw(broker_url, names.jobs, known_jobs(200, seed=1, produced_at=1.0)[1])
    wait_until(
        lambda: (
            (QueueMonitor(management, ("guest", "guest"), "/", names.jobs, broker_url).read().depth or 0)
            >= 200
        ),
        30,
        "depth visible",
    )
    run = run_module(
        "virtscale.scaler",
        "run",
        "--once",
        *pool_flags(broker_url, names),
        "--max",
        "2",
        "--target-backlog",
        "50",
    )
    assert run.returncode == 0, run.stderr
    event = json.loads(run.stdout.strip().splitlines()[-1])
    assert {"time", "depth", "domains", "desired", "actions", "reason", "degraded"} <= set(event)
    assert event["depth"] >= 200 and event["desired"] == 2
    assert event["actions"] == [{"domain": "vm-1", "action": "start"}, {"domain": "vm-2", "action": "start"}]
    assert "database" not in event["domains"]


def test_status_prints_the_pool_and_the_queue_once(broker_url, names, management):
    run = run_module("virtscale.scaler", "status", *pool_flags(broker_url, names))
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("queue: depth 0")
    assert [line.split()[:2] for line in lines[2:6]] == [[name, "shutoff"] for name in POOL]
    assert "database" not in run.stdout and "decision" not in run.stdout
    assert "want " not in run.stdout + run.stderr, "status's throwaway policy decides nothing to show"
