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
