"""Define (or remove) the worker VMs vm-1..vm-N from the base image: `make vms N=3`.

Each VM is a copy-on-write qcow2 overlay of the base disk plus a small JSON settings file
(its name, the broker URL and the worker password) that QEMU hands to the guest through
fw_cfg, so the base image is shared and never edited. The domains are defined shut off;
the scaler starts them.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import os
import string
import subprocess
import sys
import time
import xml.sax.saxutils
from pathlib import Path
from xml.etree import ElementTree

import libvirt

from virtscale.config import OneLineParser

HERE = Path(__file__).resolve().parent
IMAGE_DIR = Path(os.environ.get("VIRTSCALE_IMAGE_DIR", "/var/lib/libvirt/images/virtscale"))
CONSOLE_DIR = Path("/var/log/libvirt/qemu")
#: Where the guest finds the broker under QEMU user-mode networking: the host's loopback.
USER_MODE_BROKER = "10.0.2.2"
#: Ports on the host's loopback the guest's boot-time probe tries: only the broker may be open.
EGRESS_PROBE = [["10.0.2.2", 5672], ["10.0.2.2", 15672], ["10.0.2.2", 5432], ["10.0.2.2", 6379]]

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def probe_domain_type(cache: Path, timeout: float = 20.0) -> str:
    """kvm only if a KVM guest really runs here: boot the image's kernel under KVM with no root
    disk and wait for it to reach its panic. Nested KVM that hangs gives qemu (TCG)."""
    if cache.exists():
        return cache.read_text().strip()
    domain_type = "qemu"
    if os.path.exists("/dev/kvm"):
        command = [
            "qemu-system-x86_64",
            "-accel",
            "kvm",
            "-m",
            "256",
            "-nographic",
            "-no-reboot",
            "-kernel",
            str(IMAGE_DIR / "vmlinuz"),
            "-append",
            "console=ttyS0 panic=-1",
        ]
        started = time.monotonic()
        try:
            output = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
            ).stdout
            if "Kernel panic" in output or "Unable to mount root" in output:
                domain_type = "kvm"
        except subprocess.TimeoutExpired:
            pass
        print(f"vms: KVM probe: {domain_type} ({time.monotonic() - started:.1f} s)", file=sys.stderr)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(domain_type + "\n")
    return domain_type


def backing_file(disk: Path) -> str | None:
    if not disk.exists():
        return None
    info = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(disk)], capture_output=True, text=True, check=False
    )
    return json.loads(info.stdout).get("backing-filename") if info.returncode == 0 else None


def xml_text(value: object) -> str:
    """``value`` escaped for the template: element text or a double-quoted attribute."""
    return xml.sax.saxutils.escape(str(value), {'"': "&quot;", "'": "&apos;"})


def interface_xml(network: str) -> str:
    """QEMU user-mode networking, or an interface on the libvirt network named ``network``."""
    interface = ElementTree.Element("interface", type="user" if network == "user" else "network")
    if network != "user":
        ElementTree.SubElement(interface, "source", network=network)
    ElementTree.SubElement(interface, "model", type="virtio")
    return ElementTree.tostring(interface, encoding="unicode")


def render(name: str, args: argparse.Namespace, domain_type: str, uuid: str | None = None) -> str:
    """The domain XML from domain.xml.in. Every value is escaped (a name, a path or a network
    may hold any character); the optional elements are built whole by ElementTree."""
    values = {
        "name": name,
        "domain_type": domain_type,
        "pool": args.pool,
        "memory_mib": args.memory,
        "vcpus": args.vcpus,
        "image_dir": IMAGE_DIR,
        "config_file": IMAGE_DIR / f"{name}.json",
        "disk": IMAGE_DIR / f"{name}.qcow2",
        "console_log": CONSOLE_DIR / f"{name}.console.log",
    }
    elements = {
        "uuid": f"<uuid>{xml_text(uuid)}</uuid>" if uuid else "",
        "cpu": '<cpu mode="host-passthrough"/>' if domain_type == "kvm" else "",
        "interface": interface_xml(args.network),
    }
    template = string.Template((HERE / "domain.xml.in").read_text())
    return template.substitute({key: xml_text(value) for key, value in values.items()}, **elements)


def write_settings(name: str, args: argparse.Namespace) -> None:
    password = Path(args.password_file).read_text().strip()
    broker = USER_MODE_BROKER if args.network == "user" else args.broker_host
    settings = {
        "name": name,
        "amqp_url": f"amqp://{args.user}@{broker}:{args.broker_port}/%2F",
        "password": password,
        "queue": args.queue,
        "cost": args.cost,
        "network": "user" if args.network == "user" else "dhcp",
        "egress_probe": EGRESS_PROBE if args.network == "user" else [],
    }
    path = IMAGE_DIR / f"{name}.json"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(settings, handle)
    # QEMU runs as libvirt-qemu and reads this file for fw_cfg; nobody else may.
    with contextlib.suppress(KeyError):
        os.chown(path, 0, grp.getgrnam("libvirt-qemu").gr_gid)


def define(connection: libvirt.virConnect, args: argparse.Namespace) -> None:
    if not (IMAGE_DIR / "rootfs.qcow2").exists():
        sys.exit(f"vms: no base image in {IMAGE_DIR}: run `make image` first")
    domain_type = args.domain_type
    if domain_type == "auto":
        domain_type = probe_domain_type(IMAGE_DIR / "domain-type")
    CONSOLE_DIR.mkdir(parents=True, exist_ok=True)
    for index in range(1, args.count + 1):
        name = f"{args.prefix}{index}"
        try:
            existing = connection.lookupByName(name)
        except libvirt.libvirtError:
            existing = None
        if existing is not None and existing.isActive():
            print(f"vms: {name} is running; left as it is")
            continue
        disk = IMAGE_DIR / f"{name}.qcow2"
        base = (IMAGE_DIR / "rootfs.qcow2").resolve()
        if args.fresh_disks or backing_file(disk) != str(base):
            # A new overlay on the current base (the old one, if any, was on an older base).
            disk.unlink(missing_ok=True)
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(disk)],
                check=True,
            )
        write_settings(name, args)
        # Redefining keeps the UUID: libvirt refuses a second domain of the same name.
        uuid = existing.UUIDString() if existing is not None else None
        connection.defineXML(render(name, args, domain_type, uuid))
        print(f"vms: {name} defined ({domain_type}, {args.vcpus} vCPU, {args.memory} MiB), shut off")


def undefine(connection: libvirt.virConnect, args: argparse.Namespace) -> None:
    for domain in connection.listAllDomains():
        name = domain.name()
        if not (name.startswith(args.prefix) and name[len(args.prefix) :].isdigit()):
            continue
        if domain.isActive():
            domain.destroy()
        domain.undefine()
        for suffix in (".qcow2", ".json"):
            (IMAGE_DIR / f"{name}{suffix}").unlink(missing_ok=True)
        print(f"vms: {name} removed")


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="deploy/vms.py", description=__doc__)
    parser.add_argument("command", choices=["define", "undefine"])
    parser.add_argument("--connect", default="qemu:///system")
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--prefix", default="vm-", help="names are PREFIX1..PREFIXN (default: vm-)")
    parser.add_argument("--pool", default="vm-*")
    parser.add_argument(
        "--domain-type",
        choices=["auto", "kvm", "qemu"],
        default="auto",
        help="auto = kvm only if a timed probe boot under KVM succeeds",
    )
    parser.add_argument(
        "--network",
        default="user",
        help="'user' (QEMU user-mode, broker at 10.0.2.2) or a libvirt network name",
    )
    parser.add_argument(
        "--broker-host",
        default="192.168.122.1",
        help="broker address as the guests see it on a libvirt network",
    )
    parser.add_argument("--broker-port", type=int, default=5672)
    parser.add_argument("--user", default="worker")
    parser.add_argument("--password-file", default="var/secrets/worker")
    parser.add_argument("--queue", default="licenses")
    parser.add_argument("--cost", type=int, default=12)
    parser.add_argument("--vcpus", type=int, default=1)
    parser.add_argument("--memory", type=int, default=384, help="MiB")
    parser.add_argument("--fresh-disks", action="store_true", help="recreate the overlays")
    args = parser.parse_args(argv)
    connection = libvirt.open(args.connect)
    try:
        (define if args.command == "define" else undefine)(connection, args)
    finally:
        connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
