"""virtscale-scaler: watch the job queue and the pool's libvirt domains, boot or drain VMs.

`virtscale-scaler COMMAND --help` tells more about each command.
"""

from __future__ import annotations

from virtscale.config import OneLineParser, add_version_option, configure_logging
from virtscale.scaler.commands import run, simulate, status, tag, trace

EXAMPLES = """\
examples:
  virtscale-scaler status
  virtscale-scaler run --dry-run --max 6 --events var/events.jsonl
  virtscale-scaler simulate --policy all --profile bursty
  virtscale-scaler tag --pool vm my-worker-1 my-worker-2
"""


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="virtscale-scaler",
        description=__doc__,
        epilog=EXAMPLES,
    )
    add_version_option(parser)
    commands = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND", required=True, parser_class=OneLineParser
    )
    for command in (run, status, simulate, trace, tag):
        command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    return args.handler(args)
