"""A standby's policy: it reads the pool every tick like a leader, but keeps no bookkeeping of the
actions it did not take, so that it takes over with the pool as it is. And the lease's clocks."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.unit.test_policy import CONFIG, actions, observe, pool
from tests.unit.test_policy_fleet import CONFIG as FLEET_CONFIG
from tests.unit.test_policy_fleet import observe as fleet_observe
from tests.unit.test_policy_fleet import ready as fleet_ready
from virtscale import defaults
from virtscale.scaler.leadership import Leadership, LeaseTiming
from virtscale.scaler.policy import CREATE, DESTROY, SHUTDOWN, START, Policy


def follow(policy: Policy, observation):
    """A standby's tick: decide, then forget every action (none is taken)."""
    before = policy.bookkeeping()
    decision = policy.decide(observation)
    policy.forget(decision.actions, before)
    return decision


def test_a_start_a_standby_did_not_make_leaves_no_boot_behind():
    policy = Policy(CONFIG)
    decision = follow(policy, observe(0, pool(ready=["vm-1"], off=["vm-2", "vm-3", "vm-4"]), depth=150))
    assert actions(decision) == [("vm-2", START), ("vm-3", START)]
    assert policy.booting == {} and policy.last_scale_up == float("-inf")
    # Nobody started them: still off a tick later, which is no failed boot.
    later = follow(policy, observe(5, pool(ready=["vm-1"], off=["vm-2", "vm-3", "vm-4"]), depth=150))
    assert policy.failed == {} and "stopped before it consumed" not in later.reason


def test_a_crash_a_standby_saw_stays_failed_and_the_starts_after_it_are_forgotten():
    policy = Policy(CONFIG)
    decision = follow(
        policy, observe(0, pool(ready=["vm-1"], off=["vm-3", "vm-4"], **{"vm-2": "crashed"}), depth=150)
    )
    assert actions(decision)[0] == ("vm-2", DESTROY) and ("vm-3", START) in actions(decision)
    assert policy.failed == {"vm-2": 0}, "what the pool showed"
    assert policy.booting == {} and policy.last_scale_up == float("-inf"), "what it did not do"


def test_a_refresh_a_standby_did_not_start_leaves_no_surge_behind():
    policy = Policy(FLEET_CONFIG)
    stale = [fleet_ready("vm-1", stale=True), fleet_ready("vm-2", stale=True)]
    decision = follow(policy, fleet_observe(0, stale, depth=100))
    assert actions(decision) == [("vm-3", CREATE)]
    assert policy.refresh_surge is None and policy.booting == {}


def test_a_standby_times_a_boot_from_when_it_first_saw_it_and_keeps_that_deadline_when_it_leads():
    policy = Policy(CONFIG)  # boot_timeout 30
    follow(policy, observe(0, pool(ready=["vm-1"], off=["vm-2", "vm-3", "vm-4"]), depth=60))
    # The leader started vm-2 between two ticks; the standby sees it booting from t=5 on.
    for now in (5, 10, 15):
        follow(policy, observe(now, pool(ready=["vm-1"], booting=["vm-2"], off=["vm-3", "vm-4"]), depth=60))
    assert policy.booting == {"vm-2": 5}
    # The leader is gone: from t=20 this policy decides and its actions are taken.
    vms = pool(ready=["vm-1"], booting=["vm-2"], off=["vm-3", "vm-4"])
    assert actions(policy.decide(observe(20, vms, depth=60))) == [], "vm-2 counts: nothing started twice"
    assert actions(policy.decide(observe(34, vms, depth=60))) == []
    assert actions(policy.decide(observe(35, vms, depth=60)))[0] == ("vm-2", DESTROY), "5 + 30 s, not 20 + 30"


def test_a_shutdown_not_taken_leaves_a_booting_vm_booting_and_nothing_draining():
    config = replace(CONFIG, scale_down_stabilization=10)  # a dip that counts before the boot timeout
    policy = Policy(config)
    idle = pool(ready=["vm-1"], booting=["vm-2"], off=["vm-3", "vm-4"], cpu=10.0)
    policy.decide(observe(0, idle, depth=0))
    assert policy.booting == {"vm-2": 0}
    decision = follow(policy, observe(config.scale_down_stabilization + 1, idle, depth=0))
    assert actions(decision) == [("vm-2", SHUTDOWN)]
    assert policy.booting == {"vm-2": 0} and policy.draining == {}


def test_a_destroy_not_taken_leaves_the_drain_clock_and_a_boot_timeout_still_fails_the_vm():
    policy = Policy(CONFIG)  # drain_timeout 20, boot_timeout 30
    policy.draining["vm-3"] = 0
    policy.booting["vm-2"] = 0
    decision = follow(policy, observe(30, pool(ready=["vm-1", "vm-3"], booting=["vm-2"]), depth=0))
    assert sorted(actions(decision)) == [("vm-2", DESTROY), ("vm-3", DESTROY)]
    assert policy.draining == {"vm-3": 0}, "the drain clock as it was: the destroy was not taken"
    assert "vm-2" in policy.failed, "vm-2 did not consume in time, whoever destroys it"
    assert decision.signals["failed_vms"] == ["vm-2"]
    later = follow(policy, observe(35, pool(ready=["vm-1", "vm-3"], booting=["vm-2"]), depth=0))
    assert later.signals["failed_vms"] == [], "declared failed once, not again every tick"


@pytest.mark.parametrize(
    ("timing", "problem"),
    [
        (LeaseTiming(heartbeat=2, validity=3.0, action_margin=1.0), "under two heartbeats"),
        (LeaseTiming(heartbeat=5, validity=1.0, check_interval=1.0), "would let a 1 s validity lapse"),
    ],
)
def test_lease_clocks_that_could_let_two_scalers_act_are_refused(timing, problem):
    assert any(problem in found for found in timing.problems())
    with pytest.raises(ValueError, match=problem):
        Leadership("amqp://127.0.0.1/%2F", "jobs", "vm", timing=timing)


def test_the_default_lease_clocks_are_safe_and_take_over_within_a_tick():
    timing = LeaseTiming()
    assert timing.problems() == []
    assert timing.takeover_wait + timing.probe_interval < defaults.SCALER_INTERVAL


def test_a_check_confirmed_after_stop_starts_no_new_term():
    """stop() clears the lease at once; a reply to a check already sent must not bring it back."""
    lease = Leadership("amqp://127.0.0.1/%2F", "jobs", "vm")
    lease.stop()
    lease._confirmed(lease.clock())
    assert lease.term() is None and not lease._holding
