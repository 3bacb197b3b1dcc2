"""The warm pool in the default policy: saved VMs restored before any is booted or created,
scale-in saving while the pool has room, the pool kept full within the disks' room, and the
backlog planned with the delay of the VM it will get. A fake clock (Observation.now)."""

from __future__ import annotations

from virtscale.scaler.policy import (
    CREATE,
    DESTROY,
    SAVE,
    SAVED,
    SHUTDOWN,
    START,
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
    boot_timeout=60,
    drain_timeout=20,
    warm_pool=2,
)


def vms(ready=(), booting=(), off=(), saved=(), cpu=5.0):
    found = [VmView(name, "running", cpu, True, cpu) for name in ready]
    found += [VmView(name, "running", None, False) for name in booting]
    found += [VmView(name, "shutoff") for name in off]
    found += [VmView(name, SAVED) for name in saved]
    return tuple(found)


def observe(now, pool, depth=0, **extra):
    return Observation(now=now, depth=depth, arrival_rate=0.0, ack_rate=0.0, vms=pool, **extra)


def actions(decision):
    return [(a.domain, a.action) for a in decision.actions]


def test_a_scale_out_restores_saved_vms_before_booting_or_creating_any():
    policy = Policy(CONFIG)
    pool = vms(ready=["vm-1"], off=["vm-2"], saved=["vm-3", "vm-4"])
    decision = policy.decide(observe(0, pool, depth=500, room=2, new_names=("vm-5", "vm-6")))
    assert actions(decision) == [("vm-3", START), ("vm-4", START), ("vm-2", START)]


def test_a_scale_out_without_saved_vms_boots_then_creates():
    policy = Policy(CONFIG)
    pool = vms(ready=["vm-1"], off=["vm-2"])
    decision = policy.decide(observe(0, pool, depth=500, room=2, new_names=("vm-5", "vm-6")))
    assert actions(decision) == [("vm-2", START), ("vm-5", CREATE), ("vm-6", CREATE)]


def scale_in(policy, pool, **extra):
    """Ticks of an idle queue until the stabilization window lets a VM go."""
    for now in range(0, 80, 10):
        decision = policy.decide(observe(now, pool, **extra))
        if decision.actions:
            return decision
    raise AssertionError("no scale-in")


def test_scale_in_saves_while_the_warm_pool_has_room():
    decision = scale_in(Policy(CONFIG), vms(ready=["vm-1", "vm-2"], saved=["vm-3"]))
    assert actions(decision) == [("vm-2", SAVE)]
    assert "save vm-2 into the warm pool" in decision.reason


def test_scale_in_shuts_down_once_the_warm_pool_is_full():
    decision = scale_in(Policy(CONFIG), vms(ready=["vm-1", "vm-2"], saved=["vm-3", "vm-4"]))
    assert actions(decision) == [("vm-2", SHUTDOWN)]


def test_without_a_warm_pool_scale_in_shuts_down():
    policy = Policy(PolicyConfig(**{**CONFIG.__dict__, "warm_pool": 0}))
    assert actions(scale_in(policy, vms(ready=["vm-1", "vm-2"]))) == [("vm-2", SHUTDOWN)]


def test_the_warm_pool_is_filled_one_vm_at_a_time_booted_then_saved():
    policy = Policy(CONFIG)
    first = policy.decide(observe(0, vms(ready=["vm-1"], off=["vm-2", "vm-3", "vm-4"])))
    assert actions(first) == [("vm-2", START)]
    assert first.desired == 1, "a warming VM is not capacity"
    booting = policy.decide(observe(10, vms(ready=["vm-1"], booting=["vm-2"], off=["vm-3", "vm-4"])))
    assert actions(booting) == [], "one at a time"
    consumed = policy.decide(observe(20, vms(ready=["vm-1", "vm-2"], off=["vm-3", "vm-4"])))
    assert actions(consumed) == [("vm-2", SAVE)]
    assert consumed.signals["ready"] == 1
    # The saving VM's worker has left the queue: it is neither failed nor counted.
    parked = VmView("vm-2", "running", 5.0, False)
    saving = policy.decide(observe(35, (*vms(ready=["vm-1"], off=["vm-3", "vm-4"]), parked)))
    assert actions(saving) == []
    saved = policy.decide(observe(45, vms(ready=["vm-1"], off=["vm-3", "vm-4"], saved=["vm-2"])))
    assert actions(saved) == [("vm-3", START)]
    assert saved.signals["warm"] == 1 and saved.signals["warm_target"] == 2, "as the tick found it"


def test_the_warm_pool_is_filled_by_creating_when_no_domain_is_shut_off():
    policy = Policy(CONFIG)
    decision = policy.decide(observe(0, vms(ready=["vm-1"]), room=1, new_names=("vm-2",)))
    assert actions(decision) == [("vm-2", CREATE)]


def test_a_full_warm_pool_starts_nothing():
    policy = Policy(CONFIG)
    decision = policy.decide(observe(0, vms(ready=["vm-1"], off=["vm-4"], saved=["vm-2", "vm-3"])))
    assert actions(decision) == []


def test_a_host_without_disk_room_keeps_a_smaller_warm_pool_and_says_so():
    policy = Policy(CONFIG)
    pool = vms(ready=["vm-1", "vm-2"], off=["vm-4"], saved=["vm-3"])
    note = "qemu:///system: 900 MiB free for 1024 MiB save images"
    decision = policy.decide(observe(0, pool, save_room=0, save_room_note=note))
    assert actions(decision) == [], "no fill without room"
    assert "warm pool 1 of 2: no disk room for more save images" in decision.reason
    assert note in decision.reason
    assert decision.signals["warm_target"] == 1
    assert actions(scale_in(policy, pool, save_room=0)) == [("vm-2", SHUTDOWN)]


def test_a_save_that_never_ends_is_destroyed_after_twice_the_drain_timeout():
    policy = Policy(CONFIG)
    scale_in(policy, vms(ready=["vm-1", "vm-2"], saved=["vm-3"]))
    parked = VmView("vm-2", "running", 5.0, False)
    pool = (*vms(ready=["vm-1"], saved=["vm-3"]), parked)
    assert actions(policy.decide(observe(100, pool))) == []
    assert ("vm-2", DESTROY) in actions(policy.decide(observe(120, pool)))


def learned_rate_policy(config):
    """A policy that knows a VM hashes 10 jobs/s (set as learned, the unit under test being the
    backlog's drain time)."""
    policy = Policy(config)
    policy.per_vm_rate = 10.0
    return policy


def backlog(decision):
    return decision.signals["recommendations"]["backlog"]


def test_the_backlog_is_planned_with_the_restore_delay_when_a_saved_vm_is_there():
    config = PolicyConfig(**{**CONFIG.__dict__, "slo": 20.0, "warm_boot_delay": 2.0, "cold_boot_delay": 30.0})
    # 16 s to drain in (80% of the SLO) at 10 jobs/s a VM: the ready VM clears 160 of 480 jobs;
    # a restored VM works 16 - 2 = 14 s, 140 jobs: 320 more need 3 of them.
    warm = learned_rate_policy(config).decide(observe(0, vms(ready=["vm-1"], saved=["vm-2"]), depth=480))
    assert warm.signals["boot_delay"] == 2.0
    assert backlog(warm) == 4
    # A 30 s boot ends after the 16 s: planned with the least drain time, 2 s (20 jobs a VM).
    cold = learned_rate_policy(config).decide(observe(0, vms(ready=["vm-1"], off=["vm-2"]), depth=480))
    assert cold.signals["boot_delay"] == 30.0
    assert backlog(cold) == 1 + 16
    # What the ready VMs clear in time needs no new VM, whatever a boot takes.
    enough = learned_rate_policy(config).decide(observe(0, vms(ready=["vm-1"], off=["vm-2"]), depth=150))
    assert backlog(enough) == 1


def test_boot_and_restore_delays_are_learned_apart():
    policy = Policy(CONFIG)
    policy.decide(observe(0, vms(ready=["vm-1"], off=["vm-2"], saved=["vm-3"]), depth=200))
    policy.decide(observe(5, vms(ready=["vm-1", "vm-3"], booting=["vm-2"]), depth=200))
    assert policy.learned_delay == {"warm": 5.0, "cold": None}
    policy.decide(observe(35, vms(ready=["vm-1", "vm-2", "vm-3"]), depth=200))
    assert policy.learned_delay == {"warm": 5.0, "cold": 35.0}


def test_an_untaken_save_is_forgotten():
    policy = Policy(CONFIG)
    pool = vms(ready=["vm-1", "vm-2"], saved=["vm-3"])
    for now in range(0, 80, 10):
        before = policy.bookkeeping()
        decision = policy.decide(observe(now, pool))
        if decision.actions:
            break
    assert actions(decision) == [("vm-2", SAVE)]
    policy.forget(decision.actions, before)
    assert policy.saving == {}
