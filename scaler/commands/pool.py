"""What `run` and `status` share: the pool's flags (libvirt, broker, management API), the Scaler
built from them, every flag checked before anything connects, and the start-up check that the
broker accepts the scaler's credentials."""

from __future__ import annotations

import argparse
import logging
import os
import urllib.parse
from collections.abc import Callable

from virtscale import defaults
from virtscale.cli_support import resolve_and_check_amqp_url
from virtscale.config import add_common_options, bounded_float, check_port, redact_url, split_url
from virtscale.scaler import placement
from virtscale.scaler.fleet import Fleet, FleetConfig
from virtscale.scaler.hypervisor import Hypervisor, HypervisorRefused, HypervisorUnavailable
from virtscale.scaler.loop import Scaler, TickReport
from virtscale.scaler.ownership import pool_name
from virtscale.scaler.policy import Policy
from virtscale.scaler.queue_monitor import QueueMonitor

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
        "--management-url",
        metavar="URL",
        default=os.environ.get("VIRTSCALE_MANAGEMENT_URL", defaults.MANAGEMENT_URL),
        help="RabbitMQ management API, http:// or https://; credentials are those of --amqp-url "
        "(env VIRTSCALE_MANAGEMENT_URL; default: %(default)s)",
    )
    group.add_argument("--management-ca", metavar="FILE", help="CA bundle to verify an https management URL")


def queue_monitor(parser: argparse.ArgumentParser, args: argparse.Namespace) -> QueueMonitor:
    """The queue's reader, from --amqp-url, --queue and the --management-* flags."""
    url = resolve_and_check_amqp_url(parser, args)
    check_port(parser, "--management-url", args.management_url, "VIRTSCALE_MANAGEMENT_URL")
    management = split_url(parser, "--management-url", args.management_url, "VIRTSCALE_MANAGEMENT_URL")
    if management.scheme not in ("http", "https") or not management.hostname:
        parser.error(
            f"--management-url must be http(s)://host:port, got {redact_url(args.management_url)!r} "
            "(the flag or VIRTSCALE_MANAGEMENT_URL)"
        )
    if args.management_ca is not None and not os.access(args.management_ca, os.R_OK):
        parser.error(f"--management-ca {args.management_ca}: no such file, or not readable")
    amqp = urllib.parse.urlsplit(url)
    auth = (urllib.parse.unquote(amqp.username or "guest"), urllib.parse.unquote(amqp.password or "guest"))
    vhost = urllib.parse.unquote(amqp.path[1:]) if len(amqp.path) > 1 else "/"
    return QueueMonitor(args.management_url, auth, vhost, args.queue, url, verify=args.management_ca or True)


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
    return Fleet(config)


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
