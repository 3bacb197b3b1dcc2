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
from dataclasses import dataclass, field, replace

from virtscale.management import ManagementError
from virtscale.scaler.cpu import CpuWindow
from virtscale.scaler.fleet import Fleet
from virtscale.scaler.hypervisor import (
    SAVED,
    ActionFailed,
    DomainSample,
    HostSample,
    Hypervisor,
    HypervisorUnavailable,
)
from virtscale.scaler.leadership import Leadership, SoleScaler
from virtscale.scaler.placement import HostRoom
from virtscale.scaler.policy import (
    CREATE,
    DELETE,
    DESTROY,
    LOST,
    SAVE,
    SHUTDOWN,
    START,
    UNKNOWN,
    Action,
    Decision,
    Observation,
    Policy,
    VmView,
)
from virtscale.scaler.queue_monitor import QueueMonitor, QueueReading
from virtscale.scaler.template import Template, TemplateError

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
    #: Clock time since which the host has not answered (None: it answered last time).
    unreachable_since: float | None = None


@dataclass
class DomainsSeen:
    """One tick's view of the pool over every connection."""

    samples: list[DomainSample] = field(default_factory=list)
    #: Pool domains listed before that this tick could not see for certain.
    unseen: list[str] = field(default_factory=list)
    #: Pool domains on a host unreachable for longer than the grace: counted as gone.
    lost: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: Each host by URI as sampled this tick (None: no answer).
    hosts: dict[str, HostSample | None] = field(default_factory=dict)
    #: Host URI of every pool domain seen or remembered.
    host_of: dict[str, str] = field(default_factory=dict)
    #: Notes on hosts that do not make the tick degraded (a host given up as lost).
    notes: list[str] = field(default_factory=list)


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
    #: Pool domains on a host given up as lost.
    lost: list[str] = field(default_factory=list)
    #: Host URI of each pool domain.
    host_of: dict[str, str] = field(default_factory=dict)
    #: Per host: reachable, pool domains by state, cap.
    hosts: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: Whether this scaler led the pool in this tick: False on a standby (no actions) and a dry run.
    leader: bool = True
    #: Who held the pool's lease: this scaler's name when it leads; on a standby the holder the
    #: management API named ("" for none), None when not known.
    lease_holder: str | None = None

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
                "host": s.uri,
            }
            for s in self.samples
        }
        for state, names in ((UNKNOWN, self.unseen), (LOST, self.lost)):
            for name in names:
                domains.setdefault(
                    name, {"state": state, "cpu": None, "consuming": None, "host": self.host_of.get(name)}
                )
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
            "hosts": self.hosts,
            "notes": self.notes,
            "leader": self.leader,
            "lease_holder": self.lease_holder,
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
        fleet: Fleet | None = None,
        leadership: Leadership | SoleScaler | None = None,
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
        self.fleet = fleet
        #: Whether this scaler may act: the pool's lease, or always when it is the only one.
        self.leadership = leadership or SoleScaler()
        self._owner: dict[str, Hypervisor] = {}
        self._listings: dict[Hypervisor, Listing] = {}
        #: This tick's template and placement rooms, for act().
        self._template: Template | None = None
        self._rooms: list[HostRoom] = []
        #: Domains whose worker is draining before a managed save, and since when.
        self._saving: dict[str, float] = {}

    def tick(self) -> TickReport:
        # Asked before observing: what a leader acts on, it saw while it led.
        term = self.leadership.term()
        seen = self.observe_domains()
        reading = self.read_queue()
        problems = seen.problems + ([reading.problem or "queue reading degraded"] if reading.degraded else [])
        cpu = {s.name: self.cpu.percent(s.uri, s.name) for s in seen.samples}
        room, room_note, new_names = self._room(seen, problems)
        save_room, save_room_note = self._save_room(seen)
        observation = Observation(
            now=self.clock(),
            depth=reading.depth,
            arrival_rate=reading.publish_rate,
            ack_rate=reading.ack_rate,
            vms=self._views(seen, reading, cpu),
            consumers_known=reading.consumers_known,
            degraded=bool(problems),
            room=room,
            new_names=new_names,
            room_note=room_note,
            save_room=save_room,
            save_room_note=save_room_note,
        )
        before = self.policy.bookkeeping()
        decision = self.policy.decide(observation)
        if term is None:  # a standby: the same reading of the pool, nothing done about it
            self.policy.forget(decision.actions, before)
            decision = replace(
                decision, actions=(), reason=f"{self.leadership.standby_note()}; {decision.reason}"
            )
        report = TickReport(
            self.wall_clock(),
            reading,
            seen.samples,
            cpu,
            decision,
            problems,
            unseen=seen.unseen,
            lost=seen.lost,
            host_of=seen.host_of,
            hosts=self._host_summary(seen),
            notes=seen.notes,
            leader=term is not None and not self.dry_run,
            lease_holder=self.leadership.holder(),
        )
        if self.log_decisions:
            log.info("%s%s", "[dry-run] " if self.dry_run else "", decision.reason)
        untaken = self.act(report, term)
        if untaken:
            self.policy.forget(untaken, before)
        if self.on_tick:
            self.on_tick(report)
        return report

    def _room(self, seen: DomainsSeen, problems: list[str]) -> tuple[int, str, tuple[str, ...]]:
        """How many domains the hosts can take now, why not more, and free names for them."""
        self._template, self._rooms = None, []
        if self.fleet is None:
            return 0, "", ()
        try:
            self._template = self.fleet.template()
        except TemplateError as exc:
            problems.append(str(exc))
            return 0, str(exc), ()
        self._rooms = self.fleet.rooms(seen.hosts)
        limit = self.policy.config.max_vms + 1  # a refresh may go one over
        room, note = self.fleet.room(self._rooms, self._template, limit)
        taken = set(seen.host_of) | {name for host in seen.hosts.values() if host for name in host.names}
        return room, note, self.fleet.new_names(taken, room)

    def _save_room(self, seen: DomainsSeen) -> tuple[int | None, str]:
        """With a warm pool: how many more save images the hosts' disks can take (sized by one
        pool domain of each host), and the figures; None when no host could tell."""
        if self.policy.config.warm_pool <= 0:
            return None, ""
        total, notes, known = 0, [], False
        for hypervisor in self.hypervisors:
            host = seen.hosts.get(hypervisor.uri)
            if not host or not host.domains:
                continue
            try:
                count, figures = hypervisor.save_capacity(host.domains[0].name)
            except (ActionFailed, HypervisorUnavailable) as exc:
                log.warning("%s", exc)
                continue
            total, known = total + count, True
            notes.append(f"{hypervisor.uri}: {figures}")
        return (total, "; ".join(notes)) if known else (None, "")

    def _host_summary(self, seen: DomainsSeen) -> dict[str, dict]:
        """Per host: whether it answered, its pool domains by state, and its cap."""
        summary = {}
        for uri, host in seen.hosts.items():
            states: dict[str, int] = {}
            for sample in host.domains if host else ():
                states[sample.state] = states.get(sample.state, 0) + 1
            summary[uri] = {
                "reachable": host is not None,
                "domains": states,
                "cap": self.fleet.cap(uri) if self.fleet else None,
            }
        return summary

    def read_queue(self) -> QueueReading:
        """The queue reading; a refusal is logged as an error every tick, as it will not pass."""
        reading = self.monitor.read()
        if reading.refused:
            log.error("the broker refuses the scaler (fix the configuration): %s", reading.problem)
        return reading

    def _views(self, seen: DomainsSeen, reading: QueueReading, cpu: dict[str, float | None]):
        """What the policy sees of each domain: sampled ones as sampled, unseen ones UNKNOWN,
        those of a host given up as LOST."""
        image = self._template.image.id if self._template else None
        sampled = tuple(
            VmView(
                s.name,
                s.state,
                cpu[s.name],
                s.name in reading.consuming,
                self.cpu.percent(s.uri, s.name, last_only=True),
                on_demand=s.on_demand,
                stale=image is not None and bool(s.image) and s.image != image,
            )
            for s in seen.samples
        )
        unseen = tuple(VmView(name, UNKNOWN, None, name in reading.consuming) for name in seen.unseen)
        return sampled + unseen + tuple(VmView(name, LOST) for name in seen.lost)

    def observe_domains(self) -> DomainsSeen:
        seen = DomainsSeen()
        for hypervisor in self.hypervisors:
            self._observe(hypervisor, seen)
        sampled = {sample.name for sample in seen.samples}
        seen.unseen = sorted(set(seen.unseen) - sampled)
        seen.lost = sorted(set(seen.lost) - sampled)
        self.cpu.add(seen.samples)
        return seen

    def _observe(self, hypervisor: Hypervisor, seen: DomainsSeen) -> None:
        """One connection's domains into ``seen``. A failed sample leaves every domain it listed
        last unseen (lost once the host has been silent for the fleet's grace); so does, for up
        to REATTACH_TICKS ticks, a list that lacks some of them just after a reconnect (or lacks
        all of them), as libvirt may not have reattached them."""
        listing = self._listings.setdefault(hypervisor, Listing())
        for name in listing.names:
            seen.host_of[name] = hypervisor.uri
        try:
            host = hypervisor.sample_host()
        except HypervisorUnavailable as exc:
            seen.hosts[hypervisor.uri] = None
            self._unreachable(hypervisor, listing, str(exc), seen)
            return
        listing.unreachable_since = None
        seen.hosts[hypervisor.uri] = host
        found = host.domains
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
            seen.host_of[sample.name] = hypervisor.uri
        seen.samples += found

    def _unreachable(self, hypervisor: Hypervisor, listing: Listing, problem: str, seen: DomainsSeen) -> None:
        """A host that did not answer: its domains are UNKNOWN (the tick degraded) for the
        fleet's grace period, then LOST: their capacity is replaced on the other hosts, and the
        pool may shrink again, as nothing can be known of them until the host answers."""
        now = self.clock()
        if listing.unreachable_since is None:
            listing.unreachable_since = now
        grace = self.fleet.config.host_grace if self.fleet else None
        silent = now - listing.unreachable_since
        if grace is not None and silent >= grace:
            seen.lost += listing.names
            seen.notes.append(
                f"{hypervisor.uri} unreachable for {silent:.0f} s: its {len(listing.names)} domain(s) "
                f"counted as lost ({problem})"
            )
            return
        seen.problems.append(problem)
        seen.unseen += listing.names

    def act(self, report: TickReport, term: int | None = 0) -> list[Action]:
        """Take the decision's actions, each only while the lease of ``term`` still holds; returns
        those not taken for want of it (the report then lists only the taken ones)."""
        if self.dry_run or term is None:
            return []
        if self.leadership.still_leads(term):
            self._progress_saves(report)
            self._discard_stale_saves(report)
        deleted = set()
        actions = list(report.decision.actions)
        for index, action in enumerate(actions):
            if not self.leadership.still_leads(term):
                untaken = actions[index:]
                log.warning("lease lost or not confirmed: not taken: %s", _listed(untaken))
                report.failed_actions.append(f"lease lost before: {_listed(untaken)}")
                report.decision = replace(report.decision, actions=tuple(actions[:index]))
                return untaken
            try:
                if action.action == CREATE:
                    self._create(action.domain)
                    continue
                if action.action == SAVE:
                    self._begin_save(action.domain, report)
                    continue
                hypervisor = self._owner.get(action.domain)
                if hypervisor is None:
                    raise ActionFailed(f"{action.action} {action.domain}: domain not seen on any connection")
                {
                    START: hypervisor.start,
                    SHUTDOWN: hypervisor.shutdown,
                    DESTROY: hypervisor.destroy,
                    DELETE: hypervisor.delete,
                }[action.action](action.domain)
                if action.action == DELETE:
                    deleted.add(hypervisor)
                    self._owner.pop(action.domain, None)
                    if self.fleet is not None:
                        self.fleet.release(action.domain)
            except (ActionFailed, HypervisorUnavailable, TemplateError, ManagementError, OSError) as exc:
                log.error("%s", exc)
                report.failed_actions.append(str(exc))
        if self.leadership.still_leads(term):
            self._collect_garbage(deleted, report)
        return []

    def _begin_save(self, name: str, report: TickReport) -> None:
        """Into the warm pool: the worker drains first (the save follows in a later tick). A
        host without disk room for the save image gets a plain shutdown instead, and says so."""
        hypervisor = self._owner[name]
        no_room = hypervisor.save_room(name)
        if no_room is not None:
            report.notes.append(
                f"{name}: no room to save it on {hypervisor.uri} ({no_room}): shut down instead"
            )
            hypervisor.shutdown(name)
            return
        hypervisor.stop_worker(name)
        self._saving[name] = self.clock()

    def _progress_saves(self, report: TickReport) -> None:
        """Save each draining domain once its worker has left the queue (it acked what it held
        and exited), or once the drain timeout is up (what it held goes back to the queue)."""
        states = {sample.name: sample.state for sample in report.samples}
        timeout = self.policy.config.drain_timeout
        for name, since in list(self._saving.items()):
            if states.get(name) != "running":
                if name in states or name not in report.unseen:
                    del self._saving[name]  # saved, stopped or gone
                continue
            drained = report.reading.consumers_known and name not in report.reading.consuming
            if drained or self.clock() - since >= timeout:
                try:
                    self._owner[name].save(name)
                    del self._saving[name]
                except (ActionFailed, HypervisorUnavailable) as exc:
                    report.failed_actions.append(str(exc))

    def _discard_stale_saves(self, report: TickReport) -> None:
        """A saved domain of another generation (image, template or credentials changed) would
        restore stale code or credentials: its save image goes; it boots cold if ever started."""
        if self.fleet is None or self._template is None:
            return
        current = self.fleet.generation(self._template)
        for sample in report.samples:
            if sample.state == SAVED and sample.generation and sample.generation != current:
                try:
                    self._owner[sample.name].discard_save(sample.name)
                    report.notes.append(f"{sample.name}: save image of an older template discarded")
                except (ActionFailed, HypervisorUnavailable) as exc:
                    report.failed_actions.append(str(exc))

    def _create(self, name: str) -> None:
        """A new domain from the template on the host placement chooses."""
        if self._template is None or self.fleet is None:
            raise ActionFailed(f"create {name}: no template (run `make template`, give --template)")
        room = self.fleet.place(self._rooms, self._template)
        if room is None:
            raise ActionFailed(f"create {name}: no host has room")
        hypervisor = next(h for h in self.hypervisors if h.uri == room.uri)
        settings, tag = self.fleet.settings(name, self._template)
        try:
            hypervisor.create(name, self._template, settings, tag)
        except BaseException:
            try:
                self.fleet.release(name)  # no domain, so no user either
            except ManagementError as exc:
                log.error("%s", exc)
            raise
        self._owner[name] = hypervisor

    def _collect_garbage(self, hosts: set[Hypervisor], report: TickReport) -> None:
        """After deletions, or when the template changed: remove what nothing uses any more."""
        if self.fleet is None or self._template is None:
            return
        if self.fleet.template_changed:
            hosts = set(self.hypervisors)
            self.fleet.template_changed = False
        for hypervisor in hosts:
            try:
                hypervisor.collect_garbage({self._template.image.id})
            except (ActionFailed, HypervisorUnavailable) as exc:
                log.warning("%s", exc)

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


def _listed(actions: list[Action]) -> str:
    return ", ".join(f"{action.action} {action.domain}" for action in actions)


class EventsFile:
    """--events FILE: one JSON object per tick, flushed as it is written."""

    def __init__(self, path: str):
        self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the scaler

    def write(self, report: TickReport) -> None:
        self._handle.write(json.dumps(report.event(), separators=(",", ":")) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()
