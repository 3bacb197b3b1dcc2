"""The hypervisor's actions on libvirt's test driver: a drained worker's save and its restore
(the guest's clock set, the worker resumed through the guest agent), a scaler-made domain
deleted, and a create refused over a domain of the same name.

The test driver has no QEMU guest agent: GuestAgent stands in for it and keeps each command."""

import json
import logging
import re
import time
from pathlib import Path

import libvirt
import pytest

from tests.support.clock import FakeClock
from tests.support.libvirt_faults import FAULTS, Fault
from tests.support.libvirt_faults import Opener as FaultOpener
from tests.unit.test_placement import make_template
from virtscale.scaler import hypervisor as hypervisor_module
from virtscale.scaler.hypervisor import (
    AGENT_TIMEOUT,
    WORKER_UNIT,
    ActionFailed,
    Hypervisor,
    HypervisorUnavailable,
)
from virtscale.scaler.ownership import FROM_TEMPLATE

NODE = Path(__file__).parent.parent / "data" / "pool-node.xml"
URI = f"test://{NODE}"

AGENT_GONE = Fault(
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE, "Guest agent is not responding: QEMU guest agent is not connected"
)


class GuestAgent:
    """libvirt_qemu.qemuAgentCommand for a test-driver domain: records (domain, command,
    timeout, flags) and answers as guest-exec does, or raises the next of ``failures``."""

    def __init__(self):
        self.commands: list[tuple[str, dict, int, int]] = []
        self.failures: list[Fault] = []

    def __call__(self, domain, command: str, timeout: int, flags: int) -> str:
        self.commands.append((domain.name(), json.loads(command), timeout, flags))
        if self.failures:
            raise self.failures.pop(0).error()
        return json.dumps({"return": {"pid": 1}})


def signal_worker(name: str, signal: str) -> tuple[str, dict, int, int]:
    """The agent command that sends ``signal`` to the guest's worker unit."""
    arguments = {"path": "/bin/systemctl", "arg": ["kill", f"--signal={signal}", WORKER_UNIT]}
    return (name, {"execute": "guest-exec", "arguments": arguments}, AGENT_TIMEOUT, 0)


def resumed_at(command: tuple[str, dict, int, int]) -> float:
    """The host time a restored guest's clock was set to by the agent command that resumes its
    worker (the script itself is run by a shell in tests/unit/test_hypervisor.py)."""
    _name, request, timeout, flags = command
    assert (request["execute"], timeout, flags) == ("guest-exec", AGENT_TIMEOUT, 0)
    path, args = request["arguments"]["path"], request["arguments"]["arg"]
    assert path == "/bin/sh" and args[0] == "-c" and "SIGUSR2" in args[1] and "-USR2" in args[1]
    return float(re.search(r"date -u -s @(\d+\.\d{3}) ", args[1]).group(1))


@pytest.fixture
def agent(monkeypatch) -> GuestAgent:
    recorder = GuestAgent()
    monkeypatch.setattr(hypervisor_module.libvirt_qemu, "qemuAgentCommand", recorder)
    return recorder


def states(hypervisor: Hypervisor) -> dict[str, str]:
    return {s.name: s.state for s in hypervisor.sample()}


def guest_time(hypervisor: Hypervisor, name: str) -> float:
    clock = hypervisor._connect().lookupByName(name).getTime()
    return clock["seconds"] + clock["nseconds"] / 1e9


def test_a_drained_and_saved_vm_restores_with_its_clock_set_and_its_worker_resumed(agent):
    hypervisor = Hypervisor(URI, "vm")
    hypervisor.start("vm-1")
    assert agent.commands == [], "a cold boot: the worker starts with the guest, nothing to resume"
    hypervisor.stop_worker("vm-1")
    assert agent.commands == [signal_worker("vm-1", "SIGUSR1")], "parked: takes no job, keeps none"
    hypervisor.save("vm-1")
    assert states(hypervisor)["vm-1"] == "saved"
    before = time.time()
    hypervisor.start("vm-1")
    after = time.time()
    assert states(hypervisor)["vm-1"] == "running"
    assert len(agent.commands) == 2 and agent.commands[1][0] == "vm-1", "one command: clock, then resume"
    assert before - 0.001 <= resumed_at(agent.commands[1]) <= after + 0.001, "the guest's clock is the host's"
    assert states(hypervisor)["vm-2"] == "shutoff", "only the named domain was acted on"


def test_the_guest_agent_is_waited_for_after_a_restore(agent):
    hypervisor = Hypervisor(URI, "vm")
    hypervisor.start("vm-1")
    hypervisor.save("vm-1")
    agent.failures = [AGENT_GONE, AGENT_GONE]  # the agent reconnects a moment after the restore
    hypervisor.start("vm-1")
    assert len(agent.commands) == 3, "asked again until the agent answered"
    assert resumed_at(agent.commands[2]) >= resumed_at(agent.commands[0]), "the time read afresh"


def test_a_guest_that_refuses_the_command_fails_the_start_and_its_worker_stays_parked(agent):
    hypervisor = Hypervisor(URI, "vm")
    hypervisor.start("vm-1")
    hypervisor.save("vm-1")
    agent.failures = [Fault(libvirt.VIR_ERR_OPERATION_UNSUPPORTED, "Operation not supported: guest-exec")]
    with pytest.raises(ActionFailed, match=r"start vm-1 on test://.*guest-exec"):
        hypervisor.start("vm-1")
    assert len(agent.commands) == 1, "only an absent agent is waited for"


def test_a_domain_the_scaler_created_is_deleted_and_no_other(tmp_path):
    hypervisor = Hypervisor(URI, "vm")
    images = f"<pool type='dir'><name>default</name><target><path>{tmp_path}</path></target></pool>"
    hypervisor._connect().storagePoolCreateXML(images, 0)  # the host's default pool, as on a real one
    hypervisor.tag("vm-2", FROM_TEMPLATE)
    hypervisor.start("vm-2")
    hypervisor.delete("vm-2")
    assert sorted(states(hypervisor)) == ["vm-1", "vm-3", "vm-4"]
    with pytest.raises(libvirt.libvirtError, match="not found"):
        hypervisor._connect().lookupByName("vm-2")


def test_a_create_over_an_existing_domain_is_refused_and_leaves_it_as_it_was(tmp_path):
    hypervisor = Hypervisor(URI, "vm")
    hypervisor.start("vm-1")
    template = make_template(tmp_path)
    with pytest.raises(
        ActionFailed, match=r"refusing to create vm-1 on test://.*a domain of that name exists"
    ):
        hypervisor.create("vm-1", template, b"settings", template.tag("a password"))
    assert states(hypervisor)["vm-1"] == "running"


def test_each_action_says_on_which_host_it_did_what_to_which_domain(agent, caplog):
    hypervisor = Hypervisor(URI, "vm")
    with caplog.at_level(logging.INFO, logger=hypervisor_module.log.name):
        hypervisor.start("vm-1")
        hypervisor.stop_worker("vm-1")
        hypervisor.save("vm-1")
        hypervisor.start("vm-2")
        hypervisor.shutdown("vm-2")
        hypervisor.start("vm-3")
        hypervisor.destroy("vm-3")
    actions = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    expected = [
        "start vm-1",
        "drain vm-1",
        "save vm-1",
        "start vm-2",
        "shutdown vm-2",
        "start vm-3",
        "destroy vm-3",
    ]
    assert actions == [f"{URI}: {action}" for action in expected]


def test_a_lost_connection_is_logged_with_what_lost_it(monkeypatch, caplog):
    opener = FaultOpener(URI)
    monkeypatch.setattr(hypervisor_module.libvirt, "open", opener)
    hypervisor = Hypervisor(URI, "vm")
    hypervisor.sample()
    opener.connection.faults["getAllDomainStats"] = FAULTS["system-error"]
    with (
        caplog.at_level(logging.WARNING, logger=hypervisor_module.log.name),
        pytest.raises(HypervisorUnavailable),
    ):
        hypervisor.sample()
    assert [r.getMessage() for r in caplog.records] == [f"{URI}: sampling: {FAULTS['system-error'].message}"]


def test_a_connection_closed_under_the_hypervisor_is_reopened(caplog):
    hypervisor = Hypervisor(URI, "vm")
    hypervisor.sample()
    hypervisor._connect().close()  # isAlive on it now raises: libvirt's invalid connection
    with caplog.at_level(logging.WARNING, logger=hypervisor_module.log.name):
        assert len(hypervisor.sample()) == 4
    assert hypervisor.connections == 2
    assert [r.getMessage() for r in caplog.records] == [f"{URI}: connection to libvirtd lost"]


def test_a_dropped_connection_is_closed_not_leaked():
    hypervisor = Hypervisor(URI, "vm")
    dropped = hypervisor._connect()
    hypervisor._drop("test: connection lost")
    assert not hypervisor_module._alive(dropped)
    assert hypervisor._connect() is not dropped


def test_the_first_open_after_an_outage_is_logged(monkeypatch, caplog):
    opener = FaultOpener(URI)
    monkeypatch.setattr(hypervisor_module.libvirt, "open", opener)
    clock = FakeClock()
    hypervisor = Hypervisor(URI, "vm", clock=clock)
    opener.down = True
    with pytest.raises(HypervisorUnavailable):
        hypervisor.sample()
    opener.down = False
    clock.now = hypervisor.next_attempt
    with caplog.at_level(logging.INFO, logger=hypervisor_module.log.name):
        hypervisor.sample()
        hypervisor.sample()
    assert [r.getMessage() for r in caplog.records] == [f"{URI}: reconnected to libvirtd"], "once"


def test_a_save_image_that_cannot_be_looked_up_means_a_cold_boot(agent, monkeypatch):
    opener = FaultOpener(URI)
    monkeypatch.setattr(hypervisor_module.libvirt, "open", opener)
    hypervisor = Hypervisor(URI, "vm")
    hypervisor.sample()
    opener.connection.faults["hasManagedSaveImage"] = FAULTS["internal-error"]
    hypervisor.start("vm-1")
    assert states(hypervisor)["vm-1"] == "running"
    assert agent.commands == [], "no restore: no worker to resume"
