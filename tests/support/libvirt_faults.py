"""libvirt faults injected into a real connection (libvirt's test driver): a wrapper that, on the
calls a test names, raises the libvirtError a real daemon raises, with its symbolic code, or
runs a hook first (to undefine a domain between the list and the call, say), or lists no
domains for a while (libvirtd just restarted, its domains not yet reattached)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import libvirt


def libvirt_error(code: int, message: str) -> libvirt.libvirtError:
    """A libvirtError as libvirt raises it, with ``code`` and ``message`` in its error record."""
    error = libvirt.libvirtError(message)
    error.err = (code, libvirt.VIR_FROM_NONE, message, libvirt.VIR_ERR_ERROR, None, None, None, 0, 0)
    return error


@dataclass(frozen=True)
class Fault:
    code: int
    message: str
    #: The error means the connection is gone: isAlive() answers no from then on.
    lost: bool = False

    def error(self) -> libvirt.libvirtError:
        return libvirt_error(self.code, self.message)


#: Every class of libvirt error the scaler can meet, with the message a real daemon gives.
FAULTS = {
    "system-error": Fault(
        libvirt.VIR_ERR_SYSTEM_ERROR, "End of file while reading data: Input/output error", lost=True
    ),
    "rpc": Fault(libvirt.VIR_ERR_RPC, "Unable to read from monitor: Connection reset by peer", lost=True),
    "no-connect": Fault(libvirt.VIR_ERR_NO_CONNECT, "no connection driver available", lost=True),
    "invalid-conn": Fault(
        libvirt.VIR_ERR_INVALID_CONN, "invalid connection pointer in virConnect", lost=True
    ),
    "operation-timeout": Fault(
        libvirt.VIR_ERR_OPERATION_TIMEOUT,
        "Timed out during operation: cannot acquire state change lock (held by monitor=remoteDispatch)",
    ),
    "state-change-lock": Fault(
        libvirt.VIR_ERR_OPERATION_INVALID,
        "Requested operation is not valid: cannot acquire state change lock",
    ),
    "internal-error": Fault(
        libvirt.VIR_ERR_INTERNAL_ERROR, "internal error: process exited while connecting"
    ),
}


class FaultyDomain:
    """A real virDomain whose calls go through its connection's faults first."""

    def __init__(self, domain: libvirt.virDomain, connection: FaultyConnection):
        self._domain = domain
        self._connection = connection

    def __getattr__(self, name: str):
        attribute = getattr(self._domain, name)
        if not callable(attribute) or name in ("name", "ID", "UUIDString"):
            return attribute

        def call(*args, **kwargs):
            self._connection.before(name)
            return attribute(*args, **kwargs)

        return call


class FaultyConnection:
    """A real connection with faults armed per call name (``getAllDomainStats``,
    ``lookupByName``, ``close``, and a domain's ``create``, ``shutdown``, ``destroy``, ``info``,
    ``hasManagedSaveImage``).
    An armed fault fires once. Closing it leaves the real connection open, so that a reopen
    (see Opener) finds the domains as they were, as a restarted libvirtd does."""

    def __init__(self, connection: libvirt.virConnect):
        self._connection = connection
        self.faults: dict[str, Fault] = {}
        self.hooks: dict[str, Callable[[libvirt.virConnect], None]] = {}
        self.alive = True
        #: While above 0, each bulk stats call lists no domain and counts this down.
        self.empty_lists = 0
        self.calls: list[str] = []
        #: Times the Hypervisor closed it (dropped it as lost).
        self.closes = 0

    def __getattr__(self, name: str):
        return getattr(self._connection, name)

    def before(self, name: str) -> None:
        """Run the hook armed for ``name`` and raise its fault, if any."""
        self.calls.append(name)
        hook = self.hooks.pop(name, None)
        if hook is not None:
            hook(self._connection)
        fault = self.faults.pop(name, None)
        if fault is not None:
            if fault.lost:
                self.alive = False
            raise fault.error()

    def isAlive(self) -> int:
        return 1 if self.alive else 0

    def close(self) -> int:
        self.closes += 1
        self.before("close")
        self.alive = False
        return 0

    def getAllDomainStats(self, stats: int, flags: int = 0):
        self.before("getAllDomainStats")
        if self.empty_lists > 0:
            self.empty_lists -= 1
            return []
        return [
            (FaultyDomain(domain, self), found)
            for domain, found in self._connection.getAllDomainStats(stats, flags)
        ]

    def lookupByName(self, name: str):
        self.before("lookupByName")
        return FaultyDomain(self._connection.lookupByName(name), self)


#: What libvirt.open raises while libvirtd is down: nothing listens on its socket.
UNREACHABLE = Fault(
    libvirt.VIR_ERR_SYSTEM_ERROR,
    "Failed to connect socket to '/var/run/libvirt/libvirt-sock': Connection refused",
    lost=True,
)


class Opener:
    """libvirt.open for the Hypervisor under test: ``uri`` opens (once) a real connection and
    hands out the one FaultyConnection around it, alive again on every reopen; other URIs open
    as usual. ``opens`` counts the opens of ``uri``; while ``down``, opening it fails as it does
    while libvirtd is not running (``refused`` counts those)."""

    def __init__(self, uri: str):
        self.uri = uri
        self.real_open = libvirt.open
        self.connection: FaultyConnection | None = None
        self.opens = 0
        self.down = False
        self.refused = 0

    def __call__(self, uri: str):
        if uri != self.uri:
            return self.real_open(uri)
        if self.down:
            self.refused += 1
            raise UNREACHABLE.error()
        self.opens += 1
        if self.connection is None:
            self.connection = FaultyConnection(self.real_open(uri))
        self.connection.alive = True
        return self.connection
