"""Define (or remove) the pool's own worker VMs POOL-1..POOL-N from the pool's template:
`make vms N=3`.

They are made exactly like the domains the scaler creates on demand (scaler/provisioning.py:
a qcow2 overlay of the uploaded image and a settings volume, through libvirt's storage API)
but tagged as defined: shut off here, started and stopped by the scaler, never deleted by it.
A domain that is running is left as it is.
"""

from __future__ import annotations

import sys
from pathlib import Path

import libvirt

from virtscale.config import OneLineParser, queue_name
from virtscale.management import ManagementApi, ManagementError
from virtscale.naming import QueueNames
from virtscale.scaler import template
from virtscale.scaler.hypervisor import read_tag
from virtscale.scaler.ownership import DEFINED, pool_name
from virtscale.scaler.provisioning import HostStorage
from virtscale.scaler.template import TemplateError
from virtscale.topology_spec import PROVISIONER
from virtscale.vm_identities import VmIdentities

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def lookup(connection: libvirt.virConnect, name: str) -> libvirt.virDomain | None:
    try:
        return connection.lookupByName(name)
    except libvirt.libvirtError:
        return None


def define(
    connection: libvirt.virConnect,
    made: template.Template,
    count: int,
    prefix: str,
    identities: VmIdentities | None = None,
) -> None:
    storage = HostStorage(connection)
    if made.worker.per_vm_users and identities is None:
        raise TemplateError(
            "the template gives each VM its own broker user: give --provisioner-password-file"
        )
    shared = "" if made.worker.per_vm_users else Path(made.worker.password_file).read_text().strip()
    for index in range(1, count + 1):
        name = f"{prefix}{index}"
        existing = lookup(connection, name)
        if existing is not None:
            tag = read_tag(existing)
            if tag is None or tag.pool != made.pool:
                print(f"vms: {name} exists and is not in pool {made.pool}; left alone", file=sys.stderr)
                continue
            if existing.isActive():
                print(f"vms: {name} is running; left as it is")
                continue
            storage.delete(name)  # shut off: made again on the current template
        tag = made.tag(shared, DEFINED)
        if identities is None:
            settings = template.settings(name, made, shared)
        else:  # a new user and password: the old ones of this name go
            user, password = identities.create(name)
            settings = template.settings(name, made, password, user)
        try:
            storage.create(name, made, tag, settings, start=False)
        except BaseException:
            if identities is not None:
                identities.remove(name)
            raise
        print(f"vms: {name} defined ({made.domain_type}, {made.vcpus} vCPU, {made.memory_mib} MiB), shut off")


def undefine(connection: libvirt.virConnect, pool: str, identities: VmIdentities | None = None) -> None:
    """Every domain of the pool, defined or created on demand, with its volumes and its broker
    user (whose connections are closed)."""
    storage = HostStorage(connection)
    for domain in connection.listAllDomains():
        tag = read_tag(domain)
        if tag is not None and tag.pool == pool:
            storage.delete(domain.name())
            if identities is not None:
                identities.remove(domain.name())
            print(f"vms: {domain.name()} removed")


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="deploy/vms.py", description=__doc__)
    parser.add_argument("command", choices=["define", "undefine"])
    parser.add_argument("--connect", default="qemu:///system", metavar="URI")
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument(
        "--pool", type=pool_name, default="vm", help="undefine: the pool (default: %(default)s)"
    )
    parser.add_argument("--template", metavar="FILE", help="define: default var/template/POOL.json")
    parser.add_argument("--prefix", help="define: names are PREFIX1..PREFIXN (default: the template's POOL-)")
    parser.add_argument(
        "--provisioner-password-file",
        metavar="FILE",
        help="the provisioner's password (var/secrets/provisioner): each VM gets its own broker user",
    )
    parser.add_argument("--management-url", metavar="URL", default="http://127.0.0.1:15672")
    parser.add_argument("--queue", type=queue_name, default="licenses", help="the job queue (VMs' rights)")
    parser.add_argument("--vhost", default="/")
    args = parser.parse_args(argv)
    identities = None
    if args.provisioner_password_file:
        password = Path(args.provisioner_password_file).read_text().strip()
        api = ManagementApi(args.management_url, (PROVISIONER, password))
        identities = VmIdentities(api, QueueNames(args.queue), args.vhost)
    connection = libvirt.open(args.connect)
    try:
        if args.command == "define":
            made = template.load(args.template or f"var/template/{args.pool}.json")
            define(connection, made, args.count, args.prefix or f"{made.pool}-", identities)
        else:
            undefine(connection, args.pool, identities)
    except TemplateError as exc:
        parser.exit(2, f"deploy/vms.py: error: {exc}\n")
    except ManagementError as exc:
        parser.exit(1, f"deploy/vms.py: error: {exc}\n")
    finally:
        connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
