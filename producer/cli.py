"""virtscale-producer: publish license-number jobs at a rate, a load profile or a trace.

In a terminal, type a number to set the delay between publishes (the original's delta)
or `terminate` to stop cleanly.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from virtscale import defaults
from virtscale.broker import BrokerRefused
from virtscale.cli_support import broker_nodes, resolve_and_check_amqp_urls
from virtscale.config import (
    OneLineParser,
    add_common_options,
    configure_logging,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    queue_names,
)
from virtscale.console import start_console
from virtscale.load import ProfileSpec, profile_rate
from virtscale.load_options import add_load_options, profile_spec, read_trace
from virtscale.producer.licenses import LicenseGenerator
from virtscale.producer.publisher import Producer

log = logging.getLogger("producer")

EXAMPLES = """\
examples:
  virtscale-producer --count 100 --rate 5
  virtscale-producer --profile step --base 1 --peak 8 --start 60 --duration 300
  virtscale-producer --trace var/run-trace.csv --amqp-url amqp://user@broker:5672/%2F
"""

#: What the console says to a line it does not understand.
CONSOLE_HINT = "type a number of seconds between publishes, or 'terminate' to stop"

#: The profiles that end by themselves: run for their start, peak and as long again after it.
FINITE_PROFILES = ("step", "spike", "ramp")


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="virtscale-producer",
        description=__doc__,
        epilog=EXAMPLES,
    )
    add_common_options(parser)
    parser.add_argument(
        "--count",
        type=non_negative_int,
        default=0,
        metavar="JOBS",
        help="jobs to publish, 0 = until stopped (default: %(default)s)",
    )
    pacing = parser.add_mutually_exclusive_group()
    pacing.add_argument(
        "--delta",
        type=positive_float,
        metavar="SECONDS",
        help=f"seconds between publishes (default: {defaults.DELTA:g})",
    )
    pacing.add_argument(
        "--rate",
        type=non_negative_float,
        metavar="JOBS/S",
        help="jobs per second; 0 = as fast as confirms allow",
    )
    add_load_options(
        parser,
        defaults=ProfileSpec(),
        profile_default=None,
        profile_help="pace by a load profile instead of a fixed rate",
    )
    parser.add_argument(
        "--run-for",
        type=positive_float,
        metavar="SECONDS",
        help="stop after this many seconds (default: a profile's or trace's length, "
        "else until --count or terminate)",
    )
    parser.add_argument(
        "--seed",
        type=non_negative_int,
        metavar="N",
        help="seed for reproducible license numbers and burst times",
    )
    parser.add_argument(
        "--max-outstanding",
        type=positive_int,
        default=defaults.MAX_OUTSTANDING,
        metavar="JOBS",
        help="unconfirmed publishes in flight at most (default: %(default)s)",
    )
    return parser


def pacing_from(parser: OneLineParser, args):
    """(rate function or None for unpaced, run length or None) from the pacing flags."""
    chosen = [
        flag
        for flag, value in (
            ("--delta", args.delta),
            ("--rate", args.rate),
            ("--profile", args.profile),
            ("--trace", args.trace),
        )
        if value is not None
    ]
    if len(chosen) > 1:
        parser.error(f"{' and '.join(chosen)} cannot be combined: choose one way to pace")
    if args.trace:
        rate, length = read_trace(parser, args.trace)
        return rate, args.run_for or length
    if args.profile:
        length = args.run_for or (
            args.start + args.duration + args.start if args.profile in FINITE_PROFILES else None
        )
        spec = profile_spec(args, ProfileSpec(), seed=args.seed or 0, length=length or 3600.0)
        return profile_rate(spec), length
    if args.rate is not None:
        return (None if args.rate == 0 else (lambda _t, r=args.rate: r)), args.run_for
    delta = args.delta or defaults.DELTA
    return (lambda _t: 1.0 / delta), args.run_for


def delta_setter(producer: Producer):
    """The console handler: a number of seconds between publishes (the original's delta)."""

    def set_delta(command: str) -> bool:
        try:
            delta = positive_float(command)
        except argparse.ArgumentTypeError:
            return False
        producer.set_delta(delta)
        return True

    return set_delta


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    urls = broker_nodes(resolve_and_check_amqp_urls(parser, args), args)
    rate, duration = pacing_from(parser, args)
    configure_logging(args.log_level, args.log_format)
    producer = Producer(
        urls,
        queue_names(args),
        LicenseGenerator(args.seed),
        rate=rate,
        count=args.count,
        duration=duration,
        max_outstanding=args.max_outstanding,
    )

    def on_signal(_signum, _frame) -> None:
        producer.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if sys.stdin is not None and sys.stdin.isatty():
        start_console(producer.request_stop, CONSOLE_HINT, handle=delta_setter(producer))
    try:
        report = producer.run()
    except BrokerRefused as exc:
        print(f"virtscale-producer: {exc}", file=sys.stderr)
        return 1
    print(report.line())
    return 0 if report.unconfirmed == 0 else 1
