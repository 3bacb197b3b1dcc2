"""virtscale-worker: consume license jobs, bcrypt them, publish the hashes."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import urllib.parse

from virtscale import defaults
from virtscale.broker import BrokerRefused
from virtscale.cli_support import broker_nodes, resolve_and_check_amqp_urls
from virtscale.config import (
    OneLineParser,
    add_common_options,
    configure_logging,
    positive_int,
    queue_names,
)
from virtscale.naming import worker_consumer_tag
from virtscale.worker.consumer import MAX_PREFETCH, Worker, default_concurrency

log = logging.getLogger(__name__)

#: bcrypt accepts cost factors 4..31.
MIN_COST, MAX_COST = 4, 31

#: Hashing threads at most: far more than any machine has cores to run them.
MAX_CONCURRENCY = 1024


#: The longest name, in UTF-8 bytes, that fits a consumer tag (255 bytes) with its prefix and suffix.
MAX_NAME_BYTES = 255 - len(worker_consumer_tag("", "12345678"))

EXAMPLES = """\
examples:
  virtscale-worker --amqp-url amqp://worker@mq1/%2F,amqp://worker@mq2/%2F --password-file /run/secrets/amqp
  VIRTSCALE_WORKER_NAME=vm-3 virtscale-worker --cost 12 --concurrency 2
  virtscale-worker --queue licenses --cost 4 --log-level DEBUG
"""


def bcrypt_cost(text: str) -> int:
    value = positive_int(text)
    if not MIN_COST <= value <= MAX_COST:
        raise argparse.ArgumentTypeError(f"must be between {MIN_COST} and {MAX_COST}, got {text!r}")
    return value


def concurrency(text: str) -> int:
    value = positive_int(text)
    if value > MAX_CONCURRENCY:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_CONCURRENCY}, got {text!r}")
    return value


def prefetch_per_slot(text: str) -> int | None:
    """A whole number of jobs, or "auto" (None): sized by time."""
    if text.strip().lower() == "auto":
        return None
    return positive_int(text)


def worker_name(text: str) -> str:
    """A name for results, the consumer tag and the connection: printable, 1-MAX_NAME_BYTES bytes."""
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if not 0 < size <= MAX_NAME_BYTES or not text.isprintable():
        raise argparse.ArgumentTypeError(
            f"must be 1-{MAX_NAME_BYTES} printable characters, got {text!r} "
            "(the flag or VIRTSCALE_WORKER_NAME)"
        )
    return text


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="virtscale-worker",
        description=__doc__,
        epilog=EXAMPLES,
    )
    add_common_options(parser)
    parser.add_argument(
        "--cost",
        type=bcrypt_cost,
        metavar="N",
        default=defaults.BCRYPT_COST,
        help=f"bcrypt cost factor (log2 rounds), {MIN_COST}-{MAX_COST} (default: %(default)s)",
    )
    parser.add_argument(
        "--concurrency",
        type=concurrency,
        metavar="N",
        default=default_concurrency(),
        help=f"hashing threads, 1-{MAX_CONCURRENCY} "
        "(default: the CPUs this process may use, here %(default)s)",
    )
    parser.add_argument(
        "--prefetch-per-slot",
        type=prefetch_per_slot,
        metavar="JOBS",
        default=None,
        help="unacked jobs held per hashing thread, or auto: about "
        f"{defaults.PREFETCH_SECONDS:g} s of work, sized from the measured hashing time "
        "(one job until measured) (default: auto)",
    )
    parser.add_argument(
        "--name",
        type=worker_name,
        metavar="NAME",
        default=os.environ.get("VIRTSCALE_WORKER_NAME", socket.gethostname()),
        help="name reported with each result and in the consumer tag; in a VM, its domain name "
        "(env VIRTSCALE_WORKER_NAME; default: the host name)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    urls = broker_nodes(resolve_and_check_amqp_urls(parser, args), args)
    if args.prefetch_per_slot and args.concurrency * args.prefetch_per_slot > MAX_PREFETCH:
        parser.error(f"--concurrency times --prefetch-per-slot must be at most {MAX_PREFETCH}")
    configure_logging(args.log_level, args.log_format)
    worker = Worker(
        urls,
        queue_names(args),
        cost=args.cost,
        concurrency=args.concurrency,
        name=args.name,
        prefetch_per_slot=args.prefetch_per_slot,
        login=urllib.parse.unquote(urllib.parse.urlsplit(urls.current).username or ""),
    )

    def on_signal(signum: int, _frame) -> None:
        if worker.stop_parked():
            log.info("%s while parked: exiting", signal.Signals(signum).name)
            return
        if worker.stop_requested.is_set():
            log.warning("second %s: exiting at once", signal.Signals(signum).name)
            os._exit(1)
        log.info("%s: finishing the jobs in hand, then exiting", signal.Signals(signum).name)
        worker.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # The warm pool: SIGUSR1 drains and parks the worker before a save, SIGUSR2 resumes it.
    signal.signal(signal.SIGUSR1, lambda *_: worker.request_park())
    signal.signal(signal.SIGUSR2, lambda *_: worker.request_resume())
    try:
        worker.run()
    except BrokerRefused as exc:
        print(f"virtscale-worker: {exc}", file=sys.stderr)
        return 1
    return 0
