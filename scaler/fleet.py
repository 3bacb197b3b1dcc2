"""The pool as a fleet over several hosts: its template, how many more domains fit and where,
the names they get, and how long a host may be silent before its VMs count as lost.

The loop (scaler/loop.py) asks it each tick; it holds no libvirt connection itself.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from virtscale.scaler import placement, template
from virtscale.scaler.hypervisor import HostSample
from virtscale.scaler.ownership import PoolTag
from virtscale.scaler.placement import SPREAD, HostRoom
from virtscale.scaler.template import Template, TemplateError
from virtscale.vm_identities import VmIdentities

log = logging.getLogger(__name__)

#: Free names offered to the policy beyond the room: it skips those its bookkeeping still holds
#: (a name whose domain failed lately), so it still finds enough.
SPARE_NAMES = 16


@dataclass
class FleetConfig:
    pool: str
    #: The pool's template file; None: no domains are created, only defined ones started.
    template_path: str | None = None
    #: The most pool domains a host runs (None: no cap), and caps for single URIs.
    host_max: int | None = None
    host_max_per_uri: dict[str, int] = field(default_factory=dict)
    placement: str = SPREAD
    #: Seconds a host may be unreachable before its domains count as lost (and are replaced).
    host_grace: float = 60.0


class Fleet:
    def __init__(self, config: FleetConfig, identities: VmIdentities | None = None):
        self.config = config
        #: Makes and removes each VM's own broker user (a template with per_vm_users needs it).
        self.identities = identities
        self._template: Template | None = None
        self._template_stamp: tuple | None = None
        #: Set when a tick loaded a template different from the one before (a refresh is due).
        self.template_changed = False

    def template(self) -> Template | None:
        """The template, read again when its file changed; a broken file keeps the last good
        one (and says so once), so a half-written template never stops the pool."""
        path = self.config.template_path
        if path is None:
            return None
        try:
            stat = os.stat(path)
            stamp = (stat.st_mtime_ns, stat.st_size)
        except OSError as exc:
            if self._template is None:
                raise TemplateError(f"{path}: {exc.strerror}; run `make template`") from None
            return self._template
        if stamp != self._template_stamp:
            self._template_stamp = stamp
            try:
                loaded = template.load(path)
            except TemplateError as exc:
                log.error("%s (keeping the template read before)", exc)
                if self._template is None:
                    raise
                return self._template
            if loaded.pool != self.config.pool:
                raise TemplateError(
                    f"{path} is the template of pool {loaded.pool!r}, not of --pool {self.config.pool!r}"
                )
            self.template_changed = self._template is not None and loaded.id != self._template.id
            if self.template_changed:
                log.info("template changed: image %s, template %s", loaded.image.id, loaded.id)
            self._template = loaded
        return self._template

    def password(self, chosen: Template) -> str:
        """The shared password, read at each use, so a rotated one reaches every domain created
        from then on; "" with a user per VM (each VM's is its own, not the template's)."""
        if chosen.worker.per_vm_users:
            return ""
        return Path(chosen.worker.password_file).read_text().strip()

    def settings(self, name: str, chosen: Template) -> tuple[bytes, PoolTag]:
        """The settings volume's content for a new domain and the tag it is created with; with a
        user per VM, that user is made first (release() removes it again). Raises
        TemplateError when the template wants one but nothing can make it, ManagementError when
        the broker refuses."""
        if not chosen.worker.per_vm_users:
            password = self.password(chosen)
            return template.settings(name, chosen, password), chosen.tag(password)
        if self.identities is None:
            raise TemplateError(
                f"create {name}: the template gives each VM its own broker user; "
                "the scaler needs --provisioner-password-file to make it"
            )
        user, password = self.identities.create(name)
        return template.settings(name, chosen, password, user), chosen.tag("")

    def release(self, name: str) -> None:
        """After ``name``'s domain is deleted or failed to be made: its broker user goes and its
        connections are closed. Raises ManagementError."""
        if self.identities is not None:
            self.identities.remove(name)

    def generation(self, chosen: Template) -> str:
        return template.generation(chosen, self.password(chosen))

    def cap(self, uri: str) -> int | None:
        return self.config.host_max_per_uri.get(uri, self.config.host_max)

    def rooms(self, hosts: dict[str, HostSample | None]) -> list[HostRoom]:
        """Placement's view of each host (None: not reachable this tick)."""
        rooms = []
        for uri, host in hosts.items():
            if host is None:
                rooms.append(HostRoom(uri, False, 0, self.cap(uri)))
                continue
            active = sum(1 for domain in host.domains if domain.state != "shutoff")
            rooms.append(
                HostRoom(uri, True, active, self.cap(uri), host.cpus, host.committed_vcpus, host.free_memory)
            )
        return rooms

    def room(self, rooms: list[HostRoom], chosen: Template | None, limit: int) -> tuple[int, str]:
        """How many domains could be created now, and why not more."""
        if chosen is None:
            return 0, ""
        memory = chosen.memory_mib * 2**20
        count = placement.room(rooms, chosen.vcpus, memory, limit)
        note = placement.room_note(rooms, chosen.vcpus, memory) if count < limit else ""
        return count, note

    def place(self, rooms: list[HostRoom], chosen: Template) -> HostRoom | None:
        """The host for one more domain (its room updated for the next), or None."""
        memory = chosen.memory_mib * 2**20
        host = placement.choose(rooms, chosen.vcpus, memory, self.config.placement)
        if host is not None:
            host.take(chosen.vcpus, memory)
        return host

    def new_names(self, taken: set[str], count: int) -> tuple[str, ...]:
        """The first ``count`` + SPARE_NAMES free names POOL-<n>, lowest n first."""
        names, index = [], 0
        while len(names) < count + SPARE_NAMES:
            index += 1
            name = f"{self.config.pool}-{index}"
            if name not in taken:
                names.append(name)
        return tuple(names)
