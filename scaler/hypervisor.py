"""Everything that talks to libvirt: the pool's domains, their state and CPU time, and the
three things the scaler ever does to one (start, ACPI shutdown, destroy).

Only domains whose names match the pool glob are ever looked at or touched.
Nothing outside this module imports libvirt, and no libvirtError leaves it: each one comes
out as HypervisorUnavailable (no answer this time) or ActionFailed (a refused action).
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import libvirt
import tenacity

from virtscale.backoff import reconnect_wait

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

    def in_pool(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pool)

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
        """The pool's domains: one bulk stats call; per-domain info only where the driver's
        bulk call reports no CPU figures (libvirt's test driver)."""

        def collect(connection: libvirt.virConnect) -> list[DomainSample]:
            now = self.clock()
            samples = []
            for domain, stats in connection.getAllDomainStats(BULK_STATS, 0):
                name = domain.name()
                if not self.in_pool(name):
                    continue
                state = STATE_NAMES.get(stats.get("state.state"), "nostate")
                cpu_time = stats.get("cpu.time")
                vcpus = stats.get("vcpu.current")
                if state != "shutoff" and (cpu_time is None or vcpus is None):
                    cpu_time, vcpus = self._cpu_fallback(domain, cpu_time, vcpus)
                samples.append(
                    DomainSample(
                        name=name,
                        uri=self.uri,
                        state=state,
                        run_id=domain.ID(),
                        cpu_time_ns=cpu_time if state != "shutoff" else None,
                        vcpus=int(vcpus or 1),
                        sampled_at=now,
                    )
                )
            return samples

        return self._call("sampling", collect, HypervisorUnavailable)

    @staticmethod
    def _cpu_fallback(domain, cpu_time, vcpus) -> tuple[int | None, int | None]:
        try:
            _state, _max_memory, _memory, info_vcpus, info_cpu_time = domain.info()
        except libvirt.libvirtError:
            return cpu_time, vcpus  # vanished between the two calls: reported without CPU
        return cpu_time if cpu_time is not None else info_cpu_time, vcpus or info_vcpus

    # -- actions -----------------------------------------------------------------------

    def start(self, name: str) -> None:
        self._act(name, "start", lambda domain: domain.create())

    def shutdown(self, name: str) -> None:
        """ACPI power button: the guest's init stops the worker, which drains and acks."""
        self._act(name, "shutdown", lambda domain: domain.shutdown())

    def destroy(self, name: str) -> None:
        """Pull the plug; unacked jobs go back to the queue, the broker redelivers them."""
        self._act(name, "destroy", lambda domain: domain.destroy())

    def _act(self, name: str, what: str, action: Callable[[libvirt.virDomain], object]) -> None:
        if not self.in_pool(name):
            raise ActionFailed(f"refusing to {what} {name}: not in pool {self.pool!r}")

        def run(connection: libvirt.virConnect) -> None:
            action(connection.lookupByName(name))

        self._call(f"{what} {name}", run, ActionFailed)
        log.info("%s: %s %s", self.uri, what, name)
