"""`virtscale-scaler run`: the control loop. Every tick observes the queue and the pool, asks the
policy, acts on libvirt (unless --dry-run) and reports: events file, Prometheus metrics, and in a
terminal a live view."""

from __future__ import annotations

import argparse
import errno
import functools
import json
import logging
import signal
import sys
import threading
from dataclasses import dataclass

from virtscale.broker import Nodes
from virtscale.config import OneLineParser, host_or_address, port_number
from virtscale.console import start_console
from virtscale.naming import lease_queue
from virtscale.scaler.commands.checks import check_writable
from virtscale.scaler.commands.pool import (
    add_pool_options,
    check_broker,
    connect_hypervisors,
    fleet_from,
    queue_monitor,
)
from virtscale.scaler.leadership import Leadership
from virtscale.scaler.live import LiveView
from virtscale.scaler.loop import EventsFile, Scaler, TickReport
from virtscale.scaler.metrics import ScalerMetrics
from virtscale.scaler.policy import Policy, PolicyConfig
from virtscale.scaler.policy_options import add_policy_options, policy_config
from virtscale.scaler.queue_monitor import QueueMonitor

DESCRIPTION = """\
Run the control loop: every --interval seconds read the queue (RabbitMQ management API) and the
pool's domains (libvirt), let the policy decide, start or shut down domains, and report.
Several scalers may run on one pool: the one holding the pool's lease in RabbitMQ acts, the others
stand by and take over when it goes (a dry run stands for no lease).
In a terminal it shows a live view; type 'terminate' or press Ctrl-C to stop (SIGTERM works too)."""

EXAMPLES = """\
examples:
  virtscale-scaler run --dry-run --once
  virtscale-scaler run --min 1 --max 6 --slo 30 --events var/events.jsonl --metrics-port 9108
  virtscale-scaler run --connect qemu+ssh://host-1/system --connect qemu+ssh://host-2/system
"""

log = logging.getLogger(__name__)

#: The longest queue name AMQP can carry, in bytes (a short string).
MAX_QUEUE_NAME_BYTES = 255

#: Where the metrics are served unless --metrics-address says otherwise: this machine only.
DEFAULT_METRICS_ADDRESS = "127.0.0.1"


#: What the console says to a line it does not understand.
CONSOLE_HINT = "type 'terminate' to stop the scaler (or press Ctrl-C)"


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "run",
        help="the control loop (--once for one tick, --dry-run to change nothing)",
        description=DESCRIPTION,
        epilog=EXAMPLES,
    )
    add_pool_options(parser)
    add_policy_options(parser)
    group = parser.add_argument_group("run")
    group.add_argument("--once", action="store_true", help="one tick, print its event as JSON, exit")
    group.add_argument("--dry-run", action="store_true", help="decide and report, change nothing")
    group.add_argument("--events", metavar="FILE", help="append one JSON line per tick to FILE")
    group.add_argument(
        "--metrics-port",
        type=port_number,
        metavar="PORT",
        help="serve Prometheus metrics on --metrics-address:PORT (1-65535)",
    )
    group.add_argument(
        "--metrics-address",
        type=listen_address,
        metavar="ADDRESS",
        help="IP address or host name to serve the metrics on, with --metrics-port "
        f"(default: {DEFAULT_METRICS_ADDRESS}, this machine only)",
    )
    group.add_argument(
        "--shutdown-on-exit",
        action="store_true",
        help="ACPI-shutdown every running pool VM when the scaler exits",
    )
    group.add_argument("--ticks", type=int, help=argparse.SUPPRESS)  # tests: stop after N ticks
    parser.set_defaults(handler=functools.partial(run, parser))


@dataclass
class TickSinks:
    """Where each tick's report goes: metrics, the events file, the live view."""

    metrics: ScalerMetrics
    events: EventsFile | None = None
    view: LiveView | None = None

    def __call__(self, report: TickReport) -> None:
        self.metrics.record(report)
        if self.events:
            self.events.write(report)
        if self.view:
            self.view.show(report)


def run(parser: OneLineParser, args: argparse.Namespace) -> int:
    scaler, sinks = prepare(parser, args)
    stop = threading.Event()

    def request_stop(*_signal) -> None:
        stop.set()
        scaler.leadership.wake.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    interactive = sys.stdout.isatty() and sys.stdin is not None and sys.stdin.isatty()
    try:
        if interactive and not args.once:
            with LiveView(dry_run=args.dry_run) as view:
                sinks.view = view
                start_console(request_stop, CONSOLE_HINT, say=view.note)
                tick_until_stopped(scaler, args, stop, sinks.metrics)
        else:
            tick_until_stopped(scaler, args, stop, sinks.metrics)
    finally:
        sinks.view = None
        finish(scaler, args, sinks)
    return 0


def prepare(parser: OneLineParser, args: argparse.Namespace) -> tuple[Scaler, TickSinks]:
    """Check every flag and open every local file and port first, then reach out: nothing has
    connected when a local value is bad. libvirt and the broker come last, as an unreachable
    daemon is only a warning (refused broker credentials exit 1)."""
    config, monitor = check_flags(parser, args)
    fleet = fleet_from(parser, args)
    events = open_events(parser, args.events)
    metrics = ScalerMetrics(queue=args.queue, pool=args.pool, dry_run=args.dry_run, slo=config.slo)
    if args.metrics_port is not None:
        serve_metrics(parser, metrics, args.metrics_address or DEFAULT_METRICS_ADDRESS, args.metrics_port)
    hypervisors = connect_hypervisors(parser, args)
    check_broker(parser, monitor)  # refused credentials: exit 1 now, not a degraded loop
    sinks = TickSinks(metrics, events)
    scaler = Scaler(
        hypervisors,
        monitor,
        Policy(config),
        window=args.window,
        dry_run=args.dry_run,
        on_tick=sinks,
        fleet=fleet,
        leadership=None if args.dry_run else stand_for_lease(parser, args, monitor),
    )
    return scaler, sinks


#: Seconds `run` waits at start to learn whether it leads (a probe, or a claim and its wait),
#: so that its first tick already acts when no other scaler holds the pool.
SETTLE_TIMEOUT = 15.0


def stand_for_lease(parser: OneLineParser, args: argparse.Namespace, monitor: QueueMonitor) -> Leadership:
    """Stand for the pool's lease; a broker that refuses it (the user's rights) exits 1 now."""
    # Nodes of its own, not the monitor's: the lease fails over on a thread of its own.
    nodes = Nodes(monitor.amqp_nodes.urls, monitor.amqp_nodes.ca_file)
    leadership = Leadership(nodes, args.queue, args.pool, holder_lookup=monitor.lease_holder)
    leadership.start()
    leadership.wait_settled(SETTLE_TIMEOUT)
    if leadership.refusal is not None:
        leadership.stop()
        parser.exit(1, f"{parser.prog}: error: {' '.join(leadership.refusal.split())}\n")
    return leadership


def check_flags(parser: OneLineParser, args: argparse.Namespace) -> tuple[PolicyConfig, QueueMonitor]:
    """Every check of run's flags that opens, writes and connects to nothing: a bad one exits 2."""
    config = policy_config(parser, args)
    monitor = queue_monitor(parser, args)  # checks the URLs; connects to nothing
    check_writable(parser, "--events", args.events)
    if len(lease_queue(args.queue, args.pool).encode()) > MAX_QUEUE_NAME_BYTES:
        parser.error(f"--pool {args.pool!r} is too long: its lease queue's name would pass 255 bytes")
    if args.metrics_address is not None and args.metrics_port is None:
        parser.error("--metrics-address needs --metrics-port")
    return config, monitor


def listen_address(text: str) -> str:
    """--metrics-address: an IPv4 or IPv6 address, or a host name that resolves to one here."""
    return host_or_address(text)


def serve_metrics(parser: OneLineParser, metrics: ScalerMetrics, address: str, port: int) -> None:
    try:
        metrics.serve(port, address)
    except OSError as exc:
        where = f"--metrics-port {port} on {address}"
        if exc.errno == errno.EADDRINUSE:
            parser.error(f"{where}: address already in use; choose another port")
        parser.error(f"{where}: cannot serve on it: {exc.strerror or exc}")


def open_events(parser: OneLineParser, path: str | None) -> EventsFile | None:
    if path is None:
        return None
    try:
        return EventsFile(path)
    except OSError as exc:
        parser.error(f"--events {path}: cannot open: {exc.strerror or exc}")


def tick_until_stopped(
    scaler: Scaler, args: argparse.Namespace, stop: threading.Event, metrics: ScalerMetrics
) -> None:
    ticks = 0
    while not stop.is_set():
        with metrics.timing_tick():
            report = scaler.tick()
        ticks += 1
        if args.once:
            print(json.dumps(report.event()))
            return
        if args.ticks and ticks >= args.ticks:
            return
        # A standby that comes to lead wakes the loop: it takes over at once, not an interval later.
        wake = scaler.leadership.wake
        wake.wait(args.interval)
        wake.clear()


def finish(scaler: Scaler, args: argparse.Namespace, sinks: TickSinks) -> None:
    if args.shutdown_on_exit and not args.dry_run:
        if scaler.leadership.term() is None:
            log.info("not shutting down the pool: this scaler does not lead it")
        else:
            stopped = scaler.shutdown_pool()
            log.info("shutting down the pool: %s", ", ".join(stopped) or "nothing running")
    if isinstance(scaler.leadership, Leadership):
        scaler.leadership.stop()  # a standby may claim the lease now, not after a heartbeat timeout
    if sinks.events:
        sinks.events.close()
