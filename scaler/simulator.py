"""A discrete-event model of the pool, driving the very same policy code as the live scaler.

The world is replaced, not the policy: arrivals come from a load profile or trace (Poisson,
seeded), VMs have `vcpus` slots that each hash one job in `service_time`, a started VM consumes
after `boot_delay` (a saved one, restored, after `warm_boot_delay`), a stopped one finishes the
jobs in hand and powers off (or is saved: a warm VM) `shutdown_delay` later, the queue is FIFO
with prefetch 1 per slot, and the scaler ticks every `interval` seconds with the signals it
would read live (depth, publish and ack rates, per-VM CPU% over its window, which VMs consume).
A saved VM's seconds are counted apart (`warm_vm_seconds`): it holds disk, not CPU. Jobs are
simulated one by one, but between two events the slot assignment is a heap walk, so a day at a
few jobs per second runs in seconds.
"""

from __future__ import annotations

import bisect
import collections
import heapq
import math
from dataclasses import dataclass, field

import numpy as np

from virtscale import defaults
from virtscale.load import Rate
from virtscale.scaler.policy import (
    DESTROY,
    SAVE,
    SAVED,
    SHUTDOWN,
    START,
    Decision,
    Observation,
    Policy,
    VmView,
)


@dataclass(frozen=True)
class World:
    #: Hashing slots per VM (vCPUs; the worker runs one slot per CPU).
    vcpus: int = 1
    #: Seconds one bcrypt hash takes in one slot (measured; see virtscale.defaults).
    service_time: float = defaults.SIM_SERVICE_TIME
    #: Seconds from domain start to its worker consuming (measured).
    boot_delay: float = defaults.SIM_BOOT_DELAY
    #: Seconds from a saved domain's restore to its worker consuming (measured).
    warm_boot_delay: float = defaults.SIM_WARM_BOOT_DELAY
    #: Seconds from the last job drained to the domain being off (estimated).
    shutdown_delay: float = defaults.SIM_SHUTDOWN_DELAY
    #: Seconds between scaler ticks.
    interval: float = defaults.SCALER_INTERVAL
    #: Seconds of CPU history the scaler averages.
    window: float = defaults.CPU_WINDOW
    #: Seconds a job may wait in the queue (the SLO).
    slo: float = 60.0
    #: VMs the pool can have (vm-1..vm-N).
    pool_size: int = 10
    #: VMs already consuming at time 0.
    initial_vms: int = 1


@dataclass
class SimResult:
    policy: str
    jobs: int
    vm_seconds: float
    work_vm_seconds: float
    p50: float
    p95: float
    p99: float
    max_backlog: int
    slo_violation_seconds: float
    scale_actions: int
    #: Seconds VMs spent saved (the warm pool): disk, not CPU, so apart from vm_seconds.
    warm_vm_seconds: float = 0.0
    #: Per tick: time, arrival rate, backlog, VMs up (booting + consuming + draining), consuming.
    series: dict = field(default_factory=dict)

    @property
    def efficiency(self) -> float:
        return self.work_vm_seconds / self.vm_seconds if self.vm_seconds else 0.0

    @property
    def meets_slo(self) -> bool:
        return self.slo_violation_seconds == 0

    def summary(self) -> dict:
        return {
            "policy": self.policy,
            "jobs": self.jobs,
            "vm_seconds": round(self.vm_seconds, 1),
            "work_vm_seconds": round(self.work_vm_seconds, 1),
            "warm_vm_seconds": round(self.warm_vm_seconds, 1),
            "efficiency": round(self.efficiency, 4),
            "p50": round(self.p50, 3),
            "p95": round(self.p95, 3),
            "p99": round(self.p99, 3),
            "max_backlog": self.max_backlog,
            "slo_violation_seconds": round(self.slo_violation_seconds, 1),
            "meets_slo": self.meets_slo,
            "scale_actions": self.scale_actions,
        }


def arrivals_per_second(rate: Rate, length: float, seed: int) -> np.ndarray:
    """Poisson arrival counts for each second of the run, from the rate function."""
    rng = np.random.default_rng(seed)
    seconds = np.arange(math.ceil(length))
    rates = np.array([max(0.0, rate(float(t) + 0.5)) for t in seconds])
    return rng.poisson(rates)


def arrival_times(counts: np.ndarray, seed: int) -> np.ndarray:
    """Each second's arrivals spread uniformly within it, sorted."""
    rng = np.random.default_rng(seed + 1)
    seconds = np.repeat(np.arange(len(counts), dtype=float), counts)
    return np.sort(seconds + rng.random(len(seconds)))


class _Vm:
    """One simulated domain."""

    __slots__ = (
        "busy",
        "busy_sum",
        "draining",
        "ends",
        "name",
        "off_at",
        "ready_at",
        "saved_at",
        "saving",
        "started_at",
        "state",
    )

    def __init__(self, name: str):
        self.name = name
        self.state = "shutoff"
        self.started_at = 0.0
        self.ready_at = math.inf
        self.off_at = math.inf
        self.draining = False
        #: Draining towards a managed save rather than a shutdown.
        self.saving = False
        self.saved_at = 0.0
        self.ends: collections.deque[float] = collections.deque()  # end times of jobs in service
        self.busy: collections.deque[float] = collections.deque()  # start times inside the CPU window
        self.busy_sum = 0.0

    def consuming(self, at: float) -> bool:
        return self.state == "running" and not self.draining and self.ready_at <= at

    def boot(self, at: float, boot_delay: float) -> None:
        self.state, self.started_at, self.draining, self.saving = "running", at, False, False
        self.ready_at, self.off_at = at + boot_delay, math.inf
        self.busy.clear()
        self.busy_sum = 0.0


def simulate(
    policy: Policy, world: World, arrivals: np.ndarray, *, horizon: float | None = None
) -> SimResult:
    """Run ``policy`` against ``arrivals`` (sorted times), one scaler tick at a time, until
    every job has started and ``horizon`` (at least the last arrival) is reached."""
    run = _Run(world, arrivals)
    horizon = max(horizon or 0.0, float(arrivals[-1]) if len(arrivals) else 0.0)
    tick = 0
    while True:
        clock = tick * world.interval
        run.complete_boots(clock)
        run.serve_until(clock)
        run.advance_vms(clock)
        observation = run.observe(clock, first=tick == 0)
        run.apply(policy.decide(observation), clock)
        run.record(clock, observation)
        if run.all_started and clock >= horizon:
            break
        tick += 1
    return run.result(policy.name, clock)


class _Run:
    """One simulation's pool, queue and tallies, advanced one scaler tick at a time."""

    def __init__(self, world: World, arrivals: np.ndarray):
        self.world = world
        self.arrivals = arrivals
        self.vms = [_Vm(f"vm-{index}") for index in range(1, world.pool_size + 1)]
        self.index_of = {vm.name: index for index, vm in enumerate(self.vms)}
        self.free_slots: list[tuple[float, int]] = []  # (free from, vm index), consuming VMs only
        self.booting: list[tuple[float, int]] = []  # (ready at, vm index)
        self.starts = np.full(len(arrivals), np.nan)
        self.next_job = 0  # every job before it has started
        self.served_before = 0  # next_job at the previous tick
        self.previous = 0.0  # the previous tick's clock
        self.waiting = 0  # jobs arrived and not started, at the last observation
        self.vm_seconds = 0.0
        self.warm_vm_seconds = 0.0
        self.actions_taken = 0
        self.max_backlog = 0
        self.series: dict[str, list] = {
            "time": [],
            "rate": [],
            "backlog": [],
            "vms": [],
            "consuming": [],
            "warm": [],
        }
        for index in range(world.initial_vms):
            self.vms[index].boot(-world.boot_delay, world.boot_delay)
            self.vms[index].started_at = 0.0
            self._open_slots(0.0, index)

    @property
    def all_started(self) -> bool:
        return self.next_job >= len(self.arrivals)

    def _open_slots(self, at: float, index: int) -> None:
        for _ in range(self.world.vcpus):
            heapq.heappush(self.free_slots, (at, index))

    def complete_boots(self, clock: float) -> None:
        """Boots that complete before this tick open their slots at their own moment."""
        for ready_at, index in sorted(self.booting):
            if ready_at <= clock:
                self.serve_until(ready_at)
                self._open_slots(ready_at, index)
        self.booting = [(at, index) for at, index in self.booting if at > clock]

    def serve_until(self, until: float) -> None:
        """Start jobs on free slots, FIFO, for every start before ``until``."""
        arrivals, free_slots, service = self.arrivals, self.free_slots, self.world.service_time
        while self.next_job < len(arrivals) and free_slots:
            free_at, index = free_slots[0]
            vm = self.vms[index]
            if not vm.consuming(free_at if free_at > vm.ready_at else vm.ready_at):
                heapq.heappop(free_slots)  # draining or gone: the slot takes nothing new
                continue
            start = max(free_at, float(arrivals[self.next_job]))
            if start >= until:
                return
            heapq.heapreplace(free_slots, (start + service, index))
            self.starts[self.next_job] = start
            self.next_job += 1
            vm.ends.append(start + service)
            vm.busy.append(start)
            vm.busy_sum += service

    def advance_vms(self, clock: float) -> None:
        """Finish jobs, slide the CPU windows, and power off the VMs that drained."""
        world = self.world
        for vm in self.vms:
            while vm.ends and vm.ends[0] <= clock:
                vm.ends.popleft()
            while vm.busy and vm.busy[0] < clock - world.window:
                vm.busy.popleft()
                vm.busy_sum -= world.service_time
            if vm.draining and vm.state == "running" and not vm.ends:
                vm.state, vm.off_at = "shutting-down", clock + world.shutdown_delay
            if vm.state == "shutting-down" and vm.off_at <= clock:
                vm.state, vm.draining = (SAVED if vm.saving else "shutoff"), False
                vm.saved_at = vm.off_at
                self.vm_seconds += vm.off_at - vm.started_at

    def observe(self, clock: float, *, first: bool) -> Observation:
        """What the live scaler would read now: depth, publish and ack rates, each VM's view."""
        arrived_by_now = int(np.searchsorted(self.arrivals, clock))
        self.waiting = max(0, arrived_by_now - self.next_job)
        depth = self.waiting + sum(len(vm.ends) for vm in self.vms)
        self.max_backlog = max(self.max_backlog, self.waiting)
        span = 1.0 if first else clock - self.previous
        arrived = 0 if first else arrived_by_now - int(np.searchsorted(self.arrivals, self.previous))
        observation = Observation(
            now=clock,
            depth=depth,
            arrival_rate=arrived / span,
            ack_rate=(self.next_job - self.served_before) / span,
            vms=tuple(self._view(vm, clock) for vm in self.vms),
        )
        self.served_before = self.next_job
        self.previous = clock
        return observation

    def _view(self, vm: _Vm, clock: float) -> VmView:
        """One VM as the scaler sees it: CPU% over its window and over the last tick, once it
        has consumed for a tick."""
        world = self.world
        cpu = recent = None
        if vm.consuming(clock) and clock - vm.ready_at >= world.interval:
            observed = min(world.window, clock - vm.ready_at)
            cpu = min(100.0, 100.0 * max(vm.busy_sum, 0.0) / (observed * world.vcpus))
            started_last_tick = len(vm.busy) - bisect.bisect_left(vm.busy, clock - world.interval)
            recent = min(
                100.0, 100.0 * started_last_tick * world.service_time / (world.interval * world.vcpus)
            )
        return VmView(vm.name, vm.state, cpu, vm.consuming(clock), recent)

    def apply(self, decision: Decision, clock: float) -> None:
        """Carry out the policy's actions as libvirt would."""
        world = self.world
        for action in decision.actions:
            index = self.index_of[action.domain]
            vm = self.vms[index]
            if action.action == START and vm.state in ("shutoff", SAVED):
                if vm.state == SAVED:
                    self.warm_vm_seconds += clock - vm.saved_at
                vm.boot(clock, world.warm_boot_delay if vm.state == SAVED else world.boot_delay)
                self.booting.append((vm.ready_at, index))
                self.actions_taken += 1
            elif action.action in (SHUTDOWN, DESTROY, SAVE) and vm.state == "running":
                vm.draining = True
                vm.saving = action.action == SAVE
                if vm.ready_at > clock:  # still booting: nothing to drain
                    self.booting = [(at, i) for at, i in self.booting if i != index]
                    vm.state, vm.off_at = "shutting-down", clock + world.shutdown_delay
                self.actions_taken += 1

    def record(self, clock: float, observation: Observation) -> None:
        """One point of each plotted series, after this tick's actions."""
        self.series["time"].append(clock)
        self.series["rate"].append(observation.arrival_rate)
        self.series["backlog"].append(self.waiting)
        self.series["vms"].append(sum(1 for vm in self.vms if vm.state not in ("shutoff", SAVED)))
        self.series["consuming"].append(sum(1 for view in observation.vms if view.consuming))
        self.series["warm"].append(sum(1 for vm in self.vms if vm.state == SAVED))

    def result(self, policy_name: str, clock: float) -> SimResult:
        """The run's totals; VMs still up are counted until ``clock``, the last tick."""
        for vm in self.vms:
            if vm.state == SAVED:
                self.warm_vm_seconds += clock - vm.saved_at
            elif vm.state != "shutoff":
                self.vm_seconds += clock - vm.started_at
        arrivals, service = self.arrivals, self.world.service_time
        latencies = self.starts - arrivals + service
        percentiles = np.percentile(latencies, [50, 95, 99]) if len(latencies) else np.zeros(3)
        return SimResult(
            policy=policy_name,
            jobs=len(arrivals),
            vm_seconds=self.vm_seconds,
            work_vm_seconds=len(arrivals) * service / self.world.vcpus,
            p50=float(percentiles[0]),
            p95=float(percentiles[1]),
            p99=float(percentiles[2]),
            max_backlog=self.max_backlog,
            slo_violation_seconds=slo_violation_seconds(arrivals, self.starts, self.world.slo),
            scale_actions=self.actions_taken,
            warm_vm_seconds=self.warm_vm_seconds,
            series=self.series,
        )


def slo_violation_seconds(arrivals: np.ndarray, starts: np.ndarray, slo: float) -> float:
    """Seconds during which the oldest waiting job had waited longer than ``slo``.

    Job i makes the interval (arrival_i + slo, start_i) a violation. FIFO makes both ends
    non-decreasing in i, so the union's length is one pass: each interval counts from where
    the previous one ended."""
    if not len(arrivals):
        return 0.0
    begins = arrivals + slo
    ends = starts
    previous_end = np.concatenate([[-np.inf], np.maximum.accumulate(ends)[:-1]])
    return float(np.clip(ends - np.maximum(begins, previous_end), 0.0, None).sum())
