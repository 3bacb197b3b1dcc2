"""One scaler tick: observe (libvirt + broker), decide (policy), act (libvirt), report.

No reading the tick did not really make is acted on: a missing signal makes the tick degraded
(the policy then removes nothing), a domain libvirt did not list for certain is UNKNOWN to the
policy rather than stopped, and every libvirt failure ends as a problem or a failed action.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from virtscale.scaler.cpu import CpuWindow
from virtscale.scaler.hypervisor import ActionFailed, DomainSample, Hypervisor, HypervisorUnavailable
from virtscale.scaler.policy import (
    DESTROY,
    SHUTDOWN,
    START,
    UNKNOWN,
    Decision,
    Observation,
    Policy,
    VmView,
)
from virtscale.scaler.queue_monitor import QueueMonitor, QueueReading

log = logging.getLogger(__name__)

#: Ticks a connection is given to list again every domain it listed before, after it was reopened
#: or when it suddenly lists none: right after libvirtd restarts, its first answers can list no
#: domain at all while it reattaches them. Meanwhile a missing domain is UNKNOWN to the policy and
#: the tick degraded; after that it is believed gone. 3 ticks: 15 s at the default interval.
REATTACH_TICKS = 3


@dataclass
class Listing:
    """The domains one connection last listed for certain, to tell one that is gone from one
    libvirt has not listed again yet."""

    names: frozenset[str] = frozenset()
    #: The hypervisor's count of opened connections when it was listed.
    connections: int = 0
    #: Consecutive ticks since then whose lists lacked some of ``names``.
    doubtful_ticks: int = 0


@dataclass
class DomainsSeen:
    """One tick's view of the pool over every connection."""

    samples: list[DomainSample] = field(default_factory=list)
    #: Pool domains listed before that this tick could not see for certain.
    unseen: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class TickReport:
    """What one tick saw, decided and did; one line of the events file."""

    time: float
    reading: QueueReading
    samples: list[DomainSample]
    cpu: dict[str, float | None]
    decision: Decision
    problems: list[str] = field(default_factory=list)
    failed_actions: list[str] = field(default_factory=list)
    #: Pool domains whose state this tick could not see (UNKNOWN to the policy).
    unseen: list[str] = field(default_factory=list)

    @property
    def degraded(self) -> bool:
        return bool(self.problems)

    @property
    def refused(self) -> bool:
        """The broker refused the scaler's credentials or request: a configuration to fix."""
        return self.reading.refused

    def domains(self) -> dict[str, dict]:
        """Every pool domain of the tick by name: state, CPU% and whether its worker consumes
        (None when the broker's consumer list was not read: unknown, not "no"). A domain libvirt
        did not list this tick is there too, as UNKNOWN, rather than missing from the view."""
        known = self.reading.consumers_known
        domains = {
            s.name: {
                "state": s.state,
                "cpu": None if self.cpu.get(s.name) is None else round(self.cpu[s.name], 1),
                "consuming": s.name in self.reading.consuming if known else None,
            }
            for s in self.samples
        }
        for name in self.unseen:
            domains.setdefault(name, {"state": UNKNOWN, "cpu": None, "consuming": None})
        return domains

    def event(self) -> dict:
        return {
            "time": round(self.time, 3),
            "depth": self.reading.depth,
            "ready": self.reading.ready,
            "unacked": self.reading.unacked,
            "publish_rate": self.reading.publish_rate,
            "ack_rate": self.reading.ack_rate,
            "consumers": self.reading.consumers,
            "domains": self.domains(),
            "desired": self.decision.desired,
            "actions": [{"domain": a.domain, "action": a.action} for a in self.decision.actions],
            "reason": self.decision.reason,
            "signals": self.decision.signals,
            "unseen": self.unseen,
            "degraded": self.degraded,
            "refused": self.refused,
            "problems": self.problems + self.failed_actions,
        }


class Scaler:
    def __init__(
        self,
        hypervisors: list[Hypervisor],
        monitor: QueueMonitor,
        policy: Policy,
        *,
        window: float,
        dry_run: bool = False,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_tick: Callable[[TickReport], None] | None = None,
        log_decisions: bool = True,
    ):
        self.hypervisors = hypervisors
        self.monitor = monitor
        self.policy = policy
        self.cpu = CpuWindow(window)
        self.dry_run = dry_run
        self.clock = clock
        self.wall_clock = wall_clock
        self.on_tick = on_tick
        #: False for a scaler that only observes (status): its policy's decision means nothing.
        self.log_decisions = log_decisions
        self._owner: dict[str, Hypervisor] = {}
        self._listings: dict[Hypervisor, Listing] = {}

    def tick(self) -> TickReport:
        seen = self.observe_domains()
        reading = self.read_queue()
        problems = seen.problems + ([reading.problem or "queue reading degraded"] if reading.degraded else [])
        cpu = {s.name: self.cpu.percent(s.uri, s.name) for s in seen.samples}
        observation = Observation(
            now=self.clock(),
            depth=reading.depth,
            arrival_rate=reading.publish_rate,
            ack_rate=reading.ack_rate,
            vms=self._views(seen, reading, cpu),
            consumers_known=reading.consumers_known,
            degraded=bool(problems),
        )
        decision = self.policy.decide(observation)
        report = TickReport(
            self.wall_clock(), reading, seen.samples, cpu, decision, problems, unseen=seen.unseen
        )
        if self.log_decisions:
            log.info("%s%s", "[dry-run] " if self.dry_run else "", decision.reason)
        self.act(report)
        if self.on_tick:
            self.on_tick(report)
        return report

    def read_queue(self) -> QueueReading:
        """The queue reading; a refusal is logged as an error every tick, as it will not pass."""
        reading = self.monitor.read()
        if reading.refused:
            log.error("the broker refuses the scaler (fix the configuration): %s", reading.problem)
        return reading

    def _views(self, seen: DomainsSeen, reading: QueueReading, cpu: dict[str, float | None]):
        """What the policy sees of each domain: sampled ones as sampled, unseen ones UNKNOWN."""
        sampled = tuple(
            VmView(
                s.name,
                s.state,
                cpu[s.name],
                s.name in reading.consuming,
                self.cpu.percent(s.uri, s.name, last_only=True),
            )
            for s in seen.samples
        )
        return sampled + tuple(VmView(name, UNKNOWN, None, name in reading.consuming) for name in seen.unseen)

    def observe_domains(self) -> DomainsSeen:
        seen = DomainsSeen()
        for hypervisor in self.hypervisors:
            self._observe(hypervisor, seen)
        sampled = {sample.name for sample in seen.samples}
        seen.unseen = sorted(set(seen.unseen) - sampled)
        self.cpu.add(seen.samples)
        return seen

    def _observe(self, hypervisor: Hypervisor, seen: DomainsSeen) -> None:
        """One connection's domains into ``seen``. A failed sample leaves every domain it listed
        last unseen; so does, for up to REATTACH_TICKS ticks, a list that lacks some of them
        just after a reconnect (or lacks all of them), as libvirt may not have reattached them."""
        listing = self._listings.setdefault(hypervisor, Listing())
        try:
            found = hypervisor.sample()
        except HypervisorUnavailable as exc:
            seen.problems.append(str(exc))
            seen.unseen += listing.names
            return
        names = frozenset(sample.name for sample in found)
        missing = listing.names - names
        reconnected = hypervisor.connections != listing.connections
        if missing and (reconnected or not names) and listing.doubtful_ticks < REATTACH_TICKS:
            listing.doubtful_ticks += 1
            seen.problems.append(
                f"{hypervisor.uri}: {len(missing)} of {len(listing.names)} domains not listed "
                f"{'since reconnecting' if reconnected else 'this time'} ({', '.join(sorted(missing))}); "
                f"waiting for libvirt to list them again ({listing.doubtful_ticks}/{REATTACH_TICKS})"
            )
            seen.unseen += missing
        else:
            self._listings[hypervisor] = Listing(names, hypervisor.connections)
        for sample in found:
            if sample.name in self._owner and self._owner[sample.name] is not hypervisor:
                seen.problems.append(f"{sample.name} is defined on two connections; using {sample.uri}")
            self._owner[sample.name] = hypervisor
        seen.samples += found

    def act(self, report: TickReport) -> None:
        if self.dry_run:
            return
        for action in report.decision.actions:
            hypervisor = self._owner.get(action.domain)
            try:
                if hypervisor is None:
                    raise ActionFailed(f"{action.action} {action.domain}: domain not seen on any connection")
                {START: hypervisor.start, SHUTDOWN: hypervisor.shutdown, DESTROY: hypervisor.destroy}[
                    action.action
                ](action.domain)
            except (ActionFailed, HypervisorUnavailable) as exc:
                log.error("%s", exc)
                report.failed_actions.append(str(exc))

    def shutdown_pool(self) -> list[str]:
        """ACPI-shutdown every running pool domain (the --shutdown-on-exit path)."""
        stopped = []
        for sample in self.observe_domains().samples:
            if sample.state == "running":
                try:
                    self._owner[sample.name].shutdown(sample.name)
                    stopped.append(sample.name)
                except (ActionFailed, HypervisorUnavailable) as exc:
                    log.error("%s", exc)
        return stopped


class EventsFile:
    """--events FILE: one JSON object per tick, flushed as it is written."""

    def __init__(self, path: str):
        self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the scaler

    def write(self, report: TickReport) -> None:
        self._handle.write(json.dumps(report.event(), separators=(",", ":")) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()
