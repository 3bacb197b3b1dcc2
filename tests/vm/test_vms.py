"""Real worker VMs under libvirt (QEMU TCG here): boot, egress lock, scale 1 -> 2 -> 3 -> 1,
and a VM destroyed mid-work. Slow by nature; marker `vm`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import (
    MANAGEMENT_URL,
    TEST_CONNECTION,
    duplicates_ignored,
    known_jobs,
    port_open,
    publish_raw,
    require,
    stored_ids,
    wait_until,
)
from virtscale import defaults
from virtscale.broker import declare_topology, delete_topology, queue_counts
from virtscale.naming import QueueNames
from virtscale.scaler.hypervisor import Hypervisor
from virtscale.scaler.loop import Scaler
from virtscale.scaler.policy import DESTROY, SHUTDOWN, START, Policy, PolicyConfig
from virtscale.scaler.provisioning import SYSTEM_STORAGE_DIR
from virtscale.scaler.queue_monitor import QueueMonitor

# Real guests boot and drain at their own pace; each scenario bounds its own waits.
pytestmark = [pytest.mark.vm, pytest.mark.broker, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
URI = "qemu:///system"
PREFIX = "vmtest-"
POOL = "vmtest"
NAMES = [f"{PREFIX}{i}" for i in (1, 2, 3)]
#: bcrypt cost in the test VMs: cheap enough that a flood drains in minutes under TCG.
COST = 6
#: The serial console logs sit in the storage pool beside the volumes (scaler/provisioning.py).
CONSOLE = Path(SYSTEM_STORAGE_DIR)


def libvirt_ready() -> bool:
    if not shutil.which("qemu-system-x86_64") or not os.path.exists("/var/run/libvirt/libvirt-sock"):
        return False
    return subprocess.run(["virsh", "-c", URI, "version"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def vm_queue(broker_url, tmp_path_factory):
    """Image built (cached), vmtest-1..3 defined shut off on a queue of their own."""
    require(libvirt_ready(), "libvirtd with QEMU (qemu:///system)")
    require(port_open("127.0.0.1", 15672), "RabbitMQ management API")
    subprocess.run([str(ROOT / "deploy/image/build.sh")], check=True, cwd=ROOT)
    names = QueueNames(f"vmtest-{uuid.uuid4().hex[:8]}")
    declare_topology(broker_url, names, defaults.DELIVERY_LIMIT, TEST_CONNECTION)
    password = tmp_path_factory.mktemp("secret") / "password"
    password.write_text("guest")  # the guests reach the broker via the host's loopback
    template = tmp_path_factory.mktemp("template") / "vmtest.json"
    subprocess.run(
        [
            *(sys.executable, str(ROOT / "deploy/template.py"), "--pool", POOL, "--out", str(template)),
            *("--queue", names.jobs, "--cost", str(COST), "--user", "guest", "--shared-user"),
            *("--password-file", str(password)),
        ],
        check=True,
        cwd=ROOT,
    )
    vms = [sys.executable, str(ROOT / "deploy/vms.py")]
    # Leftovers of an interrupted run (a domain still running keeps its old settings).
    subprocess.run([*vms, "undefine", "--pool", POOL], check=False, cwd=ROOT, capture_output=True)
    subprocess.run([*vms, "define", "--count", "3", "--template", str(template)], check=True, cwd=ROOT)
    yield names
    subprocess.run([*vms, "undefine", "--pool", POOL], check=False, cwd=ROOT)
    delete_topology(broker_url, names, TEST_CONNECTION)


def monitor_for(names, broker_url):
    return QueueMonitor(MANAGEMENT_URL, ("guest", "guest"), "/", names.jobs, broker_url)


def all_off(hypervisor: Hypervisor) -> None:
    for sample in hypervisor.sample():
        if sample.state != "shutoff":
            hypervisor.destroy(sample.name)


def start_pool(vm_queue, broker_url, processes, tmp_path, **policy) -> tuple[Path, Hypervisor, Scaler]:
    """A collector into a fresh store, every test VM off, and a scaler with the given policy."""
    db = tmp_path / "hashes.db"
    processes.start(
        "virtscale.collector",
        "run",
        "--amqp-url",
        broker_url,
        "--queue",
        vm_queue.jobs,
        "--store",
        f"sqlite:///{db}",
        name="collector",
    )
    hypervisor = Hypervisor(URI, POOL)
    all_off(hypervisor)
    config = PolicyConfig(**{"target_backlog": 50, "boot_timeout": 150, "drain_timeout": 60, **policy})
    scaler = Scaler([hypervisor], monitor_for(vm_queue, broker_url), Policy(config), window=10)
    return db, hypervisor, scaler


def run_scaler(scaler: Scaler, until, timeout: float, interval: float = 2.0) -> list[tuple[float, str, str]]:
    """Tick the scaler in real time until ``until()``; the actions it took, with times."""
    started = time.monotonic()
    taken = []
    while not until():
        if time.monotonic() - started > timeout:
            pytest.fail(f"scenario did not finish in {timeout:.0f} s; actions so far: {taken}")
        report = scaler.tick()
        for action in report.decision.actions:
            taken.append((round(time.monotonic() - started, 1), action.domain, action.action))
        time.sleep(interval)
    return taken


def test_boot_to_consuming_and_only_the_broker_is_reachable(vm_queue, broker_url):
    hypervisor = Hypervisor(URI, POOL)
    all_off(hypervisor)
    monitor = monitor_for(vm_queue, broker_url)
    started = time.monotonic()
    hypervisor.start(NAMES[0])
    # A passive declare counts consumers at once (the management API lags by seconds).
    wait_until(
        lambda: queue_counts(broker_url, vm_queue.jobs, TEST_CONNECTION)[1] >= 1,
        180,
        f"{NAMES[0]} consuming",
        every=0.25,
    )
    boot_seconds = time.monotonic() - started
    wait_until(lambda: NAMES[0] in monitor.read().consuming, 30, "the consumer tagged with its name")
    print(f"\nboot to worker consuming under {Hypervisor(URI, POOL).uri}: {boot_seconds:.1f} s")
    (ROOT / "var").mkdir(exist_ok=True)
    (ROOT / "var" / "vm-boot-seconds.txt").write_text(f"{boot_seconds:.1f}\n")
    console = CONSOLE / f"{NAMES[0]}.console.log"
    line = wait_until(
        lambda: next(
            (row for row in console.read_text(errors="replace").splitlines() if "virtscale-egress:" in row),
            None,
        ),
        60,
        "the guest's egress probe",
    )
    assert "10.0.2.2:5672 open" in line, line
    for port in (15672, 5432, 6379):
        assert f"10.0.2.2:{port} blocked" in line, line
    hypervisor.shutdown(NAMES[0])
    wait_until(
        lambda: {s.name: s.state for s in hypervisor.sample()}[NAMES[0]] == "shutoff",
        90,
        "ACPI shutdown to power off",
    )
    assert "stopped:" in console.read_text(errors="replace"), "the worker drained and exited"


def test_flood_scales_1_2_3_and_back_to_1_storing_every_id_once(vm_queue, broker_url, processes, tmp_path):
    db, hypervisor, scaler = start_pool(
        vm_queue,
        broker_url,
        processes,
        tmp_path,
        min_vms=1,
        max_vms=3,
        max_start_per_tick=1,
        scale_up_cooldown=30,
        scale_down_stabilization=20,
        # A tight SLO, so the backlog of this flood needs all three VMs (with the default 60 s,
        # two of these fast-hashing guests would clear it in time, and rightly stay two).
        slo=10,
    )
    # Start at the minimum: one VM consuming, then the flood.
    run_scaler(scaler, lambda: len(scaler.monitor.read().consuming) >= 1, 240)
    ids, bodies = known_jobs(6000, seed=11)
    publish_raw(broker_url, vm_queue.jobs, bodies)
    peak = 0

    def settled() -> bool:
        nonlocal peak
        running = [s.name for s in hypervisor.sample() if s.state == "running"]
        peak = max(peak, len(running))
        return len(set(stored_ids(db))) == len(ids) and len(running) == 1 and peak == 3

    actions = run_scaler(scaler, settled, 1500)
    print(f"\nscaler actions (seconds, domain, action): {actions}")
    starts = [a for a in actions if a[2] == START]
    stops = [a for a in actions if a[2] in (SHUTDOWN, DESTROY)]
    assert len(starts) == 2 and starts[0][0] < starts[1][0], "one VM at a time: 1 -> 2 -> 3"
    assert len([a for a in stops if a[2] == SHUTDOWN]) == 2, "3 -> 2 -> 1"
    assert sorted(stored_ids(db)) == sorted(ids), "every id stored"
    # Every scale-in drained its VM: no job was hashed twice, so the collector dropped no copy.
    assert duplicates_ignored(db) == 0, "every job hashed exactly once"


def test_a_vm_destroyed_mid_work_is_replaced_and_nothing_is_lost(vm_queue, broker_url, processes, tmp_path):
    db, _hypervisor, scaler = start_pool(
        vm_queue,
        broker_url,
        processes,
        tmp_path,
        min_vms=2,
        max_vms=2,
        scale_up_cooldown=0,
        scale_down_stabilization=600,
    )
    run_scaler(scaler, lambda: len(scaler.monitor.read().consuming) >= 2, 300)
    ids, bodies = known_jobs(3000, seed=12)
    publish_raw(broker_url, vm_queue.jobs, bodies)
    wait_until(lambda: len(stored_ids(db)) >= 100, 300, "work under way")
    victim = sorted(scaler.monitor.read().consuming)[-1]
    subprocess.run(["virsh", "-c", URI, "destroy", victim], check=True, capture_output=True)
    actions = run_scaler(scaler, lambda: len(set(stored_ids(db))) == len(ids), 1500)
    print(f"\n{victim} destroyed; scaler actions afterwards: {actions}")
    assert any(action == START for _t, _d, action in actions), "a replacement was started"
    assert sorted(stored_ids(db)) == sorted(ids), "every id stored"
    # Only the jobs the destroyed VM held can have been hashed twice: its prefetch, one job per
    # vCPU (--prefetch-per-slot 1), and a template has at most 64 vCPUs (deploy/template.py).
    assert duplicates_ignored(db) <= 64, "a job hashed again and again"
