"""What `run` and `status` share: the pool's flags (libvirt, broker, management API), the Scaler
built from them, every flag checked before anything connects, and the start-up check that the
broker accepts the scaler's credentials."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable

from virtscale.cli_support import broker_nodes, resolve_and_check_amqp_urls
from virtscale.config import (
    add_common_options,
    add_management_options,
    bounded_float,
    broker_identity,
    resolve_management_urls,
)
from virtscale.management import ManagementApi
from virtscale.naming import QueueNames
from virtscale.scaler import placement
from virtscale.scaler.fleet import Fleet, FleetConfig
from virtscale.scaler.hypervisor import Hypervisor, HypervisorRefused, HypervisorUnavailable
from virtscale.scaler.loop import Scaler, TickReport
from virtscale.scaler.ownership import pool_name
from virtscale.scaler.policy import Policy
from virtscale.scaler.queue_monitor import QueueMonitor
from virtscale.topology_spec import PROVISIONER
from virtscale.vm_identities import VmIdentities

log = logging.getLogger(__name__)

DEFAULT_CONNECT = "qemu:///system"


#: Where `make template` writes the template of pool P: var/template/P.json.
TEMPLATE_DIR = "var/template"


def add_pool_options(parser: argparse.ArgumentParser) -> None:
    add_common_options(parser)
    group = parser.add_argument_group("pool")
    group.add_argument(
        "--connect",
        action="append",
        metavar="URI",
        help=f"libvirt URI, repeatable: one per host (default: {DEFAULT_CONNECT})",
    )
    group.add_argument(
        "--pool",
        type=pool_name,
        default="vm",
        metavar="NAME",
        help="the pool: only domains whose libvirt metadata carries this pool's tag are touched; "
        "new ones are named NAME-<n> (default: %(default)s)",
    )
    group.add_argument(
        "--template",
        metavar="FILE",
        help="the pool's template (make template); with it the scaler creates domains on demand "
        f"and deletes them when it scales in (default: {TEMPLATE_DIR}/NAME.json if it exists)",
    )
    group.add_argument(
        "--host-max",
        action="append",
        default=[],
        metavar="N|URI=N",
        help="most pool VMs a host runs: N for every host, URI=N for one (repeatable)",
    )
    group.add_argument(
        "--placement",
        choices=[placement.SPREAD, placement.PACK],
        default=placement.SPREAD,
        help="new VMs go to the host with the most free capacity (spread) or the fullest that "
        "has room (pack) (default: %(default)s)",
    )
    group.add_argument(
        "--host-grace",
        type=bounded_float(0, 86400),
        default=60.0,
        metavar="SECONDS",
        help="how long a host may be unreachable before its VMs count as lost and are replaced "
        "on the other hosts (default: %(default)g)",
    )
    group.add_argument(
        "--provisioner-password-file",
        metavar="FILE",
        default=os.environ.get("VIRTSCALE_PROVISIONER_PASSWORD_FILE"),
        help="password of the broker's provisioner user (make broker: var/secrets/provisioner): "
        "with it each VM the scaler creates gets its own broker user, removed with the domain; a "
        "template made for that needs it (env VIRTSCALE_PROVISIONER_PASSWORD_FILE)",
    )
    add_management_options(group)


def vm_identities(parser: argparse.ArgumentParser, args: argparse.Namespace) -> VmIdentities | None:
    """The VMs' broker users' maker, with --provisioner-password-file; else None."""
    path = args.provisioner_password_file
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            password = handle.read().strip()
    except OSError as exc:
        parser.error(f"--provisioner-password-file {path!r} cannot be read: {exc.strerror or exc}")
    _auth, vhost = broker_identity(resolve_and_check_amqp_urls(parser, args)[0])
    api = ManagementApi(
        resolve_management_urls(parser, args), (PROVISIONER, password), verify=args.management_ca or True
    )
    return VmIdentities(api, QueueNames(args.queue), vhost)


def queue_monitor(parser: argparse.ArgumentParser, args: argparse.Namespace) -> QueueMonitor:
    """The queue's reader, from --amqp-url, --queue and the --management-* flags: it reads from
    any node of a cluster that answers."""
    urls = resolve_and_check_amqp_urls(parser, args)
    management_urls = resolve_management_urls(parser, args)
    auth, vhost = broker_identity(urls[0])
    return QueueMonitor(
        management_urls, auth, vhost, args.queue, broker_nodes(urls, args), verify=args.management_ca or True
    )


def fleet_from(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Fleet:
    """The fleet's configuration from --pool, --template, --host-max, --placement, --host-grace."""
    uris = args.connect or [DEFAULT_CONNECT]
    try:
        host_max, per_uri = placement.parse_host_max(args.host_max, uris)
    except ValueError as exc:
        parser.error(str(exc))
    template = args.template
    if template is None and os.path.exists(os.path.join(TEMPLATE_DIR, f"{args.pool}.json")):
        template = os.path.join(TEMPLATE_DIR, f"{args.pool}.json")
    if template is not None and not os.access(template, os.R_OK):
        parser.error(f"--template {template}: no such file, or not readable (make template)")
    config = FleetConfig(args.pool, template, host_max, per_uri, args.placement, args.host_grace)
    return Fleet(config, vm_identities(parser, args))


def connect_hypervisors(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[Hypervisor]:
    """One Hypervisor per --connect URI; a URI libvirt cannot open at all is a flag error, a
    daemon that does not answer yet is retried by the loop."""
    hypervisors = []
    for uri in args.connect or [DEFAULT_CONNECT]:
        try:
            Hypervisor.check_uri(uri)
        except HypervisorRefused as exc:
            parser.error(str(exc))
        except HypervisorUnavailable as exc:
            log.warning("%s; will keep retrying", exc)
        hypervisors.append(Hypervisor(uri, args.pool))
    return hypervisors


def check_broker(parser: argparse.ArgumentParser, monitor: QueueMonitor) -> None:
    """Ask the management API and AMQP once: if either refuses the credentials (or the queue),
    exit 1 with one line, as retrying cannot help. A broker that does not answer is only a
    warning: the loop then runs degraded until it does."""
    refusal = monitor.refusal()
    if refusal is not None:
        parser.exit(1, f"{parser.prog}: error: {' '.join(refusal.split())}\n")


def build_scaler(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    policy: Policy,
    *,
    window: float,
    dry_run: bool = False,
    on_tick: Callable[[TickReport], None] | None = None,
) -> Scaler:
    monitor = queue_monitor(parser, args)
    fleet = fleet_from(parser, args)
    hypervisors = connect_hypervisors(parser, args)
    check_broker(parser, monitor)
    return Scaler(hypervisors, monitor, policy, window=window, dry_run=dry_run, on_tick=on_tick, fleet=fleet)
