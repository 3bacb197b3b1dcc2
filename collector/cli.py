"""virtscale-collector: store result hashes in SQLite; `stats` reports on the store."""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys

from virtscale import defaults
from virtscale.broker import BrokerRefused, BrokerUnavailable, queue_counts
from virtscale.cli_support import resolve_and_check_amqp_urls
from virtscale.collector.consumer import Collector
from virtscale.collector.store import Store, StoreError, StoreFailed, StoreMissing
from virtscale.config import (
    OneLineParser,
    add_common_options,
    configure_logging,
    positive_float,
    positive_int,
    queue_names,
)
from virtscale.naming import connection_name

#: AMQP's prefetch count is a 16-bit number and the collector asks for two batches.
MAX_BATCH = 65535 // 2

EXAMPLES = """\
examples:
  virtscale-collector run --store sqlite:////var/lib/virtscale/hashes.db
  virtscale-collector run --queue licenses --batch 1000 --flush-interval 0.5
  virtscale-collector stats --store sqlite:////var/lib/virtscale/hashes.db
"""


def batch_size(text: str) -> int:
    value = positive_int(text)
    if value > MAX_BATCH:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_BATCH}, got {text!r}")
    return value


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="virtscale-collector",
        description=__doc__,
        epilog=EXAMPLES,
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=["run", "stats"],
        default="run",
        help="run (default): consume results and store them, creating the store if needed; "
        "stats: print figures of an existing store as JSON",
    )
    add_common_options(parser)
    parser.add_argument(
        "--store",
        metavar="URL",
        default=defaults.STORE_URL,
        help="SQLite file: sqlite:///relative/path.db or sqlite:////absolute/path.db (default: %(default)s)",
    )
    parser.add_argument(
        "--batch",
        type=batch_size,
        metavar="N",
        default=defaults.COLLECTOR_BATCH,
        help=f"results per transaction at most, 1-{MAX_BATCH} (default: %(default)s)",
    )
    parser.add_argument(
        "--flush-interval",
        type=positive_float,
        metavar="SECONDS",
        default=defaults.COLLECTOR_FLUSH_INTERVAL,
        help="seconds a partial batch waits before it is committed anyway (default: %(default)s)",
    )
    return parser


def print_stats(store: Store, urls: tuple[str, ...], args: argparse.Namespace) -> int:
    names = queue_names(args)
    stats = store.stats()
    name = connection_name("collector", socket.gethostname(), names.jobs)
    try:
        stats["dead_lettered"] = queue_counts(urls, names.dead, name)[0]
    except (BrokerUnavailable, BrokerRefused):
        stats["dead_lettered"] = None  # broker unreachable: unknown, not zero
    print(json.dumps(stats, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    urls = resolve_and_check_amqp_urls(parser, args)
    try:
        store = Store(args.store, create=args.command == "run")
    except StoreMissing as exc:
        print(f"virtscale-collector: {exc}", file=sys.stderr)
        return 1
    except StoreError as exc:
        parser.error(str(exc))
    configure_logging(args.log_level, args.log_format)
    if args.command == "stats":
        try:
            return print_stats(store, urls, args)
        except StoreError as exc:
            parser.error(str(exc))
        finally:
            store.close()
    collector = Collector(
        urls, queue_names(args), store, batch_size=args.batch, flush_interval=args.flush_interval
    )
    signal.signal(signal.SIGTERM, lambda *_: collector.request_stop())
    signal.signal(signal.SIGINT, lambda *_: collector.request_stop())
    try:
        collector.run()
    except (BrokerRefused, StoreFailed) as exc:
        print(f"virtscale-collector: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
