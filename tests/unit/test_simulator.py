"""The simulator on cases that can be checked by hand, and its determinism."""

import json
from dataclasses import replace

import numpy as np
import pytest

from tests.conftest import run_module
from virtscale import defaults
from virtscale.scaler.policy import Policy, PolicyConfig
from virtscale.scaler.simulator import (
    World,
    arrival_times,
    arrivals_per_second,
    simulate,
    slo_violation_seconds,
)

WORLD = World(vcpus=1, service_time=0.2, boot_delay=30, shutdown_delay=3, interval=5, slo=60, pool_size=4)


def evenly(rate: float, seconds: float) -> np.ndarray:
    """Deterministic arrivals: one every 1/rate seconds."""
    return np.arange(0.0, seconds, 1.0 / rate)


def test_constant_load_below_one_vm_runs_one_vm_without_queueing():
    # 2 jobs/s against one VM that serves 5/s: every job starts on arrival.
    result = simulate(Policy(PolicyConfig(min_vms=1, max_vms=4)), WORLD, evenly(2.0, 600))
    assert result.scale_actions == 0
    assert result.p99 == pytest.approx(0.2)
    assert result.max_backlog == 0
    assert result.vm_seconds == pytest.approx(600, abs=5)
    assert result.work_vm_seconds == pytest.approx(1200 * 0.2)


def test_a_step_above_one_vm_queues_as_computed_by_hand():
    # One VM (max 1) serving 5/s; 10 jobs/s for 20 s. Job i arrives at 0.1 i and starts at 0.2 i,
    # so it waits 0.1 i: latency 0.1 i + 0.2, the last (i = 199) 20.1 s; at t = 20 all 200 have
    # arrived and 100 have started: 100 wait.
    result = simulate(Policy(PolicyConfig(min_vms=1, max_vms=1)), WORLD, evenly(10.0, 20))
    latencies = [0.1 * i + 0.2 for i in range(200)]
    for name, q in (("p50", 50), ("p95", 95), ("p99", 99)):
        assert getattr(result, name) == pytest.approx(np.percentile(latencies, q), abs=0.01)
    assert result.max_backlog == pytest.approx(100, abs=1)
    assert result.slo_violation_seconds == 0
    assert result.scale_actions == 0


def test_a_step_scales_out_after_the_boot_delay():
    arrivals = evenly(12.0, 300)  # needs 3 VMs of 5/s
    result = simulate(Policy(PolicyConfig(min_vms=1, max_vms=4)), WORLD, arrivals)
    assert max(result.series["consuming"]) >= 3
    assert result.slo_violation_seconds == 0


def test_slo_violation_seconds_is_the_union_of_late_intervals():
    arrivals = np.array([0.0, 1.0, 2.0, 50.0])
    starts = np.array([70.0, 75.0, 80.0, 120.0])  # late from 60-70, 61-75, 62-80; 110-120
    assert slo_violation_seconds(arrivals, starts, 60) == pytest.approx(20 + 10)


def test_same_seed_same_result_and_another_seed_differs():
    rate = lambda t: 3.0 + 10.0 * (100 <= t < 300)  # noqa: E731
    first = arrival_times(arrivals_per_second(rate, 600, 5), 5)
    again = arrival_times(arrivals_per_second(rate, 600, 5), 5)
    other = arrival_times(arrivals_per_second(rate, 600, 6), 6)
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    config = PolicyConfig(min_vms=1, max_vms=4)
    assert (
        simulate(Policy(config), WORLD, first).summary() == simulate(Policy(config), WORLD, again).summary()
    )


def test_cli_json_has_the_contract_fields_and_is_deterministic():
    command = [
        "simulate",
        "--profile",
        "spike",
        "--max",
        "6",
        "--json",
        "--seed",
        "3",
    ]
    outputs = [run_module("scaler", *command, check=True).stdout for _ in range(2)]
    assert outputs[0] == outputs[1]
    result = json.loads(outputs[0])
    assert {
        "vm_seconds",
        "work_vm_seconds",
        "efficiency",
        "p50",
        "p95",
        "p99",
        "max_backlog",
        "slo_violation_seconds",
        "scale_actions",
    } <= set(result)


def test_events_file_becomes_a_replayable_trace(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text(
        "\n".join(
            json.dumps({"time": 1000 + 5 * i, "publish_rate": rate})
            for i, rate in enumerate([0.0, 4.0, 8.0, None, 2.0])
        )
        + "\n"
    )
    run = run_module("scaler", "trace", str(events), timeout=60, check=True)
    trace = run.stdout
    # The tick without a rate is no row: 8.0 holds until 20, rather than a made-up 0.
    assert trace.splitlines() == ["time,rate", "0,0.0", "5,4.0", "10,8.0", "20,2.0"]
    warnings = [line for line in run.stderr.splitlines() if "without a publish rate" in line]
    assert len(warnings) == 1 and "1 tick(s)" in warnings[0], run.stderr
    path = tmp_path / "trace.csv"
    path.write_text(trace)
    replay = run_module("scaler", "simulate", "--trace", str(path), "--json", timeout=60, check=True).stdout
    assert json.loads(replay)["load"] == str(path)


def test_an_events_file_without_any_publish_rate_is_refused_with_one_line(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"time": 1000, "publish_rate": None}) + "\n")
    run = run_module("scaler", "trace", str(events), timeout=60)
    assert run.returncode == 2 and "no event has a publish rate" in run.stderr and run.stdout == ""


def test_the_shutdown_delay_default_is_the_documented_one():
    assert World().shutdown_delay == defaults.SIM_SHUTDOWN_DELAY


def test_a_scale_down_costs_the_shutdown_delay_in_vm_seconds():
    # Two idle VMs, one to go: the second is up until the scale-down tick, then drained
    # (nothing in hand) and off one shutdown delay later, on the next tick that sees it.
    config = PolicyConfig(min_vms=1, max_vms=2, scale_down_stabilization=0)
    quick, slow = (replace(WORLD, initial_vms=2, shutdown_delay=delay) for delay in (1.0, 4.0))
    arrivals = evenly(0.1, 100)
    fast_off = simulate(Policy(config), quick, arrivals)
    slow_off = simulate(Policy(config), slow, arrivals)
    assert fast_off.scale_actions == slow_off.scale_actions == 1
    assert slow_off.vm_seconds - fast_off.vm_seconds == pytest.approx(3.0)


# -- the warm pool ---------------------------------------------------------------------------


def spike(seconds: float = 900.0) -> np.ndarray:
    """1 job/s, then 12/s for a minute from t = 600: more than one VM can serve (5/s)."""
    quiet = evenly(1.0, seconds)
    burst = 600.0 + evenly(12.0, 60.0)
    return np.sort(np.concatenate([quiet, burst]))


def test_the_warm_pool_is_filled_then_restored_at_the_restore_delay():
    world = replace(WORLD, warm_boot_delay=2.0, pool_size=6)
    config = PolicyConfig(min_vms=1, max_vms=4, slo=20.0, warm_pool=2)
    result = simulate(Policy(config), world, spike())
    warm = result.series["warm"]
    assert max(warm) == 2, "two VMs booted and saved, no more"
    at_spike = result.series["time"].index(600.0)
    assert warm[at_spike] == 2
    assert min(warm[at_spike:]) < 2, "the spike restored saved VMs"
    assert result.warm_vm_seconds > 0
    cold = simulate(Policy(replace(config, warm_pool=0)), world, spike())
    assert cold.warm_vm_seconds == 0 and max(cold.series["warm"]) == 0
    assert result.p99 < cold.p99, "a restore serves the spike sooner than a boot"


def test_saved_seconds_are_counted_apart_from_running_ones():
    # No load at all: one VM runs throughout, one is booted (30 s), drained and saved (3 s).
    world = replace(WORLD, pool_size=3)
    result = simulate(
        Policy(PolicyConfig(min_vms=1, max_vms=1, warm_pool=1)), world, evenly(0.01, 600), horizon=600
    )
    assert result.vm_seconds == pytest.approx(600 + 30 + 5 + 3, abs=10)
    assert result.warm_vm_seconds == pytest.approx(600 - 40, abs=10)
    assert "warm_vm_seconds" in result.summary()
