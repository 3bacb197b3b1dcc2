"""virtscale-collector: store result hashes in SQLite; `stats` reports on the store."""

from __future__ import annotations

import json
import signal
import sys

from virtscale.collector.consumer import Collector
from virtscale.collector.store import Store, StoreError

from virtscale import defaults
from virtscale.broker import BrokerRefused, BrokerUnavailable, queue_counts
from virtscale.config import (
    OneLineParser,
    add_common_options,
    configure_logging,
    positive_float,
    positive_int,
    queue_names,
    resolve_amqp_url,
)


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="virtscale-collector", description=__doc__)
    parser.add_argument(
        "command",
        nargs="?",
        choices=["run", "stats"],
        default="run",
        help="run (default): consume and store; stats: print store figures as JSON",
    )
    add_common_options(parser)
    parser.add_argument("--store", default=defaults.STORE_URL, help="SQLite URL (default: %(default)s)")
    parser.add_argument(
        "--batch",
        type=positive_int,
        default=defaults.COLLECTOR_BATCH,
        help="rows per transaction at most (default: %(default)s)",
    )
    parser.add_argument(
        "--flush-interval",
        type=positive_float,
        default=defaults.COLLECTOR_FLUSH_INTERVAL,
        help="seconds before a partial batch is committed (default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    url = resolve_amqp_url(parser, args)
    try:
        store = Store(args.store)
    except StoreError as exc:
        parser.error(str(exc))
    configure_logging(args.log_level, args.log_format)
    names = queue_names(args)
    if args.command == "stats":
        stats = store.stats()
        try:
            stats["dead_lettered"] = queue_counts(url, names.dead)[0]
        except (BrokerUnavailable, BrokerRefused):
            stats["dead_lettered"] = None  # broker unreachable: unknown, not zero
        print(json.dumps(stats, indent=2))
        return 0
    collector = Collector(url, names, store, batch_size=args.batch, flush_interval=args.flush_interval)
    signal.signal(signal.SIGTERM, lambda *_: collector.request_stop())
    signal.signal(signal.SIGINT, lambda *_: collector.request_stop())
    try:
        collector.run()
    except BrokerRefused as exc:
        print(f"virtscale-collector: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
