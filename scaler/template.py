"""The pool's template: what a new pool domain is made of (the worker image, vCPUs, memory,
network, the worker's settings), like an Auto Scaling launch template.

`make template` writes it as JSON (deploy/template.py); the scaler reads it again whenever the
file changes, so a new image or new worker settings reach the domains it creates next (and a
refresh replaces the running ones). Only pure code here: the file, the domain XML and a VM's
settings; libvirt is spoken to in scaler/provisioning.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from virtscale.scaler.ownership import FROM_TEMPLATE, PoolTag

#: The kernel's command line: the overlay is vda; everything else the guest learns from its
#: settings disk. panic=-1 turns a kernel panic into a reboot, which on_reboot restarts.
KERNEL_CMDLINE = "root=/dev/vda rw console=ttyS0 quiet panic=-1 systemd.show_status=0"
#: The serial number by which the guest finds its settings disk (deploy/image/guest-config.py).
SETTINGS_SERIAL = "virtscale-config"
#: Size of a settings volume; the JSON is a few hundred bytes, zero-padded.
SETTINGS_BYTES = 65536


class TemplateError(Exception):
    """The template file is missing, unreadable or incomplete: run `make template` again."""


@dataclass(frozen=True)
class Image:
    """The worker image's three files on the scaler's machine, and their content hash."""

    id: str
    rootfs: str
    #: The qcow2's virtual size in bytes: an overlay gets the same.
    rootfs_virtual_size: int
    kernel: str
    initrd: str


@dataclass(frozen=True)
class WorkerSettings:
    """What the worker in each VM is told. With ``per_vm_users`` each VM gets a broker user of its
    own, made with its domain (virtscale/vm_identities.py), whose name replaces the one in
    ``amqp_url``; else every VM logs in as the URL's user with the password in password_file
    (read when a domain is created, so that it is never in the template itself)."""

    amqp_url: str
    password_file: str
    queue: str
    cost: int
    network: str = "user"
    egress_probe: tuple = ()
    per_vm_users: bool = False
    #: The CA (PEM) an amqps:// broker's certificate must chain to: public, so kept here.
    ca: str = ""


@dataclass(frozen=True)
class Template:
    pool: str
    image: Image
    worker: WorkerSettings
    vcpus: int = 1
    memory_mib: int = 384
    domain_type: str = "qemu"
    #: "user" (QEMU user-mode networking) or the name of a libvirt network on every host.
    network: str = "user"

    @property
    def id(self) -> str:
        """Changes whenever anything a VM is made of changes (image, sizes, settings)."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def tag(self, password: str, origin: str = FROM_TEMPLATE) -> PoolTag:
        return PoolTag(self.pool, origin, self.image.id, generation(self, password))


def generation(template: Template, password: str) -> str:
    """Changes when the template or the worker's password does: a domain saved under another
    generation would restore stale code or stale credentials. A digest of a random password
    reveals nothing of it."""
    return hashlib.sha256(f"{template.id}\0{password}".encode()).hexdigest()[:16]


def load(path: str | Path) -> Template:
    try:
        data = json.loads(Path(path).read_text())
        return Template(
            pool=data["pool"],
            image=Image(**data["image"]),
            worker=WorkerSettings(
                **{
                    **data["worker"],
                    "egress_probe": tuple(map(tuple, data["worker"].get("egress_probe", ()))),
                }
            ),
            **{key: data[key] for key in ("vcpus", "memory_mib", "domain_type", "network") if key in data},
        )
    except FileNotFoundError:
        raise TemplateError(f"{path}: no such template; run `make template`") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TemplateError(f"{path}: not a usable template ({exc}); run `make template` again") from None


def dump(template: Template) -> str:
    return json.dumps(dataclasses.asdict(template), indent=2, sort_keys=True) + "\n"


def settings(name: str, template: Template, password: str, user: str | None = None) -> bytes:
    """The JSON the guest reads from its settings disk, zero-padded to SETTINGS_BYTES; ``user``
    (a VM's own broker user) replaces the one in the template's URL."""
    worker = template.worker
    data = json.dumps(
        {
            "name": name,
            "amqp_url": worker.amqp_url if user is None else with_user(worker.amqp_url, user),
            "password": password,
            "ca": worker.ca,
            "queue": worker.queue,
            "cost": worker.cost,
            "network": "user" if template.network == "user" else "dhcp",
            "egress_probe": [list(probe) for probe in worker.egress_probe],
        }
    ).encode()
    if len(data) > SETTINGS_BYTES:
        raise TemplateError(f"settings of {name} are {len(data)} bytes, more than {SETTINGS_BYTES}")
    return data


def with_user(url: str, user: str) -> str:
    """``url`` with ``user`` as its user name (and no password: that goes on its own)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{urllib.parse.quote(user, safe='')}@{host}"))


@dataclass(frozen=True)
class DomainFiles:
    """Where one host keeps what a domain needs: paths libvirt gave for the image's volumes,
    and the storage pool holding the domain's own overlay and settings volumes."""

    kernel: str
    initrd: str
    storage_pool: str
    overlay_volume: str
    settings_volume: str
    console_log: str


def domain_xml(
    name: str, template: Template, files: DomainFiles, tag: PoolTag, uuid: str | None = None
) -> str:
    """The domain XML. The password is not in it (it is on the settings volume), so a
    read-only libvirt client that dumps the XML learns nothing secret."""
    domain = ElementTree.Element("domain", type=template.domain_type)
    ElementTree.SubElement(domain, "name").text = name
    if uuid:
        ElementTree.SubElement(domain, "uuid").text = uuid
    ElementTree.SubElement(domain, "description").text = f"virtscale worker VM, pool {template.pool}"
    metadata = ElementTree.SubElement(domain, "metadata")
    metadata.append(ElementTree.fromstring(tag.metadata_xml()))
    ElementTree.SubElement(domain, "memory", unit="MiB").text = str(template.memory_mib)
    ElementTree.SubElement(domain, "vcpu").text = str(template.vcpus)
    boot = ElementTree.SubElement(domain, "os")
    ElementTree.SubElement(boot, "type", arch="x86_64", machine="pc").text = "hvm"
    ElementTree.SubElement(boot, "kernel").text = files.kernel
    ElementTree.SubElement(boot, "initrd").text = files.initrd
    ElementTree.SubElement(boot, "cmdline").text = KERNEL_CMDLINE
    ElementTree.SubElement(ElementTree.SubElement(domain, "features"), "acpi")
    if template.domain_type == "kvm":
        ElementTree.SubElement(domain, "cpu", mode="host-passthrough")
    for event, what in (("on_poweroff", "destroy"), ("on_reboot", "restart"), ("on_crash", "destroy")):
        ElementTree.SubElement(domain, event).text = what
    _devices(ElementTree.SubElement(domain, "devices"), template, files)
    return ElementTree.tostring(domain, encoding="unicode")


def _devices(devices: ElementTree.Element, template: Template, files: DomainFiles) -> None:
    overlay = ElementTree.SubElement(devices, "disk", type="volume", device="disk")
    ElementTree.SubElement(overlay, "driver", name="qemu", type="qcow2", discard="unmap")
    ElementTree.SubElement(overlay, "source", pool=files.storage_pool, volume=files.overlay_volume)
    ElementTree.SubElement(overlay, "target", dev="vda", bus="virtio")
    config = ElementTree.SubElement(devices, "disk", type="volume", device="disk")
    ElementTree.SubElement(config, "driver", name="qemu", type="raw")
    ElementTree.SubElement(config, "source", pool=files.storage_pool, volume=files.settings_volume)
    ElementTree.SubElement(config, "target", dev="vdb", bus="virtio")
    ElementTree.SubElement(config, "serial").text = SETTINGS_SERIAL
    ElementTree.SubElement(config, "readonly")
    interface = ElementTree.SubElement(
        devices, "interface", type="user" if template.network == "user" else "network"
    )
    if template.network != "user":
        ElementTree.SubElement(interface, "source", network=template.network)
    ElementTree.SubElement(interface, "model", type="virtio")
    serial = ElementTree.SubElement(devices, "serial", type="file")
    ElementTree.SubElement(serial, "source", path=files.console_log, append="off")
    ElementTree.SubElement(serial, "target", port="0")
    # The QEMU guest agent: sets a restored guest's clock and stops or starts its worker.
    agent = ElementTree.SubElement(devices, "channel", type="unix")
    ElementTree.SubElement(agent, "target", type="virtio", name="org.qemu.guest_agent.0")
    rng = ElementTree.SubElement(devices, "rng", model="virtio")
    ElementTree.SubElement(rng, "backend", model="random").text = "/dev/urandom"
    ElementTree.SubElement(devices, "memballoon", model="none")
