"""The default policy, table-driven with a fake clock (Observation.now)."""

from __future__ import annotations

import pytest

from virtscale.scaler.baselines import HpaCpuPolicy, KedaPolicy, OriginalPolicy
from virtscale.scaler.policy import (
    ARRIVAL_SMOOTHING,
    DESTROY,
    LOST,
    SHUTDOWN,
    START,
    UNKNOWN,
    Observation,
    Policy,
    PolicyConfig,
    VmView,
)

CONFIG = PolicyConfig(
    min_vms=1,
    max_vms=4,
    target_backlog=50,
    scale_up_cooldown=10,
    scale_down_stabilization=60,
    boot_timeout=30,
    drain_timeout=20,
    idle_to_zero=100,
)


def pool(ready=(), booting=(), off=(), cpu=50.0, **states):
    """VmViews: ready = running and consuming, booting = running not consuming, off = shut off."""
    vms = [VmView(name, "running", cpu, True, cpu) for name in ready]
    vms += [VmView(name, "running", None, False) for name in booting]
    vms += [VmView(name, "shutoff") for name in off]
    vms += [VmView(name, state) for name, state in states.items()]
    return tuple(vms)


def observe(now, vms, depth=0, arrival=0.0, ack=0.0, **extra):
    return Observation(now=now, depth=depth, arrival_rate=arrival, ack_rate=ack, vms=vms, **extra)


def actions(decision):
    return [(a.domain, a.action) for a in decision.actions]


def test_backlog_starts_vms_up_to_max_in_one_tick():
    policy = Policy(CONFIG)
    decision = policy.decide(observe(0, pool(ready=["vm-1"], off=["vm-2", "vm-3", "vm-4"]), depth=500))
    assert actions(decision) == [("vm-2", START), ("vm-3", START), ("vm-4", START)]
    assert decision.desired == 4
    assert "\n" not in decision.reason and "backlog 10" in decision.reason


def test_booting_vms_count_as_capacity():
    policy = Policy(CONFIG)
    policy.decide(observe(0, pool(ready=["vm-1"], off=["vm-2", "vm-3", "vm-4"]), depth=150))
    later = policy.decide(
        observe(15, pool(ready=["vm-1"], booting=["vm-2", "vm-3"], off=["vm-4"]), depth=150)
    )
    assert actions(later) == []
    assert later.signals["booting_vms"] == ["vm-2", "vm-3"], "the view shows these as booting"


def test_start_is_capped_at_four_or_double():
    config = PolicyConfig(max_vms=20, target_backlog=1, scale_up_cooldown=0)
    names = [f"vm-{i}" for i in range(1, 21)]
    policy = Policy(config)
    first = policy.decide(observe(0, pool(ready=names[:1], off=names[1:]), depth=1000))
    assert len(first.actions) == 4
    second = Policy(config).decide(observe(0, pool(ready=names[:6], off=names[6:]), depth=1000))
    assert len(second.actions) == 6


def test_a_vm_that_never_consumes_is_failed_and_another_tried():
    policy = Policy(CONFIG)
    policy.decide(observe(0, pool(ready=["vm-1"], off=["vm-2", "vm-3"]), depth=80))
    waiting = policy.decide(observe(29, pool(ready=["vm-1"], booting=["vm-2"], off=["vm-3"]), depth=80))
    assert actions(waiting) == []
    timed_out = policy.decide(observe(30, pool(ready=["vm-1"], booting=["vm-2"], off=["vm-3"]), depth=80))
    assert ("vm-2", DESTROY) in actions(timed_out)
    assert ("vm-3", START) in actions(timed_out)
    assert "vm-2 not consuming" in timed_out.reason


def test_scale_down_waits_for_stabilization_then_removes_the_idlest_one_per_tick():
    policy = Policy(CONFIG)
    busy = (
        VmView("vm-1", "running", 90.0, True),
        VmView("vm-2", "running", 5.0, True),
        VmView("vm-3", "running", 5.0, True),
    )
    policy.decide(observe(0, busy, depth=140))
    for now in range(10, 60, 10):
        assert actions(policy.decide(observe(now, busy, depth=0))) == [], now
    down = policy.decide(observe(61, busy, depth=0))
    assert actions(down) == [("vm-3", SHUTDOWN)], "idlest, highest-numbered first"
    idle = (
        VmView("vm-1", "running", 10.0, True),
        VmView("vm-2", "running", 5.0, True),
        VmView("vm-3", "shutting-down"),
    )
    assert actions(policy.decide(observe(62, idle, depth=0))) == [], "each step down waits its window"
    later = actions(policy.decide(observe(122, idle, depth=0)))
    assert later == [("vm-3", DESTROY), ("vm-2", SHUTDOWN)], "vm-3 overstayed its drain timeout"


@pytest.mark.parametrize("missing", [dict(depth=None), dict(degraded=True)])
def test_missing_metrics_never_scale_down(missing):
    policy = Policy(CONFIG)
    vms = pool(ready=["vm-1", "vm-2", "vm-3"], cpu=1.0)
    fields = {"depth": 0, **missing}
    for now in range(0, 600, 10):
        decision = policy.decide(observe(now, vms, **fields))
        assert actions(decision) == []
    assert "no scale-down" in decision.reason


def test_flapping_load_does_not_start_and_stop_every_tick():
    policy = Policy(CONFIG)
    names = ["vm-1", "vm-2", "vm-3", "vm-4"]
    running = {"vm-1"}
    log = []
    for tick in range(120):
        depth = 60 if tick % 2 else 40  # around the 50-per-VM threshold
        vms = pool(ready=sorted(running), off=[n for n in names if n not in running], cpu=50.0)
        decision = policy.decide(observe(tick * 5, vms, depth=depth))
        for action in decision.actions:
            log.append((tick, action.domain, action.action))
            if action.action == START:
                running.add(action.domain)
            else:
                running.discard(action.domain)
    assert log == [(1, "vm-2", START)], "one scale-up, then steady"


def test_min_and_max_are_respected():
    policy = Policy(PolicyConfig(min_vms=2, max_vms=3, target_backlog=10, scale_up_cooldown=0))
    up = policy.decide(observe(0, pool(off=["vm-1", "vm-2", "vm-3", "vm-4"]), depth=0))
    assert [a.domain for a in up.actions] == ["vm-1", "vm-2"]
    capped = Policy(PolicyConfig(max_vms=3, target_backlog=10)).decide(
        observe(0, pool(ready=["vm-1"], off=["vm-2", "vm-3", "vm-4"]), depth=10_000)
    )
    assert len(capped.actions) == 2


def test_scale_to_zero_after_idle_and_back_up_on_work():
    policy = Policy(PolicyConfig(min_vms=0, max_vms=2, scale_down_stabilization=10, idle_to_zero=100))
    vms = pool(ready=["vm-1"], off=["vm-2"], cpu=0.0)
    assert actions(policy.decide(observe(0, vms))) == []
    assert actions(policy.decide(observe(50, vms))) == []
    assert actions(policy.decide(observe(101, vms))) == [("vm-1", SHUTDOWN)]
    empty = pool(off=["vm-1", "vm-2"])
    assert actions(policy.decide(observe(130, empty))) == []
    assert actions(policy.decide(observe(140, empty, depth=3))) == [("vm-1", START)]


def test_min_zero_does_not_boot_a_vm_for_an_idle_queue():
    policy = Policy(PolicyConfig(min_vms=0))
    assert actions(policy.decide(observe(0, pool(off=["vm-1"])))) == []


def test_crashed_domain_is_destroyed_and_draining_one_destroyed_after_timeout():
    policy = Policy(CONFIG)
    crashed = policy.decide(observe(0, pool(ready=["vm-1"], **{"vm-2": "crashed"})))
    assert ("vm-2", DESTROY) in actions(crashed)
    policy.draining["vm-3"] = 0.0
    early = policy.decide(observe(19, pool(ready=["vm-1", "vm-3"])))
    assert ("vm-3", DESTROY) not in actions(early)
    late = policy.decide(observe(20, pool(ready=["vm-1", "vm-3"])))
    assert ("vm-3", DESTROY) in actions(late)


def test_the_decision_names_the_domains_that_failed_in_its_tick_only():
    policy = Policy(CONFIG)
    assert policy.decide(observe(0, pool(ready=["vm-1"], **{"vm-2": "crashed"}))).signals["failed_vms"] == [
        "vm-2"
    ]
    assert policy.decide(observe(5, pool(ready=["vm-1"], off=["vm-2"]))).signals["failed_vms"] == []
    policy.booting["vm-3"] = 5.0
    timed_out = policy.decide(observe(35, pool(ready=["vm-1"], booting=["vm-3"], off=["vm-2"])))
    assert timed_out.signals["failed_vms"] == ["vm-3"], "not consuming within the boot timeout"
    policy.draining["vm-1"] = 35.0
    overstayed = policy.decide(observe(55, pool(ready=["vm-1"], off=["vm-2", "vm-3"])))
    assert ("vm-1", DESTROY) in actions(overstayed) and overstayed.signals["failed_vms"] == [], (
        "a slow drain is destroyed, not a failed VM"
    )


def test_cpu_rule_adds_a_vm_when_hot():
    policy = Policy(CONFIG)
    decision = policy.decide(observe(0, pool(ready=["vm-1"], off=["vm-2"], cpu=95.0), depth=10))
    assert actions(decision) == [("vm-2", START)]
    assert "cpu 2" in decision.reason


def test_throughput_signal_uses_the_learned_per_vm_rate():
    policy = Policy(CONFIG)
    vms = pool(ready=["vm-1"], off=["vm-2", "vm-3", "vm-4"], cpu=50.0)
    first = policy.decide(observe(0, vms, depth=0, arrival=25.0, ack=5.0))
    assert policy.per_vm_rate == pytest.approx(10.0), "5 acks/s at half its CPU: 10/s when busy"
    # 25 jobs/s keep floor(25 / 10) = 2 VMs busy; the CPU rule is silent once the rate is known.
    assert first.signals["recommendations"]["throughput"] == 2
    assert first.signals["recommendations"]["cpu"] is None
    assert actions(first) == [("vm-2", START)]


def test_scale_up_cooldown():
    policy = Policy(CONFIG)
    policy.decide(observe(0, pool(ready=["vm-1"], off=["vm-2", "vm-3"]), depth=60))
    soon = policy.decide(observe(5, pool(ready=["vm-1", "vm-2"], off=["vm-3"]), depth=200))
    assert actions(soon) == [] and "cooldown" in soon.reason
    later = policy.decide(observe(10, pool(ready=["vm-1", "vm-2"], off=["vm-3"]), depth=200))
    assert actions(later) == [("vm-3", START)]


def test_failed_domain_is_not_retried_at_once():
    policy = Policy(CONFIG)
    policy.failed["vm-2"] = 0.0
    decision = policy.decide(observe(1, pool(ready=["vm-1"], off=["vm-2", "vm-3"]), depth=80))
    assert actions(decision) == [("vm-3", START)]


def test_unknown_consumers_do_not_fail_booting_vms():
    policy = Policy(CONFIG)
    policy.booting["vm-2"] = 0.0
    decision = policy.decide(
        observe(100, pool(ready=["vm-1"], booting=["vm-2"]), depth=0, consumers_known=False, degraded=True)
    )
    assert ("vm-2", DESTROY) not in actions(decision)


def test_an_unseen_booting_vm_is_neither_failed_nor_stopped_and_counts_within_its_boot_timeout():
    policy = Policy(CONFIG)
    policy.decide(observe(0, pool(ready=["vm-1"], off=["vm-2"]), depth=80))
    assert policy.booting == {"vm-2": 0}
    unseen = (VmView("vm-1", UNKNOWN, consuming=True), VmView("vm-2", UNKNOWN))
    decision = policy.decide(observe(10, unseen, depth=80, degraded=True))
    assert actions(decision) == [] and "stopped" not in decision.reason
    assert policy.booting == {"vm-2": 0} and policy.failed == {}
    assert (decision.signals["ready"], decision.signals["booting"]) == (1, 1), "consuming + coming"
    late = policy.decide(observe(30, unseen, depth=80, degraded=True))
    assert late.signals["booting"] == 0, "past its boot timeout an unseen VM holds no capacity"
    assert actions(late) == [] and policy.failed == {}, "and still nothing is concluded"
    back = policy.decide(observe(31, pool(ready=["vm-1"], booting=["vm-2"]), depth=80))
    assert ("vm-2", DESTROY) in actions(back), "seen again, not consuming: its timeout applies"


def test_an_unseen_draining_vm_is_kept_draining_and_not_destroyed_blind():
    policy = Policy(CONFIG)
    policy.draining["vm-3"] = 0.0
    unseen = (*pool(ready=["vm-1"]), VmView("vm-3", UNKNOWN))
    assert actions(policy.decide(observe(50, unseen, degraded=True))) == []
    assert policy.draining == {"vm-3": 0.0}
    assert ("vm-3", DESTROY) in actions(policy.decide(observe(51, pool(ready=["vm-1", "vm-3"]))))


def test_an_unseen_vm_blocks_scale_down_even_on_a_tick_not_marked_degraded():
    policy = Policy(PolicyConfig(min_vms=1, scale_down_stabilization=0))
    vms = (*pool(ready=["vm-1", "vm-2"], cpu=1.0), VmView("vm-3", UNKNOWN, consuming=True))
    for now in range(0, 100, 10):
        decision = policy.decide(observe(now, vms))
        assert actions(decision) == [], decision.reason
    assert "no scale-down" in decision.reason


def test_a_dip_seen_only_on_incomplete_ticks_does_not_count_towards_the_window():
    policy = Policy(CONFIG)  # scale_down_stabilization 60
    vms = pool(ready=["vm-1", "vm-2"], cpu=1.0)
    for now in range(0, 70, 10):  # 60 s with no depth and no consumer list
        blind = policy.decide(observe(now, vms, depth=None, consumers_known=False, degraded=True))
        assert actions(blind) == [], (now, blind.reason)
    for now in range(70, 130, 10):
        assert actions(policy.decide(observe(now, vms))) == [], f"the dip was seen from 70 only, at {now}"
    assert actions(policy.decide(observe(130, vms))) == [("vm-2", SHUTDOWN)], "a whole complete window"


def test_the_boot_clock_stops_while_the_consumer_list_is_missing():
    policy = Policy(CONFIG)  # boot_timeout 30
    policy.decide(observe(0, pool(ready=["vm-1"], off=["vm-2"]), depth=80))
    vms = pool(ready=["vm-1"], booting=["vm-2"])
    policy.decide(observe(10, vms, depth=80))
    for now in (20, 30, 40):  # 30 s without the consumer list: they do not count
        unknown = policy.decide(observe(now, vms, depth=80, consumers_known=False, degraded=True))
        assert ("vm-2", DESTROY) not in actions(unknown)
    assert ("vm-2", DESTROY) not in actions(policy.decide(observe(59, vms, depth=80)))
    assert ("vm-2", DESTROY) in actions(policy.decide(observe(60, vms, depth=80))), "30 s counted"


@pytest.mark.parametrize("blind", [dict(degraded=True), dict(depth=None), dict(consumers_known=False)])
def test_the_idle_to_zero_clock_does_not_run_on_a_partial_reading(blind):
    config = PolicyConfig(min_vms=0, max_vms=2, scale_down_stabilization=10, idle_to_zero=100)
    policy = Policy(config)
    vms = pool(ready=["vm-1"], off=["vm-2"], cpu=0.0)
    fields = {"depth": 0, **blind}
    if "consumers_known" in blind:
        fields["degraded"] = True  # the loop marks a tick without the consumer list degraded
    for now in range(0, 300, 10):
        decision = policy.decide(observe(now, vms, **fields))
        assert actions(decision) == [], (now, decision.reason)
    assert policy.idle_since is None
    policy.decide(observe(300, vms))
    assert actions(policy.decide(observe(399, vms))) == [], "the idle clock started afresh at 300"
    assert policy.decide(observe(400, vms)).signals["ready"] == 1
    assert actions(policy.decide(observe(410, vms))) == [("vm-1", SHUTDOWN)], "idle 100 s, stable 10 s"


def test_a_partial_reading_of_an_empty_queue_starts_no_vm_in_a_pool_at_zero():
    policy = Policy(PolicyConfig(min_vms=0, max_vms=2))
    idle = pool(off=["vm-1", "vm-2"])
    assert actions(policy.decide(observe(0, idle, depth=0, degraded=True))) == []
    assert actions(policy.decide(observe(5, idle, depth=40, degraded=True))) == [("vm-1", START)], (
        "the ready count alone still asks for VMs"
    )


def test_impossible_configuration_is_reported():
    assert PolicyConfig(min_vms=5, max_vms=2).problems() == ["--min 5 is more than --max 2"]
    assert PolicyConfig(cpu_low=80, cpu_high=80).problems() == ["--cpu-low 80 must be below --cpu-high 80"]
    assert PolicyConfig(drain_fraction=0).problems() == ["drain fraction 0 must be in (0, 1]"]
    assert PolicyConfig(drain_fraction=1.5).problems() == ["drain fraction 1.5 must be in (0, 1]"]


@pytest.mark.parametrize(
    "config",
    [
        PolicyConfig(min_vms=3, max_vms=3),
        PolicyConfig(cpu_low=79.5, cpu_high=80),
        PolicyConfig(drain_fraction=1),
        PolicyConfig(drain_fraction=0.01),
    ],
    ids=["min-equal-to-max", "cpu-low-just-below-high", "drain-all-of-the-slo", "drain-a-sliver"],
)
def test_a_configuration_at_the_edge_of_the_possible_is_accepted(config):
    assert config.problems() == []


def test_a_failed_vm_is_left_alone_for_failed_retry_after_then_tried_again():
    policy = Policy(CONFIG)  # failed_retry_after 600
    crashed = policy.decide(observe(10_000, pool(ready=["vm-1"], **{"vm-2": "crashed"})))
    assert crashed.signals["failed_vms"] == ["vm-2"]
    only_vm_2 = pool(ready=["vm-1"], off=["vm-2"])
    for now in (10_001, 10_300, 10_599.9):
        assert actions(policy.decide(observe(now, only_vm_2, depth=80))) == [], now
    retried = policy.decide(observe(10_600, only_vm_2, depth=80))
    assert actions(retried) == [("vm-2", START)], retried.reason


def test_a_fresh_policy_waits_a_full_window_before_removing_running_vms():
    policy = Policy(CONFIG)
    vms = pool(ready=["vm-1", "vm-2"], cpu=1.0)
    assert actions(policy.decide(observe(0, vms))) == []
    assert actions(policy.decide(observe(59, vms))) == []
    assert actions(policy.decide(observe(61, vms))) == [("vm-2", SHUTDOWN)]


def test_recommend_changes_no_state_and_repeats_its_answer():
    policy = Policy(CONFIG)
    vms = pool(ready=["vm-1"], off=["vm-2", "vm-3", "vm-4"], cpu=50.0)
    policy.decide(observe(0, vms, arrival=0.0, ack=5.0))  # learns 10/s per VM, arrivals 0/s
    ready = [vm for vm in vms if vm.consuming]
    state = dict(vars(policy))
    obs = observe(5, vms, arrival=25.0)
    first = policy.recommend(obs, ready, 1)
    assert policy.recommend(obs, ready, 1) == first
    assert vars(policy) == state
    assert policy.arrival_rate == 0.0 and first["throughput"] == 0


def test_decide_smooths_arrivals_before_recommend():
    policy = Policy(CONFIG)
    vms = pool(ready=["vm-1"], off=["vm-2", "vm-3", "vm-4"], cpu=50.0)
    policy.decide(observe(0, vms, arrival=0.0, ack=5.0))
    decision = policy.decide(observe(5, vms, arrival=40.0, ack=5.0))
    assert policy.arrival_rate == pytest.approx(ARRIVAL_SMOOTHING * 40.0)
    assert decision.signals["recommendations"]["throughput"] == 1, "floor(12 / 10), not floor(40 / 10)"


@pytest.mark.parametrize(
    "make",
    [
        lambda config: KedaPolicy(config, slo=60, service_time=0.5, vcpus=1),
        HpaCpuPolicy,
        OriginalPolicy,
    ],
    ids=["keda", "hpa-cpu", "original"],
)
def test_baselines_keep_the_smoothed_arrival_rate(make):
    policy = make(CONFIG)
    vms = pool(ready=["vm-1"], off=["vm-2"], cpu=50.0)
    policy.decide(observe(0, vms, arrival=10.0))
    policy.decide(observe(5, vms, arrival=20.0))
    assert policy.arrival_rate == pytest.approx(0.7 * 10.0 + 0.3 * 20.0)


def test_the_original_decides_once_per_window_and_recommend_changes_nothing():
    policy = OriginalPolicy(CONFIG)
    hot = pool(ready=["vm-1"], off=["vm-2", "vm-3"], cpu=95.0)
    ready = [vm for vm in hot if vm.consuming]
    first = policy.decide(observe(0, hot))
    assert actions(first) == [("vm-2", START)]
    obs = observe(0, hot)
    assert policy.recommend(obs, ready, 1) == policy.recommend(obs, ready, 1) == {"cpu": 2}
    hot = pool(ready=["vm-1", "vm-2"], off=["vm-3"], cpu=95.0)
    assert actions(policy.decide(observe(29, hot))) == [], "within its 30 s window"
    assert actions(policy.decide(observe(30, hot))) == [("vm-3", START)]


def test_a_vm_booting_on_a_host_given_up_as_lost_is_neither_capacity_nor_acted_on():
    policy = Policy(PolicyConfig(min_vms=1, max_vms=4, boot_timeout=60))
    vms = (VmView("vm-1", "running", 50.0, True), VmView("vm-2", "running", None, False))
    policy.decide(Observation(now=0.0, depth=500, arrival_rate=0.0, ack_rate=1.0, vms=vms))
    assert "vm-2" in policy.booting
    lost = (vms[0], VmView("vm-2", LOST))
    decision = policy.decide(Observation(now=100.0, depth=500, arrival_rate=0.0, ack_rate=1.0, vms=lost))
    assert "vm-2" not in policy.booting
    assert all(action.domain != "vm-2" for action in decision.actions), decision.actions
    assert decision.signals["booting"] == 0
