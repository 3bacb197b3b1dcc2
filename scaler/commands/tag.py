"""`virtscale-scaler tag`: put the pool's tag on domains someone defined by hand, so that the
scaler may start and stop them (it never deletes them: they are the operator's)."""

from __future__ import annotations

import argparse
import functools

from virtscale.config import OneLineParser, add_logging_options, add_version_option
from virtscale.scaler.commands.pool import DEFAULT_CONNECT
from virtscale.scaler.hypervisor import ActionFailed, Hypervisor, HypervisorUnavailable
from virtscale.scaler.ownership import pool_name

EXAMPLES = """\
examples:
  virtscale-scaler tag --pool vm worker-a worker-b
  virtscale-scaler tag --pool vm --connect qemu+ssh://host-2/system worker-c
"""


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "tag",
        help="tag existing domains as members of a pool",
        description=__doc__,
        epilog=EXAMPLES,
    )
    parser.add_argument("domains", nargs="+", metavar="DOMAIN", help="domain names on the --connect host")
    parser.add_argument(
        "--pool", type=pool_name, default="vm", metavar="NAME", help="the pool (default: %(default)s)"
    )
    parser.add_argument(
        "--connect", default=DEFAULT_CONNECT, metavar="URI", help="libvirt URI (default: %(default)s)"
    )
    add_logging_options(parser, default_level="WARNING")
    add_version_option(parser)
    parser.set_defaults(handler=functools.partial(tag, parser))


def tag(parser: OneLineParser, args: argparse.Namespace) -> int:
    hypervisor = Hypervisor(args.connect, args.pool)
    failed = 0
    for name in args.domains:
        try:
            hypervisor.tag(name)
            print(f"{name}: tagged for pool {args.pool}")
        except (ActionFailed, HypervisorUnavailable) as exc:
            print(f"{name}: {exc}")
            failed += 1
    return 1 if failed else 0
