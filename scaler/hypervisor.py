"""Everything that talks to libvirt: the pool's domains, their state and CPU time, the host's
free capacity, and what the scaler does to a domain (create, start, ACPI shutdown, destroy,
delete).

Only domains whose metadata carries the pool's tag (scaler/ownership.py) are ever looked at or
touched, whatever their names; an action checks the tag again just before it acts.
Nothing outside this module and scaler/provisioning.py imports libvirt, and no libvirtError
leaves them: each one comes out as HypervisorUnavailable (no answer this time) or ActionFailed
(a refused action).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import libvirt
import libvirt_qemu
import tenacity

from virtscale.backoff import reconnect_wait
from virtscale.scaler import ownership
from virtscale.scaler.ownership import FROM_TEMPLATE, PoolTag
from virtscale.scaler.policy import SAVED
from virtscale.scaler.provisioning import HostStorage
from virtscale.scaler.template import Template

log = logging.getLogger(__name__)

# libvirt prints every error to stderr by default; ours are handled and logged here.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",  # blocked on I/O: up, just idle
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting-down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}

BULK_STATS = (
    libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL | libvirt.VIR_DOMAIN_STATS_VCPU
)
#: Seconds to wait for the guest agent (it answers in milliseconds when the guest runs).
AGENT_TIMEOUT = 10
#: Seconds between two tries of a guest agent that has not reconnected yet after a restore.
AGENT_RETRY = 0.1
#: Disk a save image may take, as a multiple of the guest's memory.
SAVE_MARGIN = 1.25
#: The worker's unit in the guest image, stopped before a save and started after a restore.
WORKER_UNIT = "virtscale-worker.service"

#: Seconds a domain's pool tag is trusted before it is read again: tagging (make tag) is
#: noticed within this, while a tick reads the metadata of new domains only. Actions always
#: read it afresh.
OWNERSHIP_RECHECK = 30.0

#: libvirt error codes that mean the connection to libvirtd is gone (reconnect), not a bad request.
CONNECTION_ERRORS = frozenset(
    {
        libvirt.VIR_ERR_SYSTEM_ERROR,
        libvirt.VIR_ERR_RPC,
        libvirt.VIR_ERR_NO_CONNECT,
        libvirt.VIR_ERR_INVALID_CONN,
        libvirt.VIR_ERR_INTERNAL_ERROR,
    }
)


class HypervisorUnavailable(Exception):
    """No answer from libvirt this time: libvirtd is unreachable (reconnected with capped
    backoff) or the call failed. The scaler keeps ticking, degraded, and asks again."""


class HypervisorRefused(Exception):
    """The --connect URI cannot be opened at all (bad URI, no such driver): fix the flag."""


class ActionFailed(Exception):
    """libvirt refused to start or stop a domain; the message names it and says why. The
    policy's bookkeeping (boot and drain timeouts) decides what to try next."""


@dataclass(frozen=True)
class DomainSample:
    """What one tick saw of one pool domain."""

    name: str
    uri: str
    state: str
    #: Changes every time the domain starts: a CPU counter from before it is not comparable.
    run_id: int
    #: Total CPU time of all vCPUs, nanoseconds; None where libvirt did not report it.
    cpu_time_ns: int | None
    vcpus: int
    #: Monotonic seconds when it was sampled.
    sampled_at: float
    #: ownership.FROM_TEMPLATE (created on demand, deleted on scale-in) or ownership.DEFINED.
    origin: str = ownership.DEFINED
    #: The worker image it was made from ("" when unknown).
    image: str = ""
    #: Its settings' generation (template.generation; "" when unknown).
    generation: str = ""

    @property
    def on_demand(self) -> bool:
        return self.origin == FROM_TEMPLATE


@dataclass(frozen=True)
class HostSample:
    """One tick's view of one host: the pool's domains and what room is left for more."""

    uri: str
    domains: list[DomainSample]
    #: Every domain name on the host, the pool's or not: a new domain must not take one.
    names: frozenset[str]
    #: Bytes of memory the host could still give (free + page cache); None if not reported.
    free_memory: int | None
    cpus: int
    #: vCPUs of all running domains on the host, the pool's or not.
    committed_vcpus: int


def _reason(exc: libvirt.libvirtError) -> str:
    return exc.get_error_message() or str(exc)


def _alive(connection: libvirt.virConnect) -> bool:
    try:
        return bool(connection.isAlive())
    except libvirt.libvirtError:
        return False


class Hypervisor:
    """One libvirt connection, reopened with capped, jittered backoff when libvirtd goes away.

    The backoff never sleeps: the scaler's tick must not block. tenacity's wait strategy
    gives each delay from the count of failed opens (a RetryCallState), and until the next
    attempt is due every call answers HypervisorUnavailable at once."""

    def __init__(self, uri: str, pool: str, clock: Callable[[], float] = time.monotonic):
        self.uri = uri
        self.pool = pool
        self.clock = clock
        #: Pool tag (or None) by domain UUID, and when it was read.
        self._tags: dict[str, tuple[PoolTag | None, float]] = {}
        self._connection: libvirt.virConnect | None = None
        self._wait = reconnect_wait()
        #: The failed opens since the last success (None: the last open worked).
        self._retry_state: tenacity.RetryCallState | None = None
        self._next_attempt = 0.0
        #: Connections opened so far: when it changes, libvirtd may have just restarted and not
        #: yet listed every domain again (the scaler then waits before believing an absence).
        self.connections = 0

    @property
    def next_attempt(self) -> float:
        """Clock time from which the next connection attempt may be made."""
        return self._next_attempt

    @staticmethod
    def check_uri(uri: str) -> None:
        """Open and close ``uri`` once: HypervisorRefused if libvirt cannot open it at all,
        HypervisorUnavailable if only the daemon is not answering (worth retrying)."""
        try:
            libvirt.open(uri).close()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_SYSTEM_ERROR:
                raise HypervisorUnavailable(f"{uri}: {_reason(exc)}") from None
            raise HypervisorRefused(f"--connect {uri!r}: {_reason(exc)}") from None

    def _tag(self, domain: libvirt.virDomain, now: float, uuid: str | None = None) -> PoolTag | None:
        """The domain's pool tag, read again after OWNERSHIP_RECHECK seconds."""
        uuid = uuid or domain.UUIDString()
        cached = self._tags.get(uuid)
        if cached is not None and now - cached[1] < OWNERSHIP_RECHECK:
            return cached[0]
        tag = read_tag(domain)
        self._tags[uuid] = (tag, now)
        return tag

    def _owned(self, domain: libvirt.virDomain, now: float, uuid: str | None = None) -> PoolTag | None:
        tag = self._tag(domain, now, uuid)
        return tag if tag is not None and tag.pool == self.pool else None

    def _connect(self) -> libvirt.virConnect:
        connection = self._connection
        if connection is not None:
            if _alive(connection):
                return connection
            self._drop("connection to libvirtd lost")
        now = self.clock()
        if now < self._next_attempt:
            raise HypervisorUnavailable(
                f"{self.uri}: libvirtd unreachable; next attempt in {self._next_attempt - now:.1f} s"
            )
        try:
            self._connection = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            delay = self._schedule_retry(now, exc)
            raise HypervisorUnavailable(
                f"{self.uri}: {_reason(exc)}; next attempt in {delay:.1f} s"
            ) from None
        self.connections += 1
        if self._retry_state is not None:
            log.info("%s: reconnected to libvirtd", self.uri)
            self._retry_state = None
        return self._connection

    def _schedule_retry(self, now: float, exc: libvirt.libvirtError) -> float:
        """Count a failed open and set when the next one is due; returns the delay in seconds."""
        state = self._retry_state
        if state is None:
            state = self._retry_state = tenacity.RetryCallState(None, None, (), {})
        else:
            state.prepare_for_next_attempt()
        state.set_exception((type(exc), exc, None))
        delay = self._wait(state)
        self._next_attempt = now + delay
        return delay

    def _drop(self, why: str) -> None:
        log.warning("%s: %s", self.uri, why)
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(libvirt.libvirtError):
                connection.close()

    def _call(self, what: str, action: Callable[[libvirt.virConnect], object], failed: type[Exception]):
        """``action`` on the connection, with every libvirtError turned into one of ours: a lost
        connection is dropped (reopened with backoff) as HypervisorUnavailable; any other error
        becomes ``failed``, saying what was attempted."""
        connection = self._connect()
        try:
            return action(connection)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in CONNECTION_ERRORS and not _alive(connection):
                self._drop(f"{what}: {_reason(exc)}")
                raise HypervisorUnavailable(f"{self.uri}: {_reason(exc)}") from None
            raise failed(f"{what} on {self.uri}: {_reason(exc)}") from None

    def sample(self) -> list[DomainSample]:
        return self.sample_host().domains

    def sample_host(self) -> HostSample:
        """The pool's domains and the host's room: one bulk stats call; per-domain info only
        where the driver's bulk call reports no CPU figures (libvirt's test driver)."""

        def collect(connection: libvirt.virConnect) -> HostSample:
            now = self.clock()
            samples, names, uuids, committed = [], set(), set(), 0
            for domain, stats in connection.getAllDomainStats(BULK_STATS, 0):
                uuid = domain.UUIDString()
                names.add(domain.name())
                uuids.add(uuid)
                state = STATE_NAMES.get(stats.get("state.state"), "nostate")
                if state != "shutoff":
                    committed += int(stats.get("vcpu.current") or 0)
                tag = self._owned(domain, now, uuid)
                if tag is not None:
                    samples.append(self._domain_sample(domain, stats, state, tag, now))
            self._tags = {uuid: tag for uuid, tag in self._tags.items() if uuid in uuids}
            return HostSample(
                self.uri, samples, frozenset(names), _free_memory(connection), _cpus(connection), committed
            )

        return self._call("sampling", collect, HypervisorUnavailable)

    def _domain_sample(self, domain, stats: dict, state: str, tag: PoolTag, now: float) -> DomainSample:
        cpu_time = stats.get("cpu.time")
        vcpus = stats.get("vcpu.current")
        if state != "shutoff" and (cpu_time is None or vcpus is None):
            cpu_time, vcpus = self._cpu_fallback(domain, cpu_time, vcpus)
        if state == "shutoff" and _has_save_image(domain):
            state = SAVED
        return DomainSample(
            name=domain.name(),
            uri=self.uri,
            state=state,
            run_id=domain.ID(),
            cpu_time_ns=cpu_time if state != "shutoff" else None,
            vcpus=int(vcpus or 1),
            sampled_at=now,
            origin=tag.origin,
            image=tag.image,
            generation=tag.generation,
        )

    @staticmethod
    def _cpu_fallback(domain, cpu_time, vcpus) -> tuple[int | None, int | None]:
        try:
            _state, _max_memory, _memory, info_vcpus, info_cpu_time = domain.info()
        except libvirt.libvirtError:
            return cpu_time, vcpus  # vanished between the two calls: reported without CPU
        return cpu_time if cpu_time is not None else info_cpu_time, vcpus or info_vcpus

    # -- actions -----------------------------------------------------------------------

    def start(self, name: str) -> None:
        """Boot a shut-off domain, or restore a saved one: then its clock is put right (it is
        behind by the time it spent saved) and its worker, stopped before the save, started."""

        def start(domain: libvirt.virDomain) -> None:
            saved = _has_save_image(domain)
            domain.create()
            if saved:
                self._after_restore(domain)

        self._act(name, "start", start)

    def _after_restore(self, domain: libvirt.virDomain) -> None:
        """The guest's clock put right, then its parked worker resumed, in one guest-exec: the
        agent's own guest-set-time also writes the RTC (`hwclock -w`, which waits for a second
        boundary and took 0.5-3.6 s in a TCG guest), while the worker needs only the system
        clock. The time is read just before the command goes out; the agent may need a moment to
        reconnect after the restore."""
        deadline = time.monotonic() + AGENT_TIMEOUT
        while True:
            try:
                guest_exec(domain, "/bin/sh", "-c", resume_script(time.time()))
                return
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_AGENT_UNRESPONSIVE or time.monotonic() > deadline:
                    raise
                time.sleep(AGENT_RETRY)

    def stop_worker(self, name: str) -> None:
        """First step of a save: the worker stops taking jobs, finishes and acks those in hand,
        closes its connection and parks (SIGUSR1); the scaler saves the domain once it has left
        the queue, and resumes the worker (SIGUSR2) right after the restore."""

        def park(domain: libvirt.virDomain) -> None:
            guest_exec(domain, "/bin/systemctl", "kill", "--signal=SIGUSR1", WORKER_UNIT)

        self._act(name, "drain", park)

    def save(self, name: str) -> None:
        """Managed save: the memory to disk, the domain shut off; a start restores it."""
        self._act(name, "save", lambda domain: domain.managedSave(0))

    def save_room(self, name: str) -> str | None:
        """None if the host's storage has room for ``name``'s save image (its memory, with a
        margin); else why not."""
        count, figures = self.save_capacity(name)
        return None if count > 0 else figures

    def save_capacity(self, name: str) -> tuple[int, str]:
        """How many save images of ``name``'s size the host's storage can take now, and the
        figures behind it. The storage pool's filesystem stands for the host's disk."""

        def room(connection: libvirt.virConnect) -> tuple[int, str]:
            memory = connection.lookupByName(name).info()[2] * 1024  # KiB -> bytes
            available = self._storage(connection).storage_pool().info()[3]
            image = memory * SAVE_MARGIN
            count = int(available // image) if image > 0 else 0
            return count, f"{available // 2**20} MiB free for {memory // 2**20} MiB save images"

        return self._call(f"disk room for saving {name}", room, ActionFailed)

    def discard_save(self, name: str) -> None:
        """Throw a saved domain's save image away (stale image, template or settings): its next
        start is a cold boot on what it is defined with."""
        self._act(name, "discard save image of", lambda domain: domain.managedSaveRemove(0))

    def shutdown(self, name: str) -> None:
        """ACPI power button: the guest's init stops the worker, which drains and acks."""
        self._act(name, "shutdown", lambda domain: domain.shutdown())

    def destroy(self, name: str) -> None:
        """Pull the plug; unacked jobs go back to the queue, the broker redelivers them."""
        self._act(name, "destroy", lambda domain: domain.destroy())

    def delete(self, name: str) -> None:
        """Destroy, undefine and remove the volumes of a domain the scaler created; one an
        operator defined is never deleted."""

        def delete(domain: libvirt.virDomain) -> None:
            if read_tag(domain).origin != FROM_TEMPLATE:
                raise ActionFailed(
                    f"refusing to delete {name}: defined by an operator, not created by the scaler"
                )
            self._storage(domain.connect()).delete(name)

        self._act(name, "delete", delete)

    def create(
        self, name: str, template: Template, settings: bytes, tag: PoolTag, *, start: bool = True
    ) -> None:
        """A new pool domain from ``template`` (volumes through libvirt's storage API), started
        unless ``start`` is False. Refused if the host already has a domain of that name."""

        def create(connection: libvirt.virConnect) -> None:
            with contextlib.suppress(libvirt.libvirtError):
                connection.lookupByName(name)
                raise ActionFailed(f"refusing to create {name} on {self.uri}: a domain of that name exists")
            self._storage(connection).create(name, template, tag, settings, start=start)

        self._call(f"create {name}", create, ActionFailed)
        log.info("%s: create %s (image %s)", self.uri, name, template.image.id)

    def collect_garbage(self, images_in_use: set[str]) -> list[str]:
        """Remove uploaded images nothing uses and volumes of domains that no longer exist."""

        def collect(connection: libvirt.virConnect) -> list[str]:
            domains = connection.listAllDomains()
            in_use = set(images_in_use)
            for domain in domains:
                tag = read_tag(domain)  # any pool's: another pool may share the storage pool
                if tag is not None and tag.image:
                    in_use.add(tag.image)
            return self._storage(connection).collect_garbage(in_use, {d.name() for d in domains})

        removed = self._call("collecting garbage", collect, ActionFailed)
        if removed:
            log.info("%s: removed unused volumes %s", self.uri, ", ".join(removed))
        return removed

    def tag(self, name: str, origin: str = ownership.DEFINED) -> None:
        """Put the pool's tag on an existing domain (persistently, and live if it runs). A
        domain tagged for another pool is refused: it is someone else's."""

        def tag(connection: libvirt.virConnect) -> None:
            domain = connection.lookupByName(name)
            current = read_tag(domain)
            if current is not None and current.pool != self.pool:
                raise ActionFailed(f"refusing to tag {name}: it belongs to pool {current.pool!r}")
            flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
            if domain.isActive():
                flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
            element = PoolTag(self.pool, origin, current.image if current else "").element()
            domain.setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT, element, ownership.PREFIX, ownership.NAMESPACE, flags
            )
            self._tags.pop(domain.UUIDString(), None)

        self._call(f"tag {name}", tag, ActionFailed)
        log.info("%s: tagged %s for pool %s", self.uri, name, self.pool)

    def _storage(self, connection: libvirt.virConnect) -> HostStorage:
        return HostStorage(connection)

    def _act(self, name: str, what: str, action: Callable[[libvirt.virDomain], object]) -> None:
        def run(connection: libvirt.virConnect) -> None:
            domain = connection.lookupByName(name)
            tag = read_tag(domain)  # afresh: never act on a domain that is not the pool's now
            if tag is None or tag.pool != self.pool:
                raise ActionFailed(
                    f"refusing to {what} {name} on {self.uri}: not tagged for pool {self.pool!r}"
                )
            action(domain)

        self._call(f"{what} {name}", run, ActionFailed)
        log.info("%s: %s %s", self.uri, what, name)


def read_tag(domain: libvirt.virDomain) -> PoolTag | None:
    """The domain's pool tag as libvirt has it now; None if it has none."""
    try:
        return ownership.parse(domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, ownership.NAMESPACE))
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN_METADATA, libvirt.VIR_ERR_NO_SUPPORT):
            return None
        raise


def _has_save_image(domain: libvirt.virDomain) -> bool:
    try:
        return bool(domain.hasManagedSaveImage(0))
    except libvirt.libvirtError:
        return False  # the test driver, or gone meanwhile: no save image to restore


def resume_script(now: float) -> str:
    """The guest's clock set to `now` (the host's, in seconds since the epoch), then its worker
    resumed (SIGUSR2): what a restored guest runs."""
    # The shell's own kill on the unit's cgroup: systemctl would add a quarter of a second in a
    # TCG guest. systemctl stays the fallback for a guest without the unified cgroup hierarchy.
    procs = f"/sys/fs/cgroup/system.slice/{WORKER_UNIT}/cgroup.procs"
    return (
        f"date -u -s @{now:.3f} >/dev/null; "
        f"if [ -r {procs} ]; then while read -r pid; do kill -USR2 $pid; done < {procs}; "
        f"else exec /bin/systemctl kill --signal=SIGUSR2 {WORKER_UNIT}; fi"
    )


def guest_exec(domain: libvirt.virDomain, path: str, *args: str) -> None:
    """Run a command in the guest through the QEMU guest agent (nothing waits for its end)."""
    command = {"execute": "guest-exec", "arguments": {"path": path, "arg": list(args)}}
    libvirt_qemu.qemuAgentCommand(domain, json.dumps(command), AGENT_TIMEOUT, 0)


def _free_memory(connection: libvirt.virConnect) -> int | None:
    """What the host could still give a new guest: free memory plus the page cache, bytes."""
    try:
        stats = connection.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS)
        return 1024 * sum(stats.get(key, 0) for key in ("free", "buffers", "cached"))
    except libvirt.libvirtError:
        pass
    try:
        return connection.getFreeMemory() or None
    except libvirt.libvirtError:
        return None


def _cpus(connection: libvirt.virConnect) -> int:
    return int(connection.getInfo()[2])
