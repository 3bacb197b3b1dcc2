"""The scaler's warm pool against libvirt's test driver (managed save and restore are real
libvirt calls there) and the real RabbitMQ: scale-in parks a VM's worker and saves the VM, the
saved VM shows as `saved`, and the next scale-out restores it before it boots a shut-off one.
The test driver has no guest agent: the guest's side (park, resume) is played by a local worker
process with the domain's name, sent the signals the agent would send. A fake clock."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.conftest import known_jobs, publish_raw, wait_until
from tests.support.clock import FakeClock
from virtscale.scaler.hypervisor import Hypervisor
from virtscale.scaler.loop import Scaler
from virtscale.scaler.policy import Policy, PolicyConfig
from virtscale.scaler.provisioning import HostStorage
from virtscale.scaler.queue_monitor import QueueMonitor

pytestmark = pytest.mark.broker

NODE = Path(__file__).parent.parent / "data" / "pool-node.xml"


def node_with_storage(tmp_path: Path) -> str:
    """The pool node (1 GiB domains) with a `default` storage pool, beside which the scaler
    makes its own (the test driver gives each 100 GiB, all free)."""
    storage = (
        '  <pool type="dir"><name>default</name>'
        "<target><path>/var/lib/libvirt/images</path></target></pool>\n</node>"
    )
    path = tmp_path / "node.xml"
    path.write_text(NODE.read_text().replace("</node>", storage))
    return f"test://{path}"


def fill_disk(hypervisor: Hypervisor, leave_mib: int) -> None:
    """A volume that leaves ``leave_mib`` free in the scaler's storage pool."""
    pool = HostStorage(hypervisor._connect()).storage_pool()
    size = pool.info()[3] // 2**20 - leave_mib
    pool.createXML(
        f"<volume><name>filler.img</name><capacity unit='MiB'>{size}</capacity>"
        f"<allocation unit='MiB'>{size}</allocation><target><format type='raw'/></target></volume>",
        0,
    )


class GuestPlayedByProcesses(Hypervisor):
    """The guest agent's two commands sent as signals to the local worker of the same name."""

    def __init__(self, uri, pool, clock, workers):
        super().__init__(uri, pool, clock=clock)
        self.workers = workers

    def stop_worker(self, name: str) -> None:
        self.workers[name].send_signal(signal.SIGUSR1)

    def _after_restore(self, domain) -> None:
        self.workers[domain.name()].send_signal(signal.SIGUSR2)


def start_pool(tmp_path, broker_url, names, management, processes, free_mib=None, **policy):
    clock = FakeClock()
    workers = {}
    config = PolicyConfig(
        **{
            "min_vms": 1,
            "max_vms": 3,
            "scale_up_cooldown": 0,
            "scale_down_stabilization": 20,
            "boot_timeout": 600,
            "drain_timeout": 60,
            "warm_pool": 1,
            **policy,
        }
    )
    hypervisor = GuestPlayedByProcesses(node_with_storage(tmp_path), "vm", clock, workers)
    if free_mib is not None:
        fill_disk(hypervisor, free_mib)
    monitor = QueueMonitor(management, ("guest", "guest"), "/", names.jobs, broker_url)
    scaler = Scaler([hypervisor], monitor, Policy(config), window=30, clock=clock)
    connection = hypervisor._connect()
    for name in ("vm-1", "vm-2"):
        connection.lookupByName(name).create()
        workers[name] = processes.start(
            "virtscale.worker",
            *("--amqp-url", broker_url, "--queue", names.jobs, "--name", name, "--cost", "10"),
            name=name,
        )
    wait_until(lambda: len(scaler.monitor.read().consuming) == 2, 60, "two VMs consuming")
    wait_until(lambda: not scaler.monitor.read().degraded, 30, "the queue's statistics")
    return scaler, clock


def tick_until(scaler, clock, condition, what: str, ticks: int = 30):
    """Ticks 10 s apart until ``condition(report)``; the management API refreshes its consumer
    list every few seconds, so a real wait comes between two ticks."""
    for _ in range(ticks):
        report = scaler.tick()
        if condition(report):
            return report
        clock.now += 10
        wait_until(lambda: True, 1, "a moment")
    raise AssertionError(f"never: {what}")


def actions(report):
    return [(a.domain, a.action) for a in report.decision.actions]


def test_scale_in_saves_a_vm_and_scale_out_restores_it_first(
    tmp_path, broker_url, names, management, processes
):
    scaler, clock = start_pool(tmp_path, broker_url, names, management, processes)
    saving = tick_until(scaler, clock, lambda r: actions(r), "a scale-in")
    assert actions(saving) == [("vm-2", "save")]
    assert "save vm-2 into the warm pool" in saving.decision.reason
    saved = tick_until(scaler, clock, lambda r: r.domains()["vm-2"]["state"] == "saved", "vm-2 saved")
    assert saved.event()["domains"]["vm-2"]["state"] == "saved"
    assert scaler.hypervisors[0]._connect().lookupByName("vm-2").hasManagedSaveImage(0)
    # Cost-10 jobs: a backlog the workers' prefetch (about a second of work a slot) cannot hide.
    publish_raw(broker_url, names.jobs, known_jobs(3000, seed=1, produced_at=1.0)[1])
    wait_until(lambda: (scaler.monitor.read().depth or 0) >= 1000, 30, "a backlog")
    out = tick_until(scaler, clock, lambda r: actions(r), "a scale-out")
    assert actions(out)[0] == ("vm-2", "start"), "the saved VM restored before any boot"
    domain = scaler.hypervisors[0]._connect().lookupByName("vm-2")
    assert domain.isActive() and not domain.hasManagedSaveImage(0)
    wait_until(lambda: "vm-2" in scaler.monitor.read().consuming, 60, "the restored worker consuming")


def test_a_host_without_disk_room_shuts_down_instead_and_says_so(
    tmp_path, broker_url, names, management, processes
):
    # 512 MiB free for a 1 GiB domain's save image: no room for one.
    scaler, clock = start_pool(tmp_path, broker_url, names, management, processes, free_mib=512)
    report = tick_until(scaler, clock, lambda r: actions(r), "a scale-in")
    assert actions(report) == [("vm-2", "shutdown")], (report.decision.reason, report.decision.signals)
    assert "warm pool 0 of 1: no disk room for more save images" in report.decision.reason
    assert "512 MiB free for 1024 MiB save images" in report.decision.reason
    assert report.decision.signals["warm_target"] == 0
