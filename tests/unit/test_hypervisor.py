"""The libvirt wrapper on the test driver: pool filtering, state, the per-domain CPU fallback,
every libvirt error mapped to the module's own, and the reconnect backoff on a fake clock."""

import re
import subprocess
from pathlib import Path

import libvirt
import pytest

from tests.support.clock import FakeClock
from tests.support.libvirt_faults import FAULTS
from tests.support.libvirt_faults import Opener as FaultOpener
from virtscale import defaults
from virtscale.scaler import hypervisor as hypervisor_module
from virtscale.scaler.hypervisor import ActionFailed, Hypervisor, HypervisorRefused, HypervisorUnavailable
from virtscale.scaler.template import Image, Template, WorkerSettings

NODE = Path(__file__).parent.parent / "data" / "pool-node.xml"

#: A stats group no libvirt driver knows: asking for it with ENFORCE_STATS makes libvirt itself
#: refuse the bulk call with VIR_ERR_ARGUMENT_UNSUPPORTED, an error of the request, not of the link.
UNKNOWN_STATS = 1 << 20


class FaultyStats:
    """A real connection whose bulk stats call fails the way a driver refuses a request."""

    def __init__(self, connection: libvirt.virConnect):
        self._connection = connection

    def __getattr__(self, name: str):
        return getattr(self._connection, name)

    def getAllDomainStats(self, stats: int, flags: int = 0):
        enforce = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ENFORCE_STATS
        return self._connection.getAllDomainStats(stats | UNKNOWN_STATS, flags | enforce)


class Opener:
    """libvirt.open that, while ``broken``, opens a socket nobody listens on (libvirt's real
    VIR_ERR_SYSTEM_ERROR), and counts the attempts."""

    def __init__(self, dead_socket: Path, wrap=lambda connection: connection):
        self.real_open = libvirt.open
        self.dead_uri = f"qemu+unix:///system?socket={dead_socket}"
        self.wrap = wrap
        self.broken = False
        self.attempts = 0

    def __call__(self, uri: str):
        self.attempts += 1
        return self.wrap(self.real_open(self.dead_uri if self.broken else uri))


def test_only_pool_domains_are_sampled_with_state_and_cpu():
    hypervisor = Hypervisor(f"test://{NODE}", "vm")
    samples = {s.name: s for s in hypervisor.sample()}
    assert sorted(samples) == ["vm-1", "vm-2", "vm-3", "vm-4"]
    assert {s.state for s in samples.values()} == {"shutoff"}
    hypervisor.start("vm-2")
    started = {s.name: s for s in hypervisor.sample()}["vm-2"]
    assert started.state == "running"
    assert started.cpu_time_ns is not None and started.vcpus == 2, "filled in by the fallback"


def test_domains_outside_the_pool_are_refused():
    hypervisor = Hypervisor(f"test://{NODE}", "vm")
    with pytest.raises(ActionFailed, match="not tagged for pool"):
        hypervisor.destroy("database")


def test_a_uri_libvirt_cannot_open_is_refused():
    with pytest.raises(HypervisorRefused, match="no connection driver"):
        Hypervisor.check_uri("nosuch:///")


def test_a_failed_stats_call_is_hypervisor_unavailable_not_a_libvirt_error(monkeypatch, tmp_path):
    opener = Opener(tmp_path / "none", wrap=FaultyStats)
    monkeypatch.setattr(hypervisor_module.libvirt, "open", opener)
    hypervisor = Hypervisor("test:///default", "*")
    refused = r"sampling on test:///default: .*not supported"
    with pytest.raises(HypervisorUnavailable, match=refused) as raised:
        hypervisor.sample()
    assert not isinstance(raised.value, libvirt.libvirtError)
    with pytest.raises(HypervisorUnavailable):
        hypervisor.sample()
    assert opener.attempts == 1, "a refused request keeps the connection: nothing to reopen"


def test_a_refused_action_is_action_failed_naming_the_domain():
    hypervisor = Hypervisor(f"test://{NODE}", "vm")
    hypervisor.start("vm-1")
    with pytest.raises(ActionFailed, match=r"start vm-1 on test://.*already running"):
        hypervisor.start("vm-1")
    with pytest.raises(ActionFailed, match="shutdown vm-9 on test://"):
        hypervisor.shutdown("vm-9")


def test_a_lost_connection_is_dropped_with_a_warning_naming_the_host_and_why(monkeypatch, caplog):
    uri = f"test://{NODE}"
    opener = FaultOpener(uri)
    monkeypatch.setattr(hypervisor_module.libvirt, "open", opener)
    hypervisor = Hypervisor(uri, "vm", clock=FakeClock())
    hypervisor.sample()
    opener.connection.faults["lookupByName"] = FAULTS["system-error"]
    with pytest.raises(HypervisorUnavailable):
        hypervisor.destroy("vm-1")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", f"{uri}: destroy vm-1: {FAULTS['system-error'].message}")
    ]
    assert opener.connection.closes == 1, "closed, not left open beside the next one"


def test_a_connection_found_dead_is_dropped_and_the_reconnect_is_logged(monkeypatch, caplog):
    uri = f"test://{NODE}"
    opener = FaultOpener(uri)
    monkeypatch.setattr(hypervisor_module.libvirt, "open", opener)
    clock = FakeClock()
    hypervisor = Hypervisor(uri, "vm", clock=clock)
    hypervisor.sample()
    caplog.set_level("INFO", logger="virtscale.scaler.hypervisor")
    opener.connection.alive = False  # libvirtd restarted between two calls
    opener.connection.faults["close"] = FAULTS["invalid-conn"]  # and closing it fails too
    opener.down = True
    with pytest.raises(HypervisorUnavailable, match="libvirt-sock"):
        hypervisor.sample()
    opener.down = False
    clock.now = hypervisor.next_attempt
    assert len(hypervisor.sample()) == 4
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", f"{uri}: connection to libvirtd lost"),
        ("INFO", f"{uri}: reconnected to libvirtd"),
    ]


def test_a_save_image_that_cannot_be_checked_means_a_cold_boot(monkeypatch):
    uri = f"test://{NODE}"
    opener = FaultOpener(uri)
    monkeypatch.setattr(hypervisor_module.libvirt, "open", opener)
    hypervisor = Hypervisor(uri, "vm", clock=FakeClock())
    hypervisor.sample()
    opener.connection.faults["hasManagedSaveImage"] = FAULTS["internal-error"]
    hypervisor.start("vm-1")  # no restore: nothing asks the (absent) guest agent to resume
    assert hypervisor._connect().lookupByName("vm-1").isActive()


def test_reconnect_waits_grow_are_capped_and_never_block(monkeypatch, tmp_path):
    opener = Opener(tmp_path / "none")
    opener.broken = True
    monkeypatch.setattr(hypervisor_module.libvirt, "open", opener)
    clock = FakeClock()
    hypervisor = Hypervisor(f"test://{NODE}", "vm", clock=clock)
    waits = []
    for attempt in range(1, 11):
        with pytest.raises(HypervisorUnavailable, match="Failed to connect socket"):
            hypervisor.sample()
        assert opener.attempts == attempt
        wait = hypervisor.next_attempt - clock.now
        base = defaults.RECONNECT_INITIAL * 2 ** (attempt - 1)
        cap = defaults.RECONNECT_MAX
        assert min(base, cap) <= wait <= min(base + defaults.RECONNECT_JITTER, cap)
        waits.append(wait)
        clock.now = hypervisor.next_attempt - 0.01
        with pytest.raises(HypervisorUnavailable, match=r"next attempt in 0\.0 s"):
            hypervisor.sample()
        assert opener.attempts == attempt, "not due yet: answered at once, no attempt made"
        clock.now = hypervisor.next_attempt
    assert waits == sorted(waits) and waits[0] < 1.5 < 15 < waits[5]
    assert waits[-3:] == [defaults.RECONNECT_MAX] * 3
    opener.broken = False
    assert len(hypervisor.sample()) == 4, "due again: reconnected"
    opener.broken = True
    hypervisor._drop("test: connection lost")
    with pytest.raises(HypervisorUnavailable):
        hypervisor.sample()
    assert hypervisor.next_attempt - clock.now <= defaults.RECONNECT_INITIAL + defaults.RECONNECT_JITTER, (
        "a success starts the backoff afresh"
    )


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_every_libvirt_error_class_leaves_as_the_modules_own(monkeypatch, fault):
    uri = f"test://{NODE}"
    opener = FaultOpener(uri)
    monkeypatch.setattr(hypervisor_module.libvirt, "open", opener)
    hypervisor = Hypervisor(uri, "vm", clock=FakeClock())
    assert len(hypervisor.sample()) == 4 and hypervisor.connections == 1
    opener.connection.faults["getAllDomainStats"] = fault
    with pytest.raises(HypervisorUnavailable, match=re.escape(fault.message)):
        hypervisor.sample()
    assert len(hypervisor.sample()) == 4, "the next sample works (reconnected if it was lost)"
    assert hypervisor.connections == (2 if fault.lost else 1), "only a lost connection is reopened"
    expected = HypervisorUnavailable if fault.lost else ActionFailed
    for call, act in (("create", hypervisor.start), ("lookupByName", hypervisor.shutdown)):
        opener.connection.faults[call] = fault
        with pytest.raises(expected, match=re.escape(fault.message)):
            act("vm-1")


def test_a_domain_undefined_between_the_list_and_the_action_fails_that_action():
    hypervisor = Hypervisor(f"test://{NODE}", "vm")
    hypervisor.sample()
    hypervisor._connect().lookupByName("vm-4").undefine()
    with pytest.raises(ActionFailed, match=r"start vm-4 on test://.*: Domain not found"):
        hypervisor.start("vm-4")


def test_a_restored_guest_gets_the_host_clock_to_the_millisecond_then_its_worker_resumed(tmp_path):
    """The script a restored guest runs, run here by /bin/sh with stand-ins for date and systemctl
    that record their arguments (this host has no worker unit, so the systemctl path runs)."""
    calls = tmp_path / "calls"
    for tool in ("date", "systemctl"):
        stand_in = tmp_path / tool
        stand_in.write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n')
        stand_in.chmod(0o755)
    script = hypervisor_module.resume_script(1764195123.4567).replace("/bin/systemctl", "systemctl")
    subprocess.run(["/bin/sh", "-c", script], env={"PATH": str(tmp_path)}, check=True)
    assert calls.read_text().splitlines() == [
        "date -u -s @1764195123.457",
        f"systemctl kill --signal=SIGUSR2 {hypervisor_module.WORKER_UNIT}",
    ]


def template_with_image(folder: Path) -> Template:
    """A template whose image files are ``folder``'s rootfs, kernel and initrd."""
    image = Image(
        "0123456789abcdef", str(folder / "rootfs"), 2**20, str(folder / "kernel"), str(folder / "initrd")
    )
    worker = WorkerSettings("amqp://worker@10.0.2.2:5672/%2F", str(folder / "password"), "licenses", 10)
    return Template(pool="vm", image=image, worker=worker)


def node_with_storage(tmp_path: Path) -> str:
    """vm-1 (the pool's, defined by an operator, off), vm-2 (the pool's, created by the scaler,
    running), vm-9 (untagged, running), and the host's default storage pool."""
    tag = (
        '<metadata><virtscale:pool xmlns:virtscale="http://virtscale.org/xmlns/pool/1" name="vm" '
        'origin="{}"/></metadata>'
    )
    domain = (
        '<domain type="test" xmlns:test="http://libvirt.org/schemas/domain/test/1.0"><name>{}</name>{}'
        "<memory>1048576</memory><vcpu>2</vcpu><os><type>hvm</type></os>{}</domain>"
    )
    off = "<test:runstate>5</test:runstate>"
    path = tmp_path / "node.xml"
    path.write_text(
        "<node>"
        + domain.format("vm-1", tag.format("defined"), off)
        + domain.format("vm-2", tag.format("template"), "")
        + domain.format("vm-9", "", "")
        + '<pool type="dir"><name>default</name><target><path>/var/lib/libvirt/images</path></target></pool>'
        + "</node>"
    )
    return f"test://{path}"


def running(hypervisor: Hypervisor) -> dict[str, bool]:
    return {d.name(): bool(d.isActive()) for d in hypervisor._connect().listAllDomains()}


def test_each_action_does_what_it_says_to_its_domain_only_and_logs_it(tmp_path, caplog):
    uri = node_with_storage(tmp_path)
    hypervisor = Hypervisor(uri, "vm")
    caplog.set_level("INFO", logger="virtscale.scaler.hypervisor")
    hypervisor.start("vm-1")
    assert running(hypervisor) == {"vm-1": True, "vm-2": True, "vm-9": True}
    hypervisor.shutdown("vm-1")
    assert running(hypervisor) == {"vm-1": False, "vm-2": True, "vm-9": True}
    hypervisor.destroy("vm-2")
    assert running(hypervisor) == {"vm-1": False, "vm-2": False, "vm-9": True}
    assert [r.getMessage() for r in caplog.records] == [
        f"{uri}: start vm-1",
        f"{uri}: shutdown vm-1",
        f"{uri}: destroy vm-2",
    ]


def test_a_saved_domain_is_shut_off_with_its_memory_and_a_start_restores_it_then_resumes_its_worker(
    tmp_path, caplog
):
    uri = node_with_storage(tmp_path)
    hypervisor = Hypervisor(uri, "vm")
    caplog.set_level("INFO", logger="virtscale.scaler.hypervisor")
    hypervisor.save("vm-2")
    assert [r.getMessage() for r in caplog.records] == [f"{uri}: save vm-2"]
    domain = hypervisor._connect().lookupByName("vm-2")
    assert not domain.isActive() and domain.hasManagedSaveImage(0)
    # The test driver restores the domain but has no guest agent: the one command that sets
    # the guest's clock and resumes its worker is what fails, so the start of a saved domain
    # tries it.
    with pytest.raises(ActionFailed, match=r"start vm-2 on test://.*virDomainQemuAgentCommand"):
        hypervisor.start("vm-2")
    assert domain.isActive() and not domain.hasManagedSaveImage(0)
    hypervisor.shutdown("vm-2")
    hypervisor.start("vm-2")  # no save image: a cold boot, no agent needed
    assert domain.isActive()


def test_stopping_a_worker_goes_through_the_guest_agent_of_a_pool_domain_only(tmp_path):
    hypervisor = Hypervisor(node_with_storage(tmp_path), "vm")
    with pytest.raises(ActionFailed, match=r"drain vm-2 on test://.*virDomainQemuAgentCommand"):
        hypervisor.stop_worker("vm-2")
    with pytest.raises(ActionFailed, match=r"refusing to drain vm-9 .*not tagged for pool 'vm'"):
        hypervisor.stop_worker("vm-9")


def test_a_domain_the_scaler_created_is_deleted_and_one_an_operator_defined_is_not(tmp_path, caplog):
    uri = node_with_storage(tmp_path)
    hypervisor = Hypervisor(uri, "vm")
    caplog.set_level("INFO", logger="virtscale.scaler.hypervisor")
    hypervisor.delete("vm-2")
    assert running(hypervisor) == {"vm-1": False, "vm-9": True}, "destroyed and undefined"
    with pytest.raises(ActionFailed, match="refusing to delete vm-1: defined by an operator"):
        hypervisor.delete("vm-1")
    assert running(hypervisor) == {"vm-1": False, "vm-9": True}
    assert f"{uri}: delete vm-2" in [r.getMessage() for r in caplog.records]


def test_a_create_the_host_cannot_complete_is_a_failed_action_that_leaves_nothing(tmp_path):
    uri = node_with_storage(tmp_path)
    hypervisor = Hypervisor(uri, "vm")
    for name in ("rootfs", "kernel", "initrd"):
        (tmp_path / name).write_bytes(b"image")
    made = template_with_image(tmp_path)
    before = running(hypervisor)
    # The test driver stores volumes but takes no upload: the image cannot reach the host.
    with pytest.raises(ActionFailed, match=rf"create vm-5 on {re.escape(uri)}: .*virStorageVolUpload"):
        hypervisor.create("vm-5", made, b"settings", made.tag("a-password"))
    assert running(hypervisor) == before


@pytest.mark.parametrize("name", ["vm-1", "vm-9"])
def test_create_refuses_a_name_any_domain_has(tmp_path, name):
    uri = node_with_storage(tmp_path)
    hypervisor = Hypervisor(uri, "vm")
    before = running(hypervisor)
    with pytest.raises(
        ActionFailed, match=f"refusing to create {name} on {re.escape(uri)}: a domain of that name"
    ):
        hypervisor.create(name, None, b"", None)  # refused before the template is read
    assert running(hypervisor) == before
