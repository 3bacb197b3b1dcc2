"""One scaler tick: observe (libvirt + broker), decide (policy), act (libvirt), report."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from virtscale.scaler.cpu import CpuWindow
from virtscale.scaler.hypervisor import ActionFailed, DomainSample, Hypervisor, HypervisorUnavailable
from virtscale.scaler.policy import DESTROY, SHUTDOWN, START, Decision, Observation, Policy, VmView
from virtscale.scaler.queue_monitor import QueueMonitor, QueueReading

log = logging.getLogger(__name__)


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

    @property
    def degraded(self) -> bool:
        return bool(self.problems)

    def event(self) -> dict:
        consuming = self.reading.consuming
        return {
            "time": round(self.time, 3),
            "depth": self.reading.depth,
            "ready": self.reading.ready,
            "unacked": self.reading.unacked,
            "publish_rate": self.reading.publish_rate,
            "ack_rate": self.reading.ack_rate,
            "consumers": self.reading.consumers,
            "domains": {
                s.name: {
                    "state": s.state,
                    "cpu": None if self.cpu.get(s.name) is None else round(self.cpu[s.name], 1),
                    "consuming": s.name in consuming,
                }
                for s in self.samples
            },
            "desired": self.decision.desired,
            "actions": [{"domain": a.domain, "action": a.action} for a in self.decision.actions],
            "reason": self.decision.reason,
            "signals": self.decision.signals,
            "degraded": self.degraded,
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
    ):
        self.hypervisors = hypervisors
        self.monitor = monitor
        self.policy = policy
        self.cpu = CpuWindow(window)
        self.dry_run = dry_run
        self.clock = clock
        self.wall_clock = wall_clock
        self.on_tick = on_tick
        self._owner: dict[str, Hypervisor] = {}

    def tick(self) -> TickReport:
        samples, problems = self.observe_domains()
        reading = self.monitor.read()
        if reading.degraded:
            problems.append(reading.problem or "queue reading degraded")
        cpu = {s.name: self.cpu.percent(s.uri, s.name) for s in samples}
        observation = Observation(
            now=self.clock(),
            depth=reading.depth,
            arrival_rate=reading.publish_rate,
            ack_rate=reading.ack_rate,
            vms=tuple(
                VmView(
                    s.name,
                    s.state,
                    cpu[s.name],
                    s.name in reading.consuming,
                    self.cpu.percent(s.uri, s.name, last_only=True),
                )
                for s in samples
            ),
            consumers_known=not reading.degraded,
            degraded=bool(problems),
        )
        decision = self.policy.decide(observation)
        report = TickReport(self.wall_clock(), reading, samples, cpu, decision, problems)
        log.info("%s%s", "[dry-run] " if self.dry_run else "", decision.reason)
        self.act(report)
        if self.on_tick:
            self.on_tick(report)
        return report

    def observe_domains(self) -> tuple[list[DomainSample], list[str]]:
        samples: list[DomainSample] = []
        problems: list[str] = []
        for hypervisor in self.hypervisors:
            try:
                found = hypervisor.sample()
            except HypervisorUnavailable as exc:
                problems.append(str(exc))
                continue
            for sample in found:
                if sample.name in self._owner and self._owner[sample.name] is not hypervisor:
                    problems.append(f"{sample.name} is defined on two connections; using {sample.uri}")
                self._owner[sample.name] = hypervisor
            samples += found
        self.cpu.add(samples)
        return samples, problems

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
        samples, _problems = self.observe_domains()
        for sample in samples:
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
