"""The scaling policy: pure code. Observations and a clock in, a decision out; no I/O.

The live scaler and the simulator drive the very same classes. A policy object keeps
the little state a decision needs across ticks (VMs booting or draining, the last
scale-up, the recent recommendations), all of it timed by ``Observation.now``.
"""

from __future__ import annotations

import collections
import math
import re
from dataclasses import dataclass, field

#: Seconds a VM consumes before its throughput is measured: its first tick still holds its boot.
RATE_SETTLE = 10.0

#: Weight of the newest arrival rate in the smoothed one (the rest keeps the previous value):
#: one tick's arrivals are noisy, and a VM started on noise costs a boot.
ARRIVAL_SMOOTHING = 0.3

#: Weight of the newest per-VM rate sample in the learned rate: a tick's acks are few and come in
#: lumps, while the rate itself changes only slowly (with the host's load), so one sample moves
#: the estimate a fifth of the way.
RATE_SMOOTHING = 0.2

#: Busy share of the ready VMs' CPU below which a tick teaches nothing about the per-VM rate:
#: a nearly idle pool acks too few jobs for the ratio to mean anything.
LEARN_MIN_BUSY_SHARE = 0.2

#: CPU% step in which the idlest VM is chosen for removal: finer differences are noise, and
#: among equals the highest-numbered goes, so the pool shrinks from its end.
VICTIM_CPU_STEP = 5.0

#: Slack for floating-point error when a ratio is rounded to whole VMs: a ratio that is 3 on
#: paper but computes as 3.0000000000000004 asks for 3 VMs, not 4.
ROUNDING_SLACK = 1e-9

#: Actions the scaler takes on a domain. CREATE makes a new domain from the pool's template
#: (and starts it); DELETE removes one the scaler created (destroy, undefine, volumes).
START, SHUTDOWN, DESTROY = "start", "shutdown", "destroy"
CREATE, DELETE = "create", "delete"
#: Drain a VM and managed-save it into the warm pool; a START of a saved domain restores it.
SAVE = "save"

#: The state of a pool domain shut off with a managed save image (a warm VM): a START restores
#: it in seconds instead of booting it.
SAVED = "saved"

#: Weight of the newest boot (or restore) time in the learned one: boots are few, and each one is
#: a real measurement of what the next will take.
DELAY_SMOOTHING = 0.5

#: Least share of the SLO the backlog signal plans to drain in, however long a boot takes: a boot
#: longer than the SLO cannot be made up by more VMs, and the recommendation stays a number.
MIN_DRAIN_SHARE = 0.1

#: The state of a pool domain libvirt did not list this tick although it may well exist (its
#: connection is down, or libvirtd was just restarted and has not reattached its domains yet).
#: Nothing is concluded from its absence: it is neither stopped, nor failed, nor drained.
UNKNOWN = "unknown"

#: The state of a pool domain on a host that has been unreachable for longer than the grace
#: period: counted as gone (its capacity is replaced elsewhere) but never acted on.
LOST = "lost"


@dataclass(frozen=True)
class PolicyConfig:
    """Every knob of a policy; each has a command-line flag of the same name."""

    #: Fewest VMs to keep (0 allows scaling to zero after `idle_to_zero`).
    min_vms: int = 1
    #: Most VMs to run.
    max_vms: int = 4
    #: Seconds a job may wait in the queue: the objective the backlog signal plans for.
    slo: float = 60.0
    #: Share of the SLO the backlog may take to drain: the rest is reaction time (a boot, a tick).
    drain_fraction: float = 0.8
    #: Until a VM's throughput is known: waiting jobs per VM the backlog signal allows.
    target_backlog: float = 50.0
    #: Mean CPU% of the ready VMs above which one more VM is wanted.
    cpu_high: float = 80.0
    #: Mean CPU% below which one VM fewer is wanted.
    cpu_low: float = 40.0
    #: Seconds after a scale-up before the next one (booting VMs already count as capacity).
    scale_up_cooldown: float = 10.0
    #: Seconds a lower recommendation must persist before VMs are removed.
    scale_down_stabilization: float = 30.0
    #: Seconds a started VM has to begin consuming before it is declared failed.
    boot_timeout: float = 120.0
    #: Seconds a VM has to drain after the ACPI shutdown before it is destroyed.
    drain_timeout: float = 60.0
    #: With min_vms 0: seconds of an empty, quiet queue before the last VM goes.
    idle_to_zero: float = 300.0
    #: VMs started in one tick at most: the larger of this many and `max_start_percent` of current.
    max_start_per_tick: int = 4
    max_start_percent: float = 100.0
    #: Seconds a domain that failed to boot is left alone before it may be tried again.
    failed_retry_after: float = 600.0
    #: Seconds after a VM starts consuming before its CPU% counts: until then the CPU window
    #: still holds its boot (a TCG guest boots at 100% CPU), not its share of the work.
    cpu_settle: float = 30.0
    #: Saved (warm) VMs to keep: booted once, drained and managed-saved, so that a scale-out
    #: restores one in seconds instead of booting one; scale-in saves VMs while it has room.
    warm_pool: int = 0
    #: Seconds from a restore to consuming; None: learned from the restores the policy sees.
    warm_boot_delay: float | None = None
    #: Seconds from a cold boot to consuming; None: learned from the boots the policy sees.
    cold_boot_delay: float | None = None

    def problems(self) -> list[str]:
        """What is impossible in this configuration, as messages that say what to fix."""
        found = []
        if self.min_vms > self.max_vms:
            found.append(f"--min {self.min_vms} is more than --max {self.max_vms}")
        if self.cpu_low >= self.cpu_high:
            found.append(f"--cpu-low {self.cpu_low:g} must be below --cpu-high {self.cpu_high:g}")
        if not 0 < self.drain_fraction <= 1:
            found.append(f"drain fraction {self.drain_fraction:g} must be in (0, 1]")
        return found


@dataclass(frozen=True)
class VmView:
    """One pool domain as this tick saw it."""

    name: str
    #: libvirt state: running, shutoff, shutting-down, paused, crashed, ...; or UNKNOWN.
    state: str
    #: Mean CPU% over the window, None while unknown.
    cpu: float | None = None
    #: Its worker has a consumer on the job queue.
    consuming: bool = False
    #: CPU% over the last tick only: what the last tick's ack rate was achieved with.
    cpu_recent: float | None = None
    #: Created from the template on demand: deleted when it is shut off, not kept for later.
    on_demand: bool = False
    #: Runs an older worker image than the template's: replaced one at a time (a refresh).
    stale: bool = False


@dataclass(frozen=True)
class Observation:
    now: float
    #: Ready + unacked jobs; None when the queue could not be read. On a degraded observation it
    #: may be the ready count alone (the unacked count missing): a lower bound, never "empty".
    depth: int | None
    #: Jobs published per second (None when unknown).
    arrival_rate: float | None
    #: Jobs acked per second (None when unknown).
    ack_rate: float | None
    vms: tuple[VmView, ...]
    #: Whether `VmView.consuming` is known (the broker's consumer list could be read).
    consumers_known: bool = True
    #: Some signal was missing this tick: never scale down on it. (A VM in state UNKNOWN is a
    #: missing signal too, whatever this says.)
    degraded: bool = False
    #: How many more domains the hosts can take now (placement caps, free memory); 0 without a
    #: template, when only existing domains can be started.
    room: int = 0
    #: Free names for new domains, in the order to use them (more than ``room``: the policy
    #: skips those its bookkeeping still holds).
    new_names: tuple[str, ...] = ()
    #: Why ``room`` is what it is, for the decision's reason when it limits a scale-up.
    room_note: str = ""
    #: How many more save images the hosts' disks can take now; None when not known (no warm
    #: pool, or not measured): then only ``PolicyConfig.warm_pool`` limits the warm pool.
    save_room: int | None = None
    #: Why ``save_room`` is what it is, for the decision's reason when it shrinks the warm pool.
    save_room_note: str = ""

    @property
    def complete(self) -> bool:
        """Every signal is there: the only kind of observation a VM may be removed on, or an
        empty queue believed."""
        return not self.degraded and self.depth is not None and all(vm.state != UNKNOWN for vm in self.vms)


@dataclass(frozen=True)
class Action:
    domain: str
    action: str


@dataclass(frozen=True)
class Decision:
    desired: int
    actions: tuple[Action, ...]
    reason: str
    signals: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Bookkeeping:
    """What deciding an action records in a policy (boot and drain clocks, the last scale-up, a
    refresh's extra VM), as it stood before a decision: Policy.forget puts it back for the actions
    that were not taken."""

    booting: dict[str, float]
    draining: dict[str, float]
    last_scale_up: float
    refresh_surge: str | None
    saving: dict[str, float] = field(default_factory=dict)
    warming: frozenset[str] = frozenset()
    restoring: frozenset[str] = frozenset()


def _put_back(current: dict[str, float], before: dict[str, float], name: str) -> None:
    if name in before:
        current[name] = before[name]
    else:
        current.pop(name, None)


def _idleness_rank(vm: VmView) -> float:
    """Lower is idler: CPU% in VICTIM_CPU_STEP steps; a VM whose CPU is unknown ranks last."""
    return math.inf if vm.cpu is None else round(vm.cpu / VICTIM_CPU_STEP)


#: The largest recommendation a signal gives: more VMs than any pool holds, so it still means
#: "as many as allowed", while a quotient over a vanishing learned rate stays a number.
MOST_VMS_RECOMMENDED = 1_000_000


def whole_vms(quotient: float, rounding) -> int:
    """``rounding(quotient)`` VMs, capped at MOST_VMS_RECOMMENDED (an infinite quotient too)."""
    return int(min(rounding(min(quotient, MOST_VMS_RECOMMENDED)), MOST_VMS_RECOMMENDED))


def natural_key(name: str) -> tuple:
    """vm-2 before vm-10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


class Policy:
    """The default policy: the largest of the backlog, throughput and CPU recommendations;
    fast up (booting VMs count as capacity), down only after a stabilization window.

    Why it is cheap and still on time (measured in the policy lab, README):
    - throughput: floor(smoothed arrivals / per-VM rate) - the VMs the arrivals keep busy;
    - backlog: ceil(depth / (per-VM rate x SLO x drain_fraction)) - enough VMs to clear what
      waits within 80% of the SLO, the other 20% being time to react;
    - CPU (the original's rule) only while the per-VM rate is unknown: once it is, the CPU
      thresholds (add above 80%, hold from 40% up) only cap utilisation and cause boot churn.
    Together the pool runs its VMs full and uses the queue as a buffer up to the SLO, instead
    of keeping spare VMs (CPU rules) or a fixed backlog per VM (KEDA)."""

    name = "default"

    def __init__(self, config: PolicyConfig):
        self.config = config
        self.booting: dict[str, float] = {}
        self.draining: dict[str, float] = {}
        self.failed: dict[str, float] = {}
        self.last_scale_up = -math.inf
        self.per_vm_rate: float | None = None
        self.idle_since: float | None = None
        self.ready_since: dict[str, float] = {}
        self.arrival_rate: float | None = None
        self._history: collections.deque[tuple[float, int]] = collections.deque()
        #: The previous tick's time, to stop the boot clocks over a tick without consumer data.
        self._previous_now: float | None = None
        #: Domains declared failed in the tick being decided (signals["failed_vms"]).
        self._newly_failed: list[str] = []
        #: The domain a refresh created beyond the count, while it boots (not capacity yet).
        self.refresh_surge: str | None = None
        #: Started for the warm pool, not as capacity: saved once they consume.
        self.warming: set[str] = set()
        #: Draining before their managed save, since when (not capacity any more).
        self.saving: dict[str, float] = {}
        #: Started from a save image: their time to consume teaches the warm delay.
        self.restoring: set[str] = set()
        #: Seconds from start to consuming as learned, for a restore ("warm") and a boot ("cold").
        self.learned_delay: dict[str, float | None] = {"warm": None, "cold": None}

    # -- the outline -------------------------------------------------------------------

    def decide(self, obs: Observation) -> Decision:
        actions: list[Action] = []
        notes: list[str] = []
        vms = {vm.name: vm for vm in obs.vms}
        self._newly_failed = []
        self._hold_boot_clocks(obs)
        self._reconcile(obs, vms, actions, notes)
        self._reconcile_warm(obs, vms, actions, notes)
        ready = [vm for vm in obs.vms if self._is_ready(vm, obs.consumers_known)]
        self._track_ready(obs.now, ready)
        booting = [
            name
            for name in self.booting
            if name in vms and name not in self.warming and self._coming(vms[name], obs.now)
        ]
        if self.refresh_surge not in booting and all(vm.name != self.refresh_surge for vm in ready):
            self.refresh_surge = None  # it failed or went: the refresh starts over
        # A refresh's extra VM is not counted until a stale one has drained in its place: it
        # replaces, it does not add (a recommendation relative to the count would keep it on).
        current = len(ready) + len(booting) - (self.refresh_surge is not None)
        self._learn(obs, ready)
        self._smooth_arrivals(obs)
        self._on_tick(obs)
        recommendations = self.recommend(obs, ready, current)
        wanted = max((value for value in recommendations.values() if value is not None), default=current)
        floor = self._floor(obs, current)
        desired = min(max(wanted, floor), self.config.max_vms)
        stabilized = self._stabilize(obs.now, desired, current, obs.complete)
        signals = {
            "ready": len(ready),
            "booting": len(booting),
            "booting_vms": sorted(booting, key=natural_key),
            "failed_vms": sorted(self._newly_failed, key=natural_key),
            "recommendations": recommendations,
            "per_vm_rate": None if self.per_vm_rate is None else round(self.per_vm_rate, 3),
            "warm": len(self._warm(vms)),
            "warm_target": self._warm_target(vms, obs),
            "boot_delay": self._expected_delay(vms),
        }
        summary = self._summary(obs, ready, booting, recommendations)
        if desired > current:
            target = desired
            actions += self._scale_up(obs, vms, current, desired, notes)
        elif stabilized < current:  # only on a complete tick: an incomplete one records no dip
            target = stabilized
            actions += self._scale_down(obs, ready, booting, notes)
        else:
            target = current
            if desired < current and not obs.complete:
                notes.append("signals missing: no scale-down")
            elif desired < current:
                notes.append(
                    f"holding {current}: want {desired} for less than "
                    f"{self.config.scale_down_stabilization:g}s"
                )
            if not actions and obs.complete:
                actions += self._refresh(obs, ready, booting, notes)
            if not actions and obs.complete and desired >= current:
                # (While a scale-in waits out its window, its VM will fill the warm pool.)
                actions += self._fill_warm_pool(obs, vms, notes)
        self._note_save_room(obs, vms, notes)
        reason = f"{summary}; want {desired} -> {target}"
        if notes:
            reason += "; " + "; ".join(notes)
        return Decision(target, tuple(actions), reason, signals)

    def bookkeeping(self) -> Bookkeeping:
        return Bookkeeping(
            dict(self.booting),
            dict(self.draining),
            self.last_scale_up,
            self.refresh_surge,
            dict(self.saving),
            frozenset(self.warming),
            frozenset(self.restoring),
        )

    def forget(self, actions: tuple[Action, ...] | list[Action], before: Bookkeeping) -> None:
        """Take back what deciding ``actions`` recorded, as none was taken (a standby decides but
        does not act; a leader may lose its lease before acting): a start never made must not
        turn into a boot that failed. What a decision read from the pool stays: a domain that
        crashed or did not consume in time is failed whoever destroys it."""
        for action in actions:
            if action.action == DESTROY and action.domain not in before.draining:
                continue  # a crash or a boot timeout: what the pool showed, not what was done
            _put_back(self.booting, before.booting, action.domain)
            _put_back(self.draining, before.draining, action.domain)
            _put_back(self.saving, before.saving, action.domain)
            for now_in, was_in in ((self.warming, before.warming), (self.restoring, before.restoring)):
                if action.domain in was_in:
                    now_in.add(action.domain)
                else:
                    now_in.discard(action.domain)
            if action.domain == self.refresh_surge != before.refresh_surge:
                self.refresh_surge = before.refresh_surge
        if any(action.action in (START, CREATE) for action in actions):
            self.last_scale_up = before.last_scale_up

    # -- recommendations (overridden by other policies) --------------------------------

    def recommend(self, obs: Observation, ready: list[VmView], current: int) -> dict[str, int | None]:
        """VMs each signal asks for; None where a signal has nothing to say.

        A function of its arguments and the policy's state only: it changes nothing, so an
        override loses none of the bookkeeping (decide() has updated the state already)."""
        rate = self.per_vm_rate
        backlog = None
        if obs.depth is not None:
            if rate:
                backlog = self._backlog_vms(obs.depth, rate, len(ready), {vm.name: vm for vm in obs.vms})
            else:
                backlog = whole_vms(obs.depth / self.config.target_backlog - ROUNDING_SLACK, math.ceil)
        throughput = None
        if obs.arrival_rate is not None and rate:
            throughput = whole_vms(self.arrival_rate / rate + ROUNDING_SLACK, math.floor)
        cpu = self._cpu_rule(ready, current, obs.now) if throughput is None else None
        return {"backlog": backlog, "throughput": throughput, "cpu": cpu}

    def _backlog_vms(self, depth: int, rate: float, ready: int, vms: dict[str, VmView]) -> int:
        """VMs that clear ``depth`` jobs within drain_fraction of the SLO. The ready VMs work the
        whole time; a VM started now works only once it consumes, so when the ready ones are not
        enough, the rest is planned with the delay of the VM it will get (a restore when a saved
        one is there, else a boot), and never with less than MIN_DRAIN_SHARE of the SLO."""
        drain = self.config.slo * self.config.drain_fraction
        delay = self._expected_delay(vms)
        cleared_by_ready = ready * rate * drain
        if delay is None or depth <= cleared_by_ready:
            return whole_vms(depth / (rate * drain) - ROUNDING_SLACK, math.ceil)
        window = max(drain - delay, self.config.slo * MIN_DRAIN_SHARE)
        return ready + whole_vms((depth - cleared_by_ready) / (rate * window) - ROUNDING_SLACK, math.ceil)

    def _expected_delay(self, vms: dict[str, VmView]) -> float | None:
        """Seconds the next VM started will take to consume: the warm delay when a saved VM is
        there to restore, the cold one otherwise; None while neither is configured nor learned."""
        kind = "warm" if self._restorable(vms) else "cold"
        configured = self.config.warm_boot_delay if kind == "warm" else self.config.cold_boot_delay
        delay = configured if configured is not None else self.learned_delay[kind]
        return None if delay is None else round(delay, 3)

    def _on_tick(self, obs: Observation) -> None:
        """A subclass's own per-tick state, updated before recommend(); the default has none."""

    def _settled_loads(self, ready: list[VmView], now: float) -> list[float]:
        """CPU% of the ready VMs that have consumed long enough for it to mean load."""
        return [
            vm.cpu
            for vm in ready
            if vm.cpu is not None and now - self.ready_since.get(vm.name, now) >= self.config.cpu_settle
        ]

    def _track_ready(self, now: float, ready: list[VmView]) -> None:
        names = {vm.name for vm in ready}
        for name in names - self.ready_since.keys():
            # A VM already consuming when the scaler starts has long finished booting.
            self.ready_since[name] = now if self._history else -math.inf
        for name in self.ready_since.keys() - names:
            del self.ready_since[name]

    def _cpu_rule(self, ready: list[VmView], current: int, now: float) -> int | None:
        loads = self._settled_loads(ready, now)
        if not loads:
            return None
        mean = sum(loads) / len(loads)
        if mean > self.config.cpu_high:
            return current + 1
        if mean < self.config.cpu_low:
            return max(current - 1, 0)
        return current

    # -- state -------------------------------------------------------------------------

    def _is_ready(self, vm: VmView, consumers_known: bool) -> bool:
        """Running and consuming; when the broker's consumer list is unreadable, a running VM
        is given the benefit of the doubt rather than replaced. A VM libvirt did not list this
        tick counts only if the broker sees it consume."""
        if vm.state not in ("running", UNKNOWN) or vm.name in self.draining:
            return False
        if vm.name in self.saving or vm.name in self.warming:
            return False  # the warm pool's, not capacity
        if consumers_known:
            return vm.consuming
        return vm.state == "running" and vm.name not in self.booting

    def _coming(self, vm: VmView, now: float) -> bool:
        """A booting VM counts as coming capacity; one libvirt did not list this tick, only
        within its boot timeout (a host that stays unreachable does not hold capacity forever)."""
        return vm.state != UNKNOWN or now - self.booting[vm.name] < self.config.boot_timeout

    def _hold_boot_clocks(self, obs: Observation) -> None:
        """A boot timeout measures time in which the broker could have seen the VM consume: the
        time up to a tick without the consumer list does not count towards it."""
        if not obs.consumers_known and self._previous_now is not None:
            elapsed = max(obs.now - self._previous_now, 0.0)
            for name in self.booting:
                self.booting[name] += elapsed
        self._previous_now = obs.now

    def _reconcile(
        self, obs: Observation, vms: dict[str, VmView], actions: list[Action], notes: list[str]
    ) -> None:
        """Bring the bookkeeping in line with what libvirt and the broker report."""
        now = obs.now
        for name in list(self.draining):
            vm = vms.get(name)
            if vm is not None and vm.state in (UNKNOWN, LOST):
                continue  # not seen this tick: neither drained nor to be destroyed blind
            if vm is None or vm.state == "shutoff":
                del self.draining[name]
            elif now - self.draining[name] >= self.config.drain_timeout:
                actions.append(Action(name, DESTROY))
                notes.append(f"{name} still up {self.config.drain_timeout:g}s after shutdown: destroy")
                # Still draining until libvirt shows it off: it is not capacity in this tick,
                # and a destroy that failed is tried again after another drain timeout.
                self.draining[name] = now
        for vm in obs.vms:
            if vm.name in self.draining or vm.name in self.saving:
                continue  # a parked worker leaves the queue on purpose
            if vm.state == "crashed":
                actions.append(Action(vm.name, DESTROY))
                notes.append(f"{vm.name} crashed: destroy")
                self.booting.pop(vm.name, None)
                self._mark_failed(vm.name, now)
            elif vm.state in ("running", UNKNOWN) and obs.consumers_known:
                if vm.consuming:
                    self._learn_delay(vm.name, now)
                elif vm.state == "running" and vm.name not in self.booting:
                    # Running without a consumer: started by hand, or its worker died. It gets
                    # the same grace as a VM we started, then it is declared failed.
                    self.booting[vm.name] = now
        for name in list(self.booting):
            vm = vms.get(name)
            if vm is not None and vm.state == UNKNOWN:
                continue  # not seen this tick: its absence says nothing, and no clock runs out
            if vm is not None and vm.state == LOST:
                # Its host was given up: no coming capacity, and nothing to destroy. If the host
                # returns, a VM running without a consumer gets a fresh boot time then.
                del self.booting[name]
                continue
            if vm is None or vm.state in ("shutoff", "crashed"):
                del self.booting[name]
                if vm is None or vm.state == "shutoff":
                    notes.append(f"{name} stopped before it consumed")
                    self._mark_failed(name, now)
            elif obs.consumers_known and now - self.booting[name] >= self.config.boot_timeout:
                del self.booting[name]
                self._mark_failed(name, now)
                actions.append(Action(name, DESTROY))
                notes.append(f"{name} not consuming {self.config.boot_timeout:g}s after start: failed")
        for name in list(self.failed):
            if now - self.failed[name] >= self.config.failed_retry_after:
                del self.failed[name]
        self._delete_finished(obs, actions, notes)

    def _delete_finished(self, obs: Observation, actions: list[Action], notes: list[str]) -> None:
        """An on-demand domain that is shut off (drained, failed or crashed) is done with: it
        is deleted, not kept, and its name may be given to a fresh domain."""
        for vm in obs.vms:
            if vm.on_demand and vm.state == "shutoff" and vm.name not in self.booting:
                actions.append(Action(vm.name, DELETE))
                notes.append(f"delete {vm.name}")
                self.draining.pop(vm.name, None)
                self.failed.pop(vm.name, None)

    def _mark_failed(self, name: str, now: float) -> None:
        """A domain that crashed or never consumed: left alone for failed_retry_after, and named
        in this tick's signals["failed_vms"] (what a "VM failed" alert counts)."""
        self.failed[name] = now
        self._newly_failed.append(name)

    def _learn(self, obs: Observation, ready: list[VmView]) -> None:
        """What one fully busy VM acks per second: the ack rate divided by the busy share of
        the ready VMs' CPU over the same last tick (the windowed CPU lags a change of load and
        would inflate it). Unlike the bare ack rate, which only measures the arrivals while the
        pool keeps up, this holds at any load; a nearly idle pool measures too little to count."""
        loads = [
            vm.cpu_recent
            for vm in ready
            if vm.cpu_recent is not None and obs.now - self.ready_since.get(vm.name, obs.now) >= RATE_SETTLE
        ]
        if obs.ack_rate is None or obs.ack_rate <= 0 or not ready or len(loads) < len(ready):
            return
        busy_vms = sum(loads) / 100.0
        if busy_vms < LEARN_MIN_BUSY_SHARE * len(ready):
            return
        sample = obs.ack_rate / busy_vms
        self.per_vm_rate = (
            sample
            if self.per_vm_rate is None
            else (1 - RATE_SMOOTHING) * self.per_vm_rate + RATE_SMOOTHING * sample
        )

    def _smooth_arrivals(self, obs: Observation) -> None:
        """Fold this tick's arrival rate into the smoothed one the throughput signal plans for."""
        if obs.arrival_rate is None:
            return
        previous = self.arrival_rate
        self.arrival_rate = (
            obs.arrival_rate
            if previous is None
            else (1 - ARRIVAL_SMOOTHING) * previous + ARRIVAL_SMOOTHING * obs.arrival_rate
        )

    def _floor(self, obs: Observation, current: int) -> int:
        """min_vms; with min_vms 0, one VM until the queue has been empty and quiet long enough.

        Only a complete observation can show an empty queue: a depth that is missing (or only a
        lower bound) restarts the idle clock, and the floor holds the VM that runs; with no
        reading at all, it starts one."""
        if self.config.min_vms > 0:
            return self.config.min_vms
        if not obs.complete:
            self.idle_since = None
            return 1 if obs.depth is None else min(current, 1)
        # A missing arrival rate (a queue never published to) does not make a busy queue: the
        # depth, known here, is the evidence.
        quiet = obs.depth == 0 and not obs.arrival_rate
        if not quiet:
            self.idle_since = None
            return 1
        if self.idle_since is None:
            self.idle_since = obs.now
        if current == 0 or obs.now - self.idle_since >= self.config.idle_to_zero:
            return 0
        return 1

    def _stabilize(self, now: float, desired: int, current: int, complete: bool) -> int:
        """The highest recommendation of the stabilization window: a dip must last to count.
        A scaler that just started counts what is running as its first recommendation, so a
        restart never removes VMs before a full window of evidence. An incomplete tick records
        no dip either: a scale-down must rest on a whole window of complete readings."""
        if not self._history:
            self._history.append((now, max(desired, current)))
        self._history.append((now, desired if complete else max(desired, current)))
        while self._history and now - self._history[0][0] > self.config.scale_down_stabilization:
            self._history.popleft()
        return max(value for _when, value in self._history)

    # -- acting ------------------------------------------------------------------------

    def _scale_up(
        self, obs: Observation, vms: dict[str, VmView], current: int, desired: int, notes: list[str]
    ) -> list[Action]:
        since = obs.now - self.last_scale_up
        if since < self.config.scale_up_cooldown:
            notes.append(f"scale-up cooldown ({since:.0f}/{self.config.scale_up_cooldown:g}s)")
            return []
        limit = max(self.config.max_start_per_tick, math.floor(current * self.config.max_start_percent / 100))
        count = min(desired - current, limit)
        restorable = self._restorable(vms)[:count]
        self.restoring.update(restorable)
        actions = [Action(name, START) for name in restorable]
        actions += [Action(name, START) for name in self._startable(vms)[: count - len(actions)]]
        actions += [Action(name, CREATE) for name in self._creatable(obs, vms, count - len(actions))]
        if len(actions) < count:
            notes.append(
                f"only {len(actions)} of {count} more VM(s) available"
                + (f": {obs.room_note}" if obs.room_note else ": no shut-off domain and no template")
            )
        for action in actions:
            self.booting[action.domain] = obs.now
        if actions:
            self.last_scale_up = obs.now
            notes.append("; ".join(f"{action.action} {action.domain}" for action in actions))
        return actions

    def _startable(self, vms: dict[str, VmView]) -> list[str]:
        """Shut-off domains an operator defined, on the current image, not failed lately."""
        return sorted(
            (
                vm.name
                for vm in vms.values()
                if vm.state == "shutoff"
                and not vm.on_demand
                and not vm.stale
                and vm.name not in self.failed
                and vm.name not in self.draining
            ),
            key=natural_key,
        )

    def _restorable(self, vms: dict[str, VmView]) -> list[str]:
        """Saved domains (the warm pool), on the current image, not failed lately: a start
        restores them in seconds."""
        return sorted(
            (
                vm.name
                for vm in vms.values()
                if vm.state == SAVED and not vm.stale and vm.name not in self.failed
            ),
            key=natural_key,
        )

    def _creatable(self, obs: Observation, vms: dict[str, VmView], count: int) -> list[str]:
        """Up to ``count`` names for new domains, within the room the hosts have."""
        held = self.failed.keys() | self.booting.keys() | self.draining.keys() | vms.keys()
        free = [name for name in obs.new_names if name not in held]
        return free[: max(min(count, obs.room), 0)]

    def _refresh(
        self, obs: Observation, ready: list[VmView], booting: list[str], notes: list[str]
    ) -> list[Action]:
        """Replace a VM on an old image, one at a time, never below the current count: a new
        domain first (one over the count, like an instance refresh's surge), and only once it
        consumes does a stale one drain (_scale_down prefers the stale)."""
        stale = [vm.name for vm in ready if vm.stale]
        if self.refresh_surge is not None and self.refresh_surge not in booting:
            # The new VM consumes: now a stale one drains in its place.
            if not stale:
                self.refresh_surge = None
                return []
            notes.append(f"refresh: {self.refresh_surge} consumes")
            return self._scale_down(obs, ready, booting, notes)
        if not stale or booting or self.draining:
            return []
        names = self._creatable(obs, {vm.name: vm for vm in obs.vms}, 1)
        if not names:
            notes.append(f"refresh of {len(stale)} VM(s) on an old image waits for room")
            return []
        self.booting[names[0]] = obs.now
        self.refresh_surge = names[0]
        notes.append(
            f"refresh: create {names[0]} to replace one of {', '.join(sorted(stale, key=natural_key))}"
        )
        return [Action(names[0], CREATE)]

    def _scale_down(
        self, obs: Observation, ready: list[VmView], booting: list[str], notes: list[str]
    ) -> list[Action]:
        """One VM per tick: a booting one first (it holds no work), then the idlest ready one."""
        stale = [vm for vm in ready if vm.stale]
        if stale:
            victim = max(stale, key=lambda vm: natural_key(vm.name)).name
        elif booting:
            victim = max(booting, key=natural_key)
            del self.booting[victim]
        else:
            # min() keeps the first of equals: sorted from the end, the highest-numbered goes.
            by_name = sorted(ready, key=lambda vm: natural_key(vm.name), reverse=True)
            victim = min(by_name, key=_idleness_rank).name
        # Whichever VM drains, a refresh's new one now counts: it has replaced it.
        self.refresh_surge = None
        vms = {vm.name: vm for vm in obs.vms}
        booted = victim not in booting  # a VM still booting has nothing worth saving yet
        if booted and not vms[victim].stale and len(self._warm(vms)) < self._warm_target(vms, obs):
            self.saving[victim] = obs.now
            notes.append(f"save {victim} into the warm pool")
            return [Action(victim, SAVE)]
        self.draining[victim] = obs.now
        notes.append(f"shutdown {victim}")
        return [Action(victim, SHUTDOWN)]

    # -- the warm pool -------------------------------------------------------------------

    def _warm(self, vms: dict[str, VmView]) -> list[str]:
        """The warm pool as it stands: saved domains, those being saved, those warming up."""
        saved = self._restorable(vms)
        return saved + [name for name in (*self.saving, *self.warming) if name in vms and name not in saved]

    def _warm_target(self, vms: dict[str, VmView], obs: Observation) -> int:
        """How many warm VMs to keep: --warm-pool, less where the disks have no room for more
        save images (those already saved or on their way keep their place)."""
        target = self.config.warm_pool
        if obs.save_room is not None:
            target = min(target, len(self._warm(vms)) + max(obs.save_room, 0))
        return target

    def _note_save_room(self, obs: Observation, vms: dict[str, VmView], notes: list[str]) -> None:
        """Say so when the disks keep the warm pool below --warm-pool."""
        have = len(self._warm(vms))
        if have < self.config.warm_pool and self._warm_target(vms, obs) < self.config.warm_pool:
            notes.append(
                f"warm pool {have} of {self.config.warm_pool}: no disk room for more save images"
                + (f" ({obs.save_room_note})" if obs.save_room_note else "")
            )

    def _fill_warm_pool(self, obs: Observation, vms: dict[str, VmView], notes: list[str]) -> list[Action]:
        """One more VM towards the warm pool per tick: a shut-off domain booted (or one created)
        which is saved once its worker consumes; only while nothing else is going on."""
        have, target = len(self._warm(vms)), self._warm_target(vms, obs)
        if have >= target or self.booting or self.draining or self.saving:
            return []
        names = self._startable(vms)[:1]
        action = START
        if not names:
            names, action = self._creatable(obs, vms, 1), CREATE
        if not names:
            return []
        self.warming.add(names[0])
        self.booting[names[0]] = obs.now
        notes.append(f"warm pool {have} of {target}: {action} {names[0]} to save it")
        return [Action(names[0], action)]

    def _reconcile_warm(
        self, obs: Observation, vms: dict[str, VmView], actions: list[Action], notes: list[str]
    ) -> None:
        """A warming VM that consumes is saved; a save that is done (or became a plain shutdown)
        ends; one whose domain is still up long after its drain is destroyed like any drain."""
        for name in list(self.warming):
            vm = vms.get(name)
            if vm is None or (name not in self.booting and not (vm.consuming and vm.state == "running")):
                self.warming.discard(name)  # failed, stopped or gone: the fill tries again
            elif vm.consuming and vm.state == "running":
                self.warming.discard(name)
                self.booting.pop(name, None)
                self.saving[name] = obs.now
                actions.append(Action(name, SAVE))
                notes.append(f"save {name} into the warm pool")
        for name in list(self.saving):
            vm = vms.get(name)
            if vm is not None and vm.state in (UNKNOWN, LOST):
                continue
            if vm is None or vm.state in (SAVED, "shutoff"):
                del self.saving[name]
            elif obs.now - self.saving[name] >= 2 * self.config.drain_timeout:
                # The save takes its drain and then the writing of the image: twice the drain.
                del self.saving[name]
                self.draining[name] = obs.now
                actions.append(Action(name, DESTROY))
                notes.append(f"{name} still up {2 * self.config.drain_timeout:g}s after save: destroy")
        self.restoring &= set(self.booting)

    def _learn_delay(self, name: str, now: float) -> None:
        """A VM we started consumes: how long that took teaches the warm or the cold delay."""
        started = self.booting.pop(name, None)
        kind = "warm" if name in self.restoring else "cold"
        self.restoring.discard(name)
        if started is None:
            return
        sample = now - started
        if sample < 0 or not math.isfinite(sample):
            return
        previous = self.learned_delay[kind]
        self.learned_delay[kind] = (
            sample if previous is None else (1 - DELAY_SMOOTHING) * previous + DELAY_SMOOTHING * sample
        )

    def _summary(
        self,
        obs: Observation,
        ready: list[VmView],
        booting: list[str],
        recommendations: dict[str, int | None],
    ) -> str:
        depth = "?" if obs.depth is None else str(obs.depth)
        arrival = "?" if obs.arrival_rate is None else f"{obs.arrival_rate:.1f}/s"
        signals = ", ".join(
            f"{key} {'-' if value is None else value}" for key, value in recommendations.items()
        )
        return f"depth {depth}, arrivals {arrival}, {len(ready)} ready + {len(booting)} booting ({signals})"
