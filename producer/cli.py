"""virtscale-producer: publish license-number jobs at a rate, a load profile or a trace.

In a terminal, type a number to set the delay between publishes (the original's delta)
or `terminate` to stop cleanly.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from virtscale.producer.licenses import LicenseGenerator
from virtscale.producer.publisher import Producer

from virtscale import defaults
from virtscale.broker import BrokerRefused
from virtscale.config import (
    OneLineParser,
    add_common_options,
    configure_logging,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    queue_names,
    resolve_amqp_url,
)
from virtscale.load import PROFILES, ProfileSpec, TraceError, load_trace, profile_rate

log = logging.getLogger("producer")


def add_profile_options(parser: OneLineParser) -> None:
    """Load-profile flags, shared with the scaler's simulator."""
    parser.add_argument("--profile", choices=PROFILES, help="load profile instead of a fixed rate")
    parser.add_argument(
        "--base",
        type=non_negative_float,
        default=ProfileSpec.base,
        help="profile: rate outside the peak, jobs/s (default: %(default)s)",
    )
    parser.add_argument(
        "--peak",
        type=non_negative_float,
        default=ProfileSpec.peak,
        help="profile: rate at the peak, jobs/s (default: %(default)s)",
    )
    parser.add_argument(
        "--start",
        type=non_negative_float,
        default=ProfileSpec.start,
        help="profile: seconds before the step/spike/bursts begin; ramp: "
        "seconds to reach the peak (default: %(default)s)",
    )
    parser.add_argument(
        "--duration",
        type=positive_float,
        default=ProfileSpec.duration,
        help="profile: seconds the peak (or each burst) lasts (default: %(default)s)",
    )
    parser.add_argument(
        "--period",
        type=positive_float,
        default=ProfileSpec.period,
        help="profile: sine period / mean seconds between bursts (default: %(default)s)",
    )
    parser.add_argument("--trace", metavar="FILE.csv", help="replay a load trace, CSV with header time,rate")


def profile_spec(args, length: float) -> ProfileSpec:
    return ProfileSpec(
        kind=args.profile,
        base=args.base,
        peak=args.peak,
        start=args.start,
        duration=args.duration,
        period=args.period,
        seed=args.seed or 0,
        length=length,
    )


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="virtscale-producer", description=__doc__)
    add_common_options(parser)
    parser.add_argument(
        "--count",
        type=non_negative_int,
        default=0,
        help="jobs to publish, 0 = until stopped (default: %(default)s)",
    )
    pacing = parser.add_mutually_exclusive_group()
    pacing.add_argument(
        "--delta",
        type=positive_float,
        help=f"seconds between publishes (default: {defaults.DELTA:g})",
    )
    pacing.add_argument(
        "--rate", type=non_negative_float, help="jobs per second; 0 = as fast as confirms allow"
    )
    add_profile_options(parser)
    parser.add_argument(
        "--run-for",
        type=positive_float,
        metavar="SECONDS",
        help="stop after this many seconds (default: a profile's or trace's length, "
        "else until --count or terminate)",
    )
    parser.add_argument("--seed", type=int, help="seed for reproducible license numbers")
    parser.add_argument(
        "--max-outstanding",
        type=positive_int,
        default=defaults.MAX_OUTSTANDING,
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
        try:
            rate, length = load_trace(args.trace)
        except TraceError as exc:
            parser.error(str(exc))
        return rate, args.run_for or length
    if args.profile:
        length = args.run_for or (
            args.start + args.duration + args.start if args.profile in ("step", "spike", "ramp") else None
        )
        return profile_rate(profile_spec(args, length or 3600.0)), length
    if args.rate is not None:
        return (None if args.rate == 0 else (lambda _t, r=args.rate: r)), args.run_for
    delta = args.delta or defaults.DELTA
    return (lambda _t: 1.0 / delta), args.run_for


def read_console(producer: Producer) -> None:
    """The original's console: a number sets delta, `terminate` stops. Bad input is ignored."""
    for line in sys.stdin:
        command = line.strip()
        if not command:
            continue
        if command == "terminate":
            producer.request_stop()
            return
        try:
            delta = positive_float(command)
        except Exception:
            print("type a number of seconds between publishes, or 'terminate'", file=sys.stderr)
            continue
        producer.set_delta(delta)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    url = resolve_amqp_url(parser, args)
    rate, duration = pacing_from(parser, args)
    configure_logging(args.log_level, args.log_format)
    producer = Producer(
        url,
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
        threading.Thread(target=read_console, args=(producer,), daemon=True).start()
    try:
        report = producer.run()
    except BrokerRefused as exc:
        print(f"virtscale-producer: {exc}", file=sys.stderr)
        return 1
    print(report.line())
    return 0 if report.unconfirmed == 0 else 1
