"""Where a new pool domain goes: pure code over what each host reported this tick.

A host can take one more domain while it is reachable, below its cap (`--host-max`), and has
the template's memory free. Among those, `spread` (the default) picks the host with the most
free capacity, so a host's loss costs the fewest VMs; `pack` picks the fullest, so whole
hosts stay free for other work. Free capacity is the share of the host's CPUs not yet
committed to running domains' vCPUs (the pool's and others'), then free memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SPREAD, PACK = "spread", "pack"

#: Memory a host keeps for itself beyond the new guest's, bytes: a host is not filled to the last page.
MEMORY_RESERVE = 256 * 2**20


@dataclass
class HostRoom:
    """One host as placement sees it; ``domains`` and ``committed_vcpus`` grow as this tick's
    creations are placed, so several creations in one tick spread too."""

    uri: str
    reachable: bool
    #: Pool domains on the host (every state but lost).
    domains: int
    cap: int | None
    cpus: int = 1
    committed_vcpus: int = 0
    free_memory: int | None = None

    def why_full(self, vcpus: int, memory: int) -> str | None:
        """None if one more domain of that size fits; otherwise why not, in a few words."""
        if not self.reachable:
            return "unreachable"
        if self.cap is not None and self.domains >= self.cap:
            return f"at its cap ({self.domains}/{self.cap})"
        if self.free_memory is not None and self.free_memory < memory + MEMORY_RESERVE:
            return f"{self.free_memory // 2**20} MiB free"
        return None

    def cpu_free_share(self) -> float:
        return 1.0 - self.committed_vcpus / max(self.cpus, 1)

    def take(self, vcpus: int, memory: int) -> None:
        self.domains += 1
        self.committed_vcpus += vcpus
        if self.free_memory is not None:
            self.free_memory -= memory


def choose(hosts: list[HostRoom], vcpus: int, memory: int, mode: str = SPREAD) -> HostRoom | None:
    """The host for one more domain, or None if none has room (``room_note`` says why)."""
    fitting = [host for host in hosts if host.why_full(vcpus, memory) is None]
    if not fitting:
        return None

    def free(host: HostRoom) -> tuple:
        return (host.cpu_free_share(), host.free_memory or 0, -hosts.index(host))

    return max(fitting, key=free) if mode == SPREAD else min(fitting, key=free)


def room(hosts: list[HostRoom], vcpus: int, memory: int, limit: int) -> int:
    """How many more domains fit over all hosts, at most ``limit``: each host's own count (its
    cap and its memory) summed. Where they go does not change how many fit."""
    total = 0
    for host in hosts:
        if host.why_full(vcpus, memory) is not None:
            continue
        fits = limit if host.cap is None else host.cap - host.domains
        if host.free_memory is not None:
            fits = min(fits, (host.free_memory - MEMORY_RESERVE) // memory)
        total += max(fits, 0)
    return min(total, limit)


def room_note(hosts: list[HostRoom], vcpus: int, memory: int) -> str:
    """Why no host takes another domain: each host and its reason."""
    reasons = [f"{host.uri} {host.why_full(vcpus, memory)}" for host in hosts if host.why_full(vcpus, memory)]
    return "no host has room (" + "; ".join(reasons) + ")" if reasons else ""


def parse_host_max(values: list[str], uris: list[str]) -> tuple[int | None, dict[str, int]]:
    """--host-max N (every host) and --host-max URI=N (one host), repeatable: the default cap
    and the per-URI caps. Raises ValueError with a message that says what to fix."""
    default, per_uri = None, {}
    for value in values:
        uri, _, number = value.rpartition("=") if re.search(r"=\d+$", value) else ("", "", value)
        if not number.isdigit() or int(number) < 1:
            raise ValueError(f"--host-max {value!r}: give N or URI=N with N a whole number >= 1")
        if not uri:
            default = int(number)
        elif uri not in uris:
            raise ValueError(f"--host-max {value!r}: {uri} is not one of the --connect URIs")
        else:
            per_uri[uri] = int(number)
    return default, per_uri
