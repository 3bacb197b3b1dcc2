import itertools
import random

import pytest

from virtscale.scaler.cpu import CpuWindow
from virtscale.scaler.hypervisor import DomainSample

NS = 1_000_000_000


def sample(at, cpu_seconds, run_id=1, vcpus=2, name="vm-1"):
    return DomainSample(name, "test:///", "running", run_id, int(cpu_seconds * NS), vcpus, at)


def test_percent_is_cpu_time_over_wall_time_and_vcpus():
    window = CpuWindow(30)
    window.add([sample(0, 100)])
    assert window.percent("test:///", "vm-1") is None, "one sample gives no rate"
    window.add([sample(10, 115)])
    assert window.percent("test:///", "vm-1") == pytest.approx(75.0)  # 15 s over 10 s x 2 vCPUs


def test_a_domain_started_mid_window_shows_no_spike_from_its_boot():
    window = CpuWindow(30)
    window.add([sample(0, 5000, run_id=1)])
    # Restarted: a new run whose counter started from zero; the old sample must not count.
    window.add([sample(5, 2, run_id=2)])
    assert window.percent("test:///", "vm-1") is None
    window.add([sample(10, 3, run_id=2)])
    assert window.percent("test:///", "vm-1") == pytest.approx(10.0)


def test_a_counter_going_backwards_never_gives_a_negative_load():
    window = CpuWindow(30)
    window.add([sample(0, 500)])
    window.add([sample(5, 10)])  # same run id, counter reset
    window.add([sample(10, 12)])
    assert window.percent("test:///", "vm-1") == pytest.approx(20.0)


def test_the_window_slides():
    window = CpuWindow(20)
    window.add([sample(0, 0)])
    window.add([sample(10, 20)])  # 100% for the first 10 s
    for at in (20, 30, 40):
        window.add([sample(at, 20)])  # idle afterwards
    assert window.percent("test:///", "vm-1") == pytest.approx(0.0)


def test_shut_off_and_vanished_domains_are_forgotten():
    window = CpuWindow(30)
    window.add([sample(0, 0), sample(0, 0, name="vm-2")])
    window.add([sample(10, 10)])
    assert window.percent("test:///", "vm-2") is None


def reference_percent(samples: list[DomainSample]) -> float | None:
    """The definition, one domain at a time: the length-weighted mean of each interval's
    utilisation, in percent, clipped to 0-100."""
    weighted = total = 0.0
    for before, after in itertools.pairwise(samples):
        interval = after.sampled_at - before.sampled_at
        if interval > 0:
            weighted += (after.cpu_time_ns - before.cpu_time_ns) / 1e9 / after.vcpus
            total += interval
    return None if total <= 0 else min(max(weighted / total * 100.0, 0.0), 100.0)


def test_the_one_pass_over_all_domains_equals_the_definition_for_each():
    rng = random.Random(7)
    window = CpuWindow(30.0)
    kept: dict[str, list[DomainSample]] = {}
    for tick in range(12):
        samples = []
        for index in range(25):
            name = f"vm-{index}"
            history = kept.setdefault(name, [])
            cpu = (history[-1].cpu_time_ns if history else 0) + rng.randrange(0, 4 * 10**9)
            vcpus = rng.choice((1, 2, 4))
            at = tick * 2.0 + rng.choice((0.0, 0.0, 0.5))
            samples.append(DomainSample(name, "test:///x", "running", 1, cpu, vcpus, at))
            history.append(samples[-1])
        window.add(samples)
    for name in kept:
        kept_in_window = list(window._samples[("test:///x", name)])
        assert window.percent("test:///x", name) == pytest.approx(reference_percent(kept_in_window))
        assert window.percent("test:///x", name, last_only=True) == pytest.approx(
            reference_percent(kept_in_window[-2:])
        )
