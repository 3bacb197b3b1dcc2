"""virtscale-collector: store result hashes in SQLite or PostgreSQL; `stats` reports on the store."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys

from virtscale import defaults
from virtscale.broker import BrokerRefused, BrokerUnavailable, peek_headers, queue_counts
from virtscale.cli_support import broker_nodes, resolve_and_check_amqp_urls
from virtscale.collector.consumer import Collector
from virtscale.collector.store import Store, StoreError, StoreFailed, StoreMissing, StoreRefused
from virtscale.collector.store_url import open_store
from virtscale.config import (
    OneLineParser,
    add_common_options,
    configure_logging,
    positive_float,
    positive_int,
    queue_names,
)
from virtscale.naming import connection_name
from virtscale.publishers import IMPOSTOR_REASON

log = logging.getLogger(__name__)

#: AMQP's prefetch count is a 16-bit number and the collector asks for two batches.
MAX_BATCH = 65535 // 2

EXAMPLES = """\
examples:
  virtscale-collector run --store sqlite:////var/lib/virtscale/hashes.db
  virtscale-collector run --queue licenses --batch 1000 --flush-interval 0.5
  virtscale-collector run --store postgresql://virtscale@db1/virtscale --store-password-file /etc/virtscale/pg
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
        help="SQLite file: sqlite:///relative/path.db or sqlite:////absolute/path.db; or PostgreSQL: "
        "postgresql://USER[:PASSWORD]@HOST[:PORT]/DB, libpq's URL (default: %(default)s)",
    )
    parser.add_argument(
        "--store-password-file",
        metavar="FILE",
        default=os.environ.get("VIRTSCALE_STORE_PASSWORD_FILE"),
        help="file holding the PostgreSQL password, which replaces the one in the URL (env "
        "VIRTSCALE_STORE_PASSWORD_FILE; without either, libpq's PGPASSWORD or ~/.pgpass)",
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
        reasons = peek_headers(urls, names.dead, defaults.REASON_HEADER, name)
        stats["impostor_results"] = sum(1 for reason in reasons if str(reason).startswith(IMPOSTOR_REASON))
    except (BrokerUnavailable, BrokerRefused):
        stats["dead_lettered"] = None  # broker unreachable: unknown, not zero
        stats["impostor_results"] = None
    print(json.dumps(stats, indent=2))
    return 0


def store_password(parser: argparse.ArgumentParser, path: str | None) -> str | None:
    """The password in --store-password-file, None without one."""
    if path is None:
        return None
    source = "(the flag or VIRTSCALE_STORE_PASSWORD_FILE)"
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError as exc:
        parser.error(f"--store-password-file {path!r} cannot be read: {exc.strerror or exc} {source}")
    except UnicodeDecodeError:
        parser.error(f"--store-password-file {path!r} cannot be read: not UTF-8 text {source}")


def open_checked_store(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Store | int:
    """The store, reached and checked; or the exit status of a store that will not work as
    given (2: a bad URL or a store of something else; 1: missing or refused). A PostgreSQL
    server that cannot be reached now stops `stats` but not `run`, which retries its writes."""
    password = store_password(parser, args.store_password_file)
    name = connection_name("collector", socket.gethostname(), queue_names(args).jobs)
    try:
        store = open_store(args.store, create=args.command == "run", password=password, name=name)
    except StoreMissing as exc:
        print(f"virtscale-collector: {exc}", file=sys.stderr)
        return 1
    except StoreError as exc:
        parser.error(str(exc))
    try:
        store.check()
    except (StoreMissing, StoreRefused) as exc:
        store.close()
        print(f"virtscale-collector: {exc}", file=sys.stderr)
        return 1
    except StoreError as exc:
        store.close()
        parser.error(str(exc))
    except StoreFailed as exc:
        if args.command == "stats":
            print(f"virtscale-collector: {exc}", file=sys.stderr)
            return 1
        log.warning("%s; collecting anyway: the writes retry until it can be reached", exc)
    return store


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    urls = broker_nodes(resolve_and_check_amqp_urls(parser, args), args)
    configure_logging(args.log_level, args.log_format)
    store = open_checked_store(parser, args)
    if isinstance(store, int):
        return store
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
    except BrokerRefused as exc:
        print(f"virtscale-collector: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
