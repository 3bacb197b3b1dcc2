"""The libvirt wrapper on the test driver: pool filtering, state, the per-domain CPU fallback."""

from pathlib import Path

import pytest
from virtscale.scaler.hypervisor import ActionFailed, Hypervisor, HypervisorRefused

NODE = Path(__file__).parent.parent / "data" / "pool-node.xml"


def test_only_pool_domains_are_sampled_with_state_and_cpu():
    hypervisor = Hypervisor(f"test://{NODE}", "vm-*")
    samples = {s.name: s for s in hypervisor.sample()}
    assert sorted(samples) == ["vm-1", "vm-2", "vm-3", "vm-4"]
    assert {s.state for s in samples.values()} == {"shutoff"}
    hypervisor.start("vm-2")
    started = {s.name: s for s in hypervisor.sample()}["vm-2"]
    assert started.state == "running"
    assert started.cpu_time_ns is not None and started.vcpus == 2, "filled in by the fallback"


def test_domains_outside_the_pool_are_refused():
    hypervisor = Hypervisor(f"test://{NODE}", "vm-*")
    with pytest.raises(ActionFailed, match="not in pool"):
        hypervisor.destroy("database")


def test_a_uri_libvirt_cannot_open_is_refused():
    with pytest.raises(HypervisorRefused, match="no connection driver"):
        Hypervisor.check_uri("nosuch:///")
