import itertools
import random
import warnings

import pytest

from virtscale.scaler.cpu import CpuWindow
from virtscale.scaler.hypervisor import DomainSample

NS = 1_000_000_000


def sample(at, cpu_seconds, run_id=1, vcpus=2, name="vm-1"):
    return DomainSample(name, "test:///", "running", run_id, int(cpu_seconds * NS), vcpus, at)


def shut_off(at, name="vm-1"):
    return DomainSample(name, "test:///", "shutoff", -1, None, 1, at)


def percent(window, name="vm-1", **last_only):
    return window.percent("test:///", name, **last_only)


def fed(window_seconds, *samples) -> CpuWindow:
    """A window fed one tick per sample."""
    window = CpuWindow(window_seconds)
    for each in samples:
        window.add([each])
    return window


def test_percent_is_cpu_time_over_wall_time_and_vcpus():
    window = fed(30, sample(0, 100))
    assert percent(window) is None, "one sample gives no rate"
    window.add([sample(10, 115)])
    assert percent(window) == 75.0  # 15 s over 10 s x 2 vCPUs, exactly


def test_a_domain_restarted_mid_window_shows_no_spike_from_its_previous_run():
    # The new run's counter reads higher than the old one's last sample: only the run id tells
    # that the 5000 s before belong to another run (the original counted them as load).
    window = fed(30, sample(0, 10, run_id=1), sample(5, 5000, run_id=2))
    assert percent(window) is None
    window.add([sample(10, 5001, run_id=2)])
    assert percent(window) == 10.0


def test_a_counter_going_backwards_never_gives_a_negative_load():
    window = fed(30, sample(0, 500), sample(5, 10))  # same run id, counter reset
    assert percent(window) is None
    window.add([sample(10, 12)])
    assert percent(window) == pytest.approx(20.0)


def test_the_window_slides():
    window = fed(20, sample(0, 0), sample(10, 20))  # 100% for the first 10 s
    for at in (20, 30, 40):
        window.add([sample(at, 20)])  # idle afterwards
    assert percent(window) == pytest.approx(0.0)


def test_the_window_holds_the_intervals_of_its_length_and_last_only_the_newest():
    # 10%, 30% and 50% over three 10 s intervals (one vCPU), at clock times far from 0.
    window = fed(20, *(sample(100 + 10 * i, cpu, vcpus=1) for i, cpu in enumerate((0, 1, 4, 9))))
    assert percent(window) == pytest.approx(40.0), "the last 20 s: (30 + 50) / 2"
    assert percent(window, last_only=True) == pytest.approx(50.0)


def test_two_samples_a_window_apart_still_give_a_figure():
    window = fed(5, sample(0, 0, vcpus=1), sample(60, 30, vcpus=1))
    assert percent(window) == pytest.approx(50.0)
    window.add([sample(120, 30, vcpus=1)])
    assert percent(window) == pytest.approx(0.0), "only the last interval: the one before is past"


def test_the_mean_is_weighted_by_time():
    # 100% for 10 s, then 10% for 30 s: 32.5% over the 40 s, not the 55% of an unweighted mean.
    window = fed(60, sample(0, 0, vcpus=1), sample(10, 10, vcpus=1), sample(40, 13, vcpus=1))
    assert percent(window) == pytest.approx(32.5)


def test_sub_second_intervals_count():
    window = fed(30, sample(0, 0, vcpus=1), sample(0.5, 0.25, vcpus=1))
    assert percent(window) == pytest.approx(50.0)


def test_samples_at_one_time_give_no_figure_and_a_repeated_time_adds_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no numpy warning on the scaler's stderr every tick
        window = fed(30, sample(7, 1), sample(7, 1))
        assert percent(window) is None, "no time has passed"
        assert percent(window, last_only=True) is None
    # The counter moved between two samples stamped with the same time (a coarse clock): CPU
    # time in no wall time is not load, or the figure would say 60 %.
    window = fed(30, sample(0, 0, vcpus=1), sample(10, 5, vcpus=1), sample(10, 6, vcpus=1))
    assert percent(window) == pytest.approx(50.0)


def test_a_window_asked_before_any_sample_knows_nothing():
    assert percent(CpuWindow(30)) is None
    assert percent(CpuWindow(30), last_only=True) is None


def test_a_reading_beyond_the_vcpus_is_capped_at_100():
    # vCPUs went from 4 to 1 between the samples: the counter grew by more than one vCPU can.
    window = fed(30, sample(0, 0, vcpus=4), sample(10, 40, vcpus=1))
    assert percent(window) == 100.0


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
    window = fed(30)
    window.add([sample(0, 0), sample(0, 0, name="vm-2"), sample(0, 0, name="vm-3")])
    window.add([sample(10, 10), sample(10, 10, name="vm-2"), sample(10, 10, name="vm-3")])
    assert percent(window, "vm-2") == pytest.approx(50.0)
    # vm-2 shut off (listed first: the domains after it are still taken in), vm-3 vanished.
    window.add([shut_off(20, name="vm-2"), sample(20, 20)])
    assert percent(window, "vm-2") is None
    assert percent(window, "vm-3") is None
    assert percent(window) == pytest.approx(50.0)
    # Back again: measured from their new samples only.
    window.add([sample(30, 30), sample(30, 100, name="vm-2"), sample(30, 100, name="vm-3")])
    window.add([sample(40, 40), sample(40, 101, name="vm-2"), sample(40, 101, name="vm-3")])
    assert percent(window, "vm-2") == pytest.approx(5.0)
    assert percent(window, "vm-3") == pytest.approx(5.0)
