"""The policy over a fleet, table-driven with a fake clock (Observation.now): domains created
from the template within the room the hosts have, on-demand domains deleted when done with,
LOST VMs of an unreachable host, and the refresh of VMs on an old image."""

from __future__ import annotations

import pytest

from virtscale.scaler.policy import (
    CREATE,
    DELETE,
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
    scale_up_cooldown=0,
    scale_down_stabilization=30,
    boot_timeout=60,
    drain_timeout=20,
    failed_retry_after=600,
)

#: What the fleet offers when nothing limits it.
NAMES = tuple(f"vm-{i}" for i in range(1, 30))


def ready(name, cpu=50.0, **flags):
    """Running and consuming; at 50% CPU the CPU rule holds the count, at 10% it wants one fewer."""
    return VmView(name, "running", cpu, True, cpu, **flags)


def booting(name, **flags):
    return VmView(name, "running", None, False, **flags)


def off(name, **flags):
    return VmView(name, "shutoff", **flags)


def observe(now, vms, depth=0, room=10, names=NAMES, note="", **extra):
    """An observation; the fleet's names leave out those of the listed VMs, as the scaler's do."""
    taken = {vm.name for vm in vms}
    free = tuple(name for name in names if name not in taken)
    return Observation(
        now=now,
        depth=depth,
        arrival_rate=0.0,
        ack_rate=0.0,
        vms=tuple(vms),
        room=room,
        new_names=free,
        room_note=note,
        **extra,
    )


def actions(decision, *kinds):
    return [(a.domain, a.action) for a in decision.actions if not kinds or a.action in kinds]


# -- creating --------------------------------------------------------------------------------


def test_shut_off_domains_are_started_first_then_new_ones_created():
    policy = Policy(CONFIG)
    decision = policy.decide(observe(0, [ready("vm-1"), off("vm-2")], depth=500))
    assert actions(decision) == [("vm-2", START), ("vm-3", CREATE), ("vm-4", CREATE)]
    assert decision.desired == 4
    assert decision.signals["booting"] == 0, "counted from the next tick, when libvirt lists them"


def test_creations_never_exceed_the_room_and_the_reason_says_why():
    policy = Policy(CONFIG)
    note = "no host has room (qemu+ssh://b/system at its cap (2/2))"
    decision = policy.decide(observe(0, [ready("vm-1")], depth=500, room=1, note=note))
    assert actions(decision) == [("vm-2", CREATE)]
    assert f"only 1 of 3 more VM(s) available: {note}" in decision.reason


def test_without_room_nothing_is_created():
    decision = Policy(CONFIG).decide(observe(0, [ready("vm-1")], depth=500, room=0, note="x"))
    assert actions(decision) == []


def test_without_a_template_only_defined_domains_start_and_the_reason_says_so():
    decision = Policy(CONFIG).decide(observe(0, [ready("vm-1"), off("vm-2")], depth=500, room=0, names=()))
    assert actions(decision) == [("vm-2", START)]
    assert "only 1 of 3 more VM(s) available: no shut-off domain and no template" in decision.reason


def test_created_domains_count_as_coming_capacity():
    policy = Policy(CONFIG)
    policy.decide(observe(0, [ready("vm-1")], depth=500))
    later = policy.decide(
        observe(5, [ready("vm-1"), *(booting(f"vm-{i}", on_demand=True) for i in (2, 3, 4))], depth=500)
    )
    assert actions(later) == [] and later.desired == 4


def test_new_names_skip_those_the_policy_still_holds():
    policy = Policy(CONFIG)
    policy.decide(observe(0, [ready("vm-1")], depth=100))  # creates vm-2
    # vm-2 never came up (its create failed): it is failed, and its name is not used again while
    # the policy remembers it, even though the fleet offers it.
    decision = policy.decide(observe(1, [ready("vm-1")], depth=100, names=NAMES))
    assert "vm-2 stopped before it consumed" in decision.reason
    assert actions(decision) == [("vm-3", CREATE)]


@pytest.mark.parametrize(
    "vm",
    [VmView("vm-2", UNKNOWN), VmView("vm-2", LOST), off("vm-2", on_demand=True), booting("vm-2")],
    ids=["unknown", "lost", "off-on-demand", "booting"],
)
def test_a_name_in_the_pool_is_never_given_to_a_new_domain(vm):
    policy = Policy(CONFIG)
    decision = policy.decide(
        Observation(0, 500, 0.0, 0.0, (ready("vm-1"), vm), room=1, new_names=("vm-2", "vm-3", "vm-4"))
    )
    assert actions(decision, CREATE) == [("vm-3", CREATE)]


# -- deleting what was created on demand -----------------------------------------------------


def test_an_on_demand_domain_that_is_shut_off_is_deleted_and_never_started():
    policy = Policy(CONFIG)
    decision = policy.decide(observe(0, [ready("vm-1"), off("vm-2", on_demand=True)], depth=150))
    assert actions(decision) == [("vm-2", DELETE), ("vm-3", CREATE), ("vm-4", CREATE)]


def test_a_defined_domain_that_is_shut_off_is_kept():
    policy = Policy(CONFIG)
    for now in range(0, 200, 10):
        decision = policy.decide(observe(now, [ready("vm-1"), off("vm-2")], depth=0))
        assert actions(decision, DELETE) == []


def test_a_drained_on_demand_domain_is_deleted_after_its_shutdown():
    policy = Policy(CONFIG)
    vms = [ready("vm-1", cpu=10), ready("vm-2", cpu=10, on_demand=True)]
    shutdowns = []
    for now in range(0, 100, 10):
        shutdowns += actions(policy.decide(observe(now, vms, depth=0)), SHUTDOWN)
        if shutdowns:
            break
    assert shutdowns == [("vm-2", SHUTDOWN)]
    decision = policy.decide(observe(now + 5, [ready("vm-1", cpu=10), off("vm-2", on_demand=True)], depth=0))
    assert actions(decision) == [("vm-2", DELETE)]
    assert "vm-2" not in policy.draining


def test_an_on_demand_domain_that_fails_its_boot_is_destroyed_deleted_and_replaced():
    policy = Policy(CONFIG)
    policy.decide(observe(0, [ready("vm-1")], depth=100))  # creates vm-2
    waiting = policy.decide(observe(59, [ready("vm-1"), booting("vm-2", on_demand=True)], depth=100))
    assert actions(waiting) == []
    failed = policy.decide(observe(60, [ready("vm-1"), booting("vm-2", on_demand=True)], depth=100))
    assert actions(failed) == [("vm-2", DESTROY), ("vm-3", CREATE)], "the capacity is replaced at once"
    assert failed.signals["failed_vms"] == ["vm-2"]
    gone = policy.decide(
        observe(61, [ready("vm-1"), off("vm-2", on_demand=True), booting("vm-3", on_demand=True)], depth=100)
    )
    assert actions(gone) == [("vm-2", DELETE)]


def test_an_on_demand_domain_that_crashed_is_destroyed_then_deleted():
    policy = Policy(CONFIG)
    crashed = policy.decide(observe(0, [ready("vm-1"), VmView("vm-2", "crashed", on_demand=True)], depth=100))
    assert ("vm-2", DESTROY) in actions(crashed)
    later = policy.decide(observe(1, [ready("vm-1"), off("vm-2", on_demand=True)], depth=100))
    assert ("vm-2", DELETE) in actions(later)


# -- a host given up as lost -----------------------------------------------------------------


def test_lost_vms_are_not_capacity_and_are_replaced():
    policy = Policy(CONFIG)
    decision = policy.decide(
        observe(0, [ready("vm-1"), VmView("vm-2", LOST), VmView("vm-3", LOST)], depth=150, room=5)
    )
    assert actions(decision) == [("vm-4", CREATE), ("vm-5", CREATE)]
    assert decision.signals["ready"] == 1


def test_lost_vms_do_not_block_a_scale_down_and_are_never_acted_on():
    policy = Policy(CONFIG)
    vms = [ready("vm-1", cpu=10), ready("vm-2", cpu=10), ready("vm-3", cpu=10), VmView("vm-4", LOST)]
    acted = []
    for now in range(0, 300, 10):
        acted += actions(policy.decide(observe(now, vms, depth=0)))
    assert acted[0] == ("vm-3", SHUTDOWN)
    assert [a for a in acted if a[0] == "vm-4"] == []


def test_a_vm_that_was_booting_when_its_host_was_lost_is_not_coming_capacity():
    policy = Policy(CONFIG)
    policy.decide(observe(0, [ready("vm-1")], depth=100))  # creates vm-2
    policy.decide(observe(5, [ready("vm-1"), booting("vm-2", on_demand=True)], depth=100))
    # vm-2's host stops answering: UNKNOWN through the grace, coming capacity within its boot time.
    unknown = policy.decide(observe(10, [ready("vm-1"), VmView("vm-2", UNKNOWN)], depth=100, degraded=True))
    assert actions(unknown) == []
    lost = policy.decide(observe(20, [ready("vm-1"), VmView("vm-2", LOST)], depth=100))
    assert actions(lost) == [("vm-3", CREATE)], "a lost VM is no capacity, booting or not"
    assert lost.signals["booting_vms"] == []


def test_a_lost_vm_is_never_destroyed_when_its_boot_or_drain_time_runs_out():
    policy = Policy(CONFIG)
    policy.decide(observe(0, [ready("vm-1")], depth=100))  # creates vm-2
    policy.decide(observe(5, [ready("vm-1"), booting("vm-2", on_demand=True)], depth=100))
    acted = []
    for now in range(10, 300, 10):
        acted += actions(policy.decide(observe(now, [ready("vm-1"), VmView("vm-2", LOST)], depth=100)))
    assert [a for a in acted if a[0] == "vm-2"] == []


def test_a_lost_vm_that_was_draining_is_not_destroyed_blind():
    policy = Policy(CONFIG)
    vms = [ready("vm-1", cpu=10), ready("vm-2", cpu=10)]
    shutdown_at = next(now for now in range(0, 100, 10) if actions(policy.decide(observe(now, vms, depth=0))))
    assert policy.draining == {"vm-2": shutdown_at}
    acted = []
    for later in range(shutdown_at + 10, shutdown_at + 200, 10):
        acted += actions(
            policy.decide(observe(later, [ready("vm-1", cpu=10), VmView("vm-2", LOST)], depth=0))
        )
    assert [a for a in acted if a[0] == "vm-2"] == []


def test_when_a_lost_host_returns_its_vms_count_again_and_the_surplus_drains():
    policy = Policy(CONFIG)
    policy.decide(observe(0, [ready("vm-1"), VmView("vm-2", LOST)], depth=100))  # creates vm-3
    policy.decide(
        observe(10, [ready("vm-1"), VmView("vm-2", LOST), ready("vm-3", on_demand=True)], depth=100)
    )
    back = [ready("vm-1", cpu=10), ready("vm-2", cpu=10), ready("vm-3", cpu=10, on_demand=True)]
    acted = []
    for now in range(20, 100, 10):
        decision = policy.decide(observe(now, back, depth=100))
        acted += actions(decision)
        if acted:
            break
    assert decision.signals["ready"] == 3
    assert acted == [("vm-3", SHUTDOWN)]


# -- refresh: VMs on an old image replaced one at a time ----------------------------------------


def test_a_refresh_replaces_stale_vms_one_at_a_time_never_below_the_count():
    policy = Policy(CONFIG)
    pool = {"vm-1": ready("vm-1", stale=True), "vm-2": ready("vm-2", stale=True, on_demand=True)}
    log = []
    for now in range(0, 600, 10):
        decision = policy.decide(observe(now, list(pool.values()), depth=100))  # wants 2
        up = [vm for vm in pool.values() if vm.consuming and vm.name not in policy.draining]
        assert len(up) >= 2, f"below the count at {now}: {decision.reason}"
        for domain, action in actions(decision):
            log.append((now, domain, action))
            if action == CREATE:
                pool[domain] = booting(domain, on_demand=True)
            elif action == SHUTDOWN:
                pool[domain] = off(domain, on_demand=pool[domain].on_demand, stale=True)
            elif action == DELETE:
                del pool[domain]
        # A VM created in an earlier tick has booted by now.
        for name, vm in pool.items():
            if vm.state == "running" and not vm.consuming and all(t < now for t, d, _a in log if d == name):
                pool[name] = ready(name, on_demand=True)
        if not any(vm.stale and vm.state == "running" for vm in pool.values()):
            break
    steps = [(domain, action) for _now, domain, action in log]
    assert steps == [
        ("vm-3", CREATE),
        ("vm-2", SHUTDOWN),
        ("vm-2", DELETE),
        ("vm-2", CREATE),
        ("vm-1", SHUTDOWN),
    ]
    running = sorted(name for name, vm in pool.items() if vm.state == "running")
    assert running == ["vm-2", "vm-3"] and not any(pool[name].stale for name in running)
    assert pool["vm-1"].state == "shutoff", "the defined one is kept, shut off"


def test_the_stale_vm_drains_only_after_the_new_one_consumes():
    policy = Policy(CONFIG)
    stale = [ready("vm-1", stale=True), ready("vm-2", stale=True)]
    assert actions(policy.decide(observe(0, stale, depth=100))) == [("vm-3", CREATE)]
    for now in range(10, 60, 10):
        decision = policy.decide(observe(now, [*stale, booting("vm-3", on_demand=True)], depth=100))
        assert actions(decision) == [], decision.reason
        assert decision.desired == 2 and decision.signals["booting"] == 1
    decision = policy.decide(observe(60, [*stale, ready("vm-3", on_demand=True)], depth=100))
    assert actions(decision) == [("vm-2", SHUTDOWN)]


def test_a_refresh_surge_that_fails_is_replaced_and_no_stale_vm_drains_meanwhile():
    policy = Policy(CONFIG)
    stale = [ready("vm-1", stale=True), ready("vm-2", stale=True)]
    policy.decide(observe(0, stale, depth=100))  # creates vm-3
    failed = policy.decide(observe(60, [*stale, booting("vm-3", on_demand=True)], depth=100))
    assert actions(failed) == [("vm-3", DESTROY)]
    gone = policy.decide(observe(61, [*stale, off("vm-3", on_demand=True)], depth=100))
    assert actions(gone) == [("vm-3", DELETE)]
    again = policy.decide(observe(70, stale, depth=100))
    assert actions(again) == [("vm-3", CREATE)], "a fresh domain: the failed one is deleted, its name free"


def test_a_refresh_waits_for_room_and_for_a_complete_tick():
    policy = Policy(CONFIG)
    stale = [ready("vm-1", stale=True), ready("vm-2", stale=True)]
    waiting = policy.decide(observe(0, stale, depth=100, room=0))
    assert actions(waiting) == [] and "refresh of 2 VM(s) on an old image waits for room" in waiting.reason
    degraded = policy.decide(observe(10, stale, depth=100, degraded=True))
    assert actions(degraded) == []
    assert actions(policy.decide(observe(20, stale, depth=100))) == [("vm-3", CREATE)]


def test_a_stale_defined_domain_is_not_started():
    decision = Policy(CONFIG).decide(observe(0, [ready("vm-1"), off("vm-2", stale=True)], depth=100))
    assert actions(decision) == [("vm-3", CREATE)]


def test_a_scale_down_takes_a_stale_vm_first():
    policy = Policy(CONFIG)
    vms = [ready("vm-1", cpu=10, stale=True), ready("vm-2", cpu=10), ready("vm-3", cpu=10)]
    shutdowns = []
    for now in range(0, 100, 10):
        shutdowns += actions(policy.decide(observe(now, vms, depth=0)), SHUTDOWN)
        if shutdowns:
            break
    assert shutdowns == [("vm-1", SHUTDOWN)]
