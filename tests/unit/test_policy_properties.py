"""Properties of the scaling policy over random configurations and random runs of ticks.

A run is a small world of pool domains: each tick the world changes some domains on its own
(a crash, a guest that stops consuming, one started by hand...), the observation may leave
domains out and lose signals, the policy decides, and its actions take effect unless the tick
says they were lost (a guest that ignores the ACPI shutdown, a start that never happened).
Whatever happens, every decision must keep the invariants checked in ``check_decision``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from virtscale.scaler.baselines import HpaCpuPolicy, KedaPolicy, OriginalPolicy
from virtscale.scaler.policy import (
    DESTROY,
    SHUTDOWN,
    START,
    UNKNOWN,
    Decision,
    Observation,
    Policy,
    PolicyConfig,
    VmView,
)

#: Reproducible in CI (derandomize), no example database written into the tree, no timing.
PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, database=None)

#: The states a pool domain is drawn from (libvirt's, or UNKNOWN: not listed this tick),
#: repeated by how common they are (an UNKNOWN domain blocks every scale-down, so it must be
#: rare for runs to reach one); running first, so examples shrink to it.
STATES = ("running",) * 4 + ("shutoff",) * 3 + ("shutting-down", "paused", "crashed", UNKNOWN)

#: States of a domain that may be up: it counts, or may count, as capacity.
ALIVE = frozenset({"running", "paused", "shutting-down", UNKNOWN})

POLICIES = {
    "default": Policy,
    "original": OriginalPolicy,
    "keda": lambda config: KedaPolicy(config, slo=config.slo, service_time=1.0, vcpus=2),
    "hpa-cpu": HpaCpuPolicy,
}


@dataclass(frozen=True)
class Tick:
    #: Seconds since the previous tick.
    step: float
    #: Domains the world changed on its own since the previous tick.
    changes: tuple[VmView, ...] = ()
    #: Pool domains this observation leaves out.
    hidden: frozenset[str] = frozenset()
    depth: int | None = 0
    arrival_rate: float | None = 0.0
    ack_rate: float | None = 0.0
    degraded: bool = False
    consumers_known: bool = True
    #: Indexes of this tick's actions that take no effect in the world.
    lost: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Run:
    config: PolicyConfig
    pool: tuple[VmView, ...]
    ticks: tuple[Tick, ...]


# -- strategies ------------------------------------------------------------------------


def mostly(usual: st.SearchStrategy, rare: st.SearchStrategy) -> st.SearchStrategy:
    """``usual`` three times in four: a missing signal on every other tick would block most
    scale-downs, and the invariants about them would rarely be put to the test."""
    return st.one_of(usual, usual, usual, rare)


percentages = st.floats(0, 100, allow_nan=False)
#: Jobs per second: tiny ones too (a learned rate near zero makes huge quotients).
rates = mostly(st.floats(0, 100, allow_nan=False), st.none())


@st.composite
def configs(draw) -> PolicyConfig:
    min_vms = draw(st.integers(0, 3))
    cpu_low = draw(st.integers(0, 95))
    return PolicyConfig(
        min_vms=min_vms,
        max_vms=draw(st.integers(min_vms, 6)),
        slo=draw(st.integers(1, 120)),
        target_backlog=draw(st.integers(1, 100)),
        cpu_low=cpu_low,
        cpu_high=draw(st.integers(cpu_low + 1, 100)),
        scale_up_cooldown=draw(st.integers(0, 30)),
        scale_down_stabilization=draw(st.integers(0, 60)),
        boot_timeout=draw(st.integers(1, 120)),
        drain_timeout=draw(st.integers(1, 60)),
        idle_to_zero=draw(st.integers(0, 300)),
        max_start_per_tick=draw(st.integers(1, 4)),
        max_start_percent=draw(st.sampled_from([100.0, 0.0, 50.0, 200.0])),
        failed_retry_after=draw(st.integers(0, 600)),
        cpu_settle=draw(st.integers(0, 60)),
    )


def vm_views(names: list[str]) -> st.SearchStrategy[VmView]:
    return st.builds(
        VmView,
        name=st.sampled_from(names),
        state=st.sampled_from(STATES),
        cpu=mostly(percentages, st.none()),
        consuming=st.booleans(),
        cpu_recent=mostly(percentages, st.none()),
    )


def ticks(names: list[str]) -> st.SearchStrategy[Tick]:
    return st.builds(
        Tick,
        step=st.floats(0.1, 60, allow_nan=False),
        changes=st.lists(vm_views(names), max_size=3).map(tuple) if names else st.just(()),
        hidden=st.frozensets(st.sampled_from(names), max_size=2) if names else st.just(frozenset()),
        depth=mostly(st.integers(0, 2000), st.none()),
        arrival_rate=rates,
        ack_rate=rates,
        degraded=mostly(st.just(False), st.just(True)),
        consumers_known=mostly(st.just(True), st.just(False)),
        lost=st.frozensets(st.integers(0, 5), max_size=3),
    )


@st.composite
def runs(draw) -> Run:
    names = [f"vm-{number}" for number in range(1, draw(st.integers(0, 6)) + 1)]
    pool = tuple(draw(vm_views([name])) for name in names)
    return Run(draw(configs()), pool, tuple(draw(st.lists(ticks(names), min_size=1, max_size=20))))


# -- the world -------------------------------------------------------------------------


def apply(world: dict[str, VmView], action_index: int, domain: str, action: str, tick: Tick) -> None:
    """An action's effect on the world, unless the tick lost it."""
    if action_index in tick.lost:
        return
    vm = world[domain]
    if action == START:
        world[domain] = VmView(domain, "running", None, False)
    elif action == SHUTDOWN:
        world[domain] = replace(vm, state="shutting-down", consuming=False)
    elif action == DESTROY:
        world[domain] = VmView(domain, "shutoff")


def play(run: Run, make_policy, check) -> None:
    """Drive a policy through the run; ``check(config, obs, decision, draining)`` every tick.

    ``draining`` mirrors, from the outside, the domains the policy has told to shut down that
    were seen neither shut off nor absent since (destroyed or not): the ones a DESTROY may
    finish off, and that are no longer capacity."""
    policy = make_policy(run.config)
    world = {vm.name: vm for vm in run.pool}
    draining: set[str] = set()
    now = 0.0
    for tick in run.ticks:
        now += tick.step
        world.update({vm.name: vm for vm in tick.changes})
        vms = tuple(vm for name, vm in world.items() if name not in tick.hidden)
        obs = Observation(
            now=now,
            depth=tick.depth,
            arrival_rate=tick.arrival_rate,
            ack_rate=tick.ack_rate,
            vms=vms,
            consumers_known=tick.consumers_known,
            degraded=tick.degraded,
        )
        present = {vm.name: vm for vm in vms}
        draining = {name for name in draining if name in present and present[name].state != "shutoff"}
        decision = policy.decide(obs)
        check(run.config, obs, decision, frozenset(draining))
        for index, action in enumerate(decision.actions):
            if action.action == SHUTDOWN:
                draining.add(action.domain)
            apply(world, index, action.domain, action.action, tick)


# -- the invariants --------------------------------------------------------------------


def current_of(decision: Decision) -> int:
    """The VMs the policy counted as capacity this tick: ready plus booting."""
    return decision.signals["ready"] + decision.signals["booting"]


def named(decision: Decision, kind: str) -> list[str]:
    return [action.domain for action in decision.actions if action.action == kind]


def check_decision(config: PolicyConfig, obs: Observation, decision: Decision, draining: frozenset) -> None:
    """The invariants every decision keeps, whatever the observation."""
    current = current_of(decision)
    starts, shutdowns, destroys = (named(decision, kind) for kind in (START, SHUTDOWN, DESTROY))
    vms = {vm.name: vm for vm in obs.vms}

    # (c) Actions name only domains of this observation (checked first: the rest look them up).
    assert {action.domain for action in decision.actions} <= vms.keys()

    # (a) The target stays in [min, max]. Above max only to hold VMs already counted (more than
    # --max running, started by hand or before --max was lowered): the policy then removes
    # them one per tick, or holds them on a degraded tick, but never grows the pool.
    assert decision.desired >= config.min_vms
    assert decision.desired <= max(config.max_vms, current)
    if decision.desired > config.max_vms:
        assert decision.desired <= current and not starts
    assert len(starts) <= max(0, config.max_vms - current), "never starts past --max"

    # (b) No scale-down on a missing signal: a degraded tick, no depth, or a domain libvirt did
    # not list (UNKNOWN). A DESTROY is not a scale-down: it only finishes a crashed domain, one
    # shut down earlier that outlived the drain timeout, or one that is not consuming-and-running
    # while the consumer list is known (a failed boot). Nothing is done to an UNKNOWN domain.
    if obs.degraded or obs.depth is None or any(vm.state == UNKNOWN for vm in obs.vms):
        assert not shutdowns
    assert all(vms[action.domain].state != UNKNOWN for action in decision.actions)
    for domain in destroys:
        vm = vms[domain]
        assert (
            vm.state == "crashed"
            or domain in draining
            or (obs.consumers_known and not (vm.state == "running" and vm.consuming))
        ), f"{domain} ({vm}) destroyed, yet neither crashed, draining nor failed to boot"

    # (d) Starts per tick are capped at the larger of the count and the percentage of current.
    assert len(starts) <= max(config.max_start_per_tick, math.floor(current * config.max_start_percent / 100))

    # (e) Only shut-off domains are started, each once.
    assert all(vms[domain].state == "shutoff" for domain in starts)
    assert len(set(starts)) == len(starts)

    assert len(shutdowns) <= 1, "one VM per tick at most goes"
    assert "\n" not in decision.reason


def check_capacity(config: PolicyConfig, obs: Observation, decision: Decision, draining: frozenset) -> None:
    """Each domain counts once and is acted on once a tick, and a scale-down leaves --min up."""
    up = {vm.name for vm in obs.vms if vm.state in ALIVE and vm.name not in draining}
    assert current_of(decision) <= len(up), f"counts {decision.signals} of {sorted(up)} up"
    domains = [action.domain for action in decision.actions]
    assert len(set(domains)) == len(domains), f"a domain acted on twice: {decision.actions}"
    if named(decision, SHUTDOWN):
        left = up - set(domains)
        assert len(left) >= config.min_vms, f"scale-down leaves {sorted(left)}, below --min {config.min_vms}"


# -- the tests -------------------------------------------------------------------------


def busy(*cpus: float) -> tuple[VmView, ...]:
    return tuple(VmView(f"vm-{n}", "running", cpu, True, cpu) for n, cpu in enumerate(cpus, 1))


#: Three ready VMs, --min 2: vm-3 is told to shut down but keeps running and consuming (its
#: SHUTDOWN is lost). At the drain timeout the policy destroys vm-3; it must not count vm-3 as
#: ready in that tick, or it shuts down the idlest other VM, vm-1, too: only vm-2 would be
#: left, below --min 2. (Were vm-3 the idlest, it would get both DESTROY and SHUTDOWN.)
DRAIN_TIMEOUT_RUN = Run(
    PolicyConfig(min_vms=2, max_vms=4, scale_down_stabilization=0, drain_timeout=20),
    busy(10, 10, 10),
    (Tick(step=0), Tick(step=5, lost=frozenset({0})), Tick(step=20, changes=busy(5, 30, 35))),
)

#: vm-2, just started, consumes on a tick whose consumer count is missing (consumers_known
#: False: the live loop gets this when the management API lists consumer_details but no
#: consumers count). vm-2 must count once: as ready (it consumes) and as booting (it is not
#: taken off the booting list without a known consumer list) would make "2 ready + 1 booting"
#: of two domains, and start one VM (vm-3) where the backlog asks for two (vm-3 and vm-4).
CONSUMING_WHILE_BOOTING_RUN = Run(
    PolicyConfig(min_vms=1, max_vms=4, max_start_per_tick=1),
    (*busy(50), VmView("vm-2", "shutoff"), VmView("vm-3", "shutoff"), VmView("vm-4", "shutoff")),
    (
        Tick(step=0, depth=1000),
        Tick(
            step=15,
            changes=(VmView("vm-2", "running", None, True),),
            depth=1000,
            consumers_known=False,
            degraded=True,
        ),
    ),
)

#: vm-2 is told to shut down, keeps running (its SHUTDOWN is lost), and at its drain timeout
#: libvirt does not list it (UNKNOWN): nothing may be done to a domain not seen, so no DESTROY.
UNKNOWN_AT_DRAIN_TIMEOUT_RUN = Run(
    PolicyConfig(min_vms=1, max_vms=4, scale_down_stabilization=0, drain_timeout=10),
    busy(10, 10),
    (
        Tick(step=0),
        Tick(step=5, lost=frozenset({0})),
        Tick(step=20, changes=(VmView("vm-2", UNKNOWN, None, True),)),
    ),
)


#: One ready VM, half busy, acks 5e-324 jobs/s (a subnormal float): the learned per-VM rate is
#: 1e-323, and the backlog signal's ceil(depth / (rate x SLO x drain fraction)) is ceil(inf):
#: a recommendation must stay a whole number (math.ceil(inf) raises OverflowError).
SUBNORMAL_ACK_RATE_RUN = Run(
    PolicyConfig(),
    busy(50),
    (
        Tick(step=0, depth=10, arrival_rate=1.0, ack_rate=0.0),
        Tick(step=20, depth=10, arrival_rate=1.0, ack_rate=5e-324),
    ),
)


def check_all(config: PolicyConfig, obs: Observation, decision: Decision, draining: frozenset) -> None:
    check_decision(config, obs, decision, draining)
    check_capacity(config, obs, decision, draining)


@pytest.mark.parametrize("policy", POLICIES)
@PROPERTY
@given(run=runs())
@example(run=DRAIN_TIMEOUT_RUN)
@example(run=CONSUMING_WHILE_BOOTING_RUN)
@example(run=UNKNOWN_AT_DRAIN_TIMEOUT_RUN)
@example(run=SUBNORMAL_ACK_RATE_RUN)
def test_every_decision_keeps_the_invariants(policy, run):
    play(run, POLICIES[policy], check_all)


def test_the_explicit_runs_reach_the_cases_they_name():
    """The explicit examples above do what their comments say."""
    seen = []
    play(DRAIN_TIMEOUT_RUN, Policy, lambda _c, _o, decision, _d: seen.append(decision))
    assert [(a.domain, a.action) for a in seen[1].actions] == [("vm-3", SHUTDOWN)]
    assert [(a.domain, a.action) for a in seen[2].actions] == [("vm-3", DESTROY)]
    seen.clear()
    play(CONSUMING_WHILE_BOOTING_RUN, Policy, lambda _c, _o, decision, _d: seen.append(decision))
    assert [(a.domain, a.action) for a in seen[0].actions] == [("vm-2", START)]
    assert [(a.domain, a.action) for a in seen[1].actions] == [("vm-3", START), ("vm-4", START)]
    seen.clear()
    play(UNKNOWN_AT_DRAIN_TIMEOUT_RUN, Policy, lambda _c, _o, decision, _d: seen.append(decision))
    assert [(a.domain, a.action) for a in seen[1].actions] == [("vm-2", SHUTDOWN)]
