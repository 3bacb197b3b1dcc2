"""virtscale-worker: consume license jobs, bcrypt them, publish the hashes."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys

from virtscale.worker.consumer import Worker, default_concurrency

from virtscale import defaults
from virtscale.broker import BrokerRefused
from virtscale.config import (
    OneLineParser,
    add_common_options,
    configure_logging,
    positive_int,
    queue_names,
    resolve_amqp_url,
)

log = logging.getLogger("worker")

#: bcrypt accepts cost factors 4..31.
MIN_COST, MAX_COST = 4, 31


def bcrypt_cost(text: str) -> int:
    value = positive_int(text)
    if not MIN_COST <= value <= MAX_COST:
        raise argparse.ArgumentTypeError(f"must be between {MIN_COST} and {MAX_COST}, got {text!r}")
    return value


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="virtscale-worker", description=__doc__)
    add_common_options(parser)
    parser.add_argument(
        "--cost",
        type=bcrypt_cost,
        default=defaults.BCRYPT_COST,
        help="bcrypt cost factor, 4-31 (default: %(default)s)",
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=default_concurrency(),
        help="hashing slots (default: CPU count, here %(default)s)",
    )
    parser.add_argument(
        "--prefetch-per-slot",
        type=positive_int,
        default=1,
        help="unacked jobs held per slot; 1 lets a new worker take work at once (default: %(default)s)",
    )
    parser.add_argument(
        "--name",
        default=os.environ.get("VIRTSCALE_WORKER_NAME", socket.gethostname()),
        help="name reported with each result (default: host name)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    url = resolve_amqp_url(parser, args)
    configure_logging(args.log_level, args.log_format)
    worker = Worker(
        url,
        queue_names(args),
        cost=args.cost,
        concurrency=args.concurrency,
        name=args.name,
        prefetch_per_slot=args.prefetch_per_slot,
    )

    def on_signal(signum: int, _frame) -> None:
        if worker.stop_requested.is_set():
            log.warning("second %s: exiting at once", signal.Signals(signum).name)
            os._exit(1)
        log.info("%s: finishing the jobs in hand, then exiting", signal.Signals(signum).name)
        worker.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        worker.run()
    except BrokerRefused as exc:
        print(f"virtscale-worker: {exc}", file=sys.stderr)
        return 1
    return 0
