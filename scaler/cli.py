"""virtscale-scaler: watch the job queue and the pool's libvirt domains, boot or drain VMs.

run       the control loop (--once for one tick, --dry-run to change nothing)
status    the pool and the queue, once
simulate  replay a load trace against a policy, offline
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import urllib.parse

from virtscale.scaler.hypervisor import Hypervisor, HypervisorRefused, HypervisorUnavailable
from virtscale.scaler.loop import EventsFile, Scaler, TickReport
from virtscale.scaler.policy import Policy, PolicyConfig
from virtscale.scaler.queue_monitor import QueueMonitor

from virtscale import defaults
from virtscale.config import (
    OneLineParser,
    add_common_options,
    configure_logging,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    resolve_amqp_url,
)

log = logging.getLogger("scaler")


def percent(text: str) -> float:
    value = non_negative_float(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"must be a percentage 0-100, got {text!r}")
    return value


def add_policy_options(parser: argparse.ArgumentParser) -> None:
    """The policy's flags; `run` and `simulate` take the same ones."""
    d = PolicyConfig()
    group = parser.add_argument_group("policy")
    group.add_argument(
        "--min",
        dest="min_vms",
        type=non_negative_int,
        default=d.min_vms,
        help="fewest VMs; 0 allows scale to zero (default: %(default)s)",
    )
    group.add_argument(
        "--max", dest="max_vms", type=positive_int, default=d.max_vms, help="most VMs (default: %(default)s)"
    )
    group.add_argument(
        "--slo",
        type=positive_float,
        default=d.slo,
        help="seconds a job may wait; the backlog signal plans for it (default: %(default)s)",
    )
    group.add_argument(
        "--target-backlog",
        type=positive_float,
        default=d.target_backlog,
        help="waiting jobs per VM before another is wanted, until a VM's throughput is measured "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--cpu-high",
        type=percent,
        default=d.cpu_high,
        help="mean CPU%% above which a VM is added (default: %(default)s)",
    )
    group.add_argument(
        "--cpu-low",
        type=percent,
        default=d.cpu_low,
        help="mean CPU%% below which a VM is removed (default: %(default)s)",
    )
    group.add_argument(
        "--scale-up-cooldown",
        type=non_negative_float,
        default=d.scale_up_cooldown,
        help="seconds between scale-ups (default: %(default)s)",
    )
    group.add_argument(
        "--scale-down-stabilization",
        type=non_negative_float,
        default=d.scale_down_stabilization,
        help="seconds a lower recommendation must hold before VMs go (default: %(default)s)",
    )
    group.add_argument(
        "--boot-timeout",
        type=positive_float,
        default=d.boot_timeout,
        help="seconds a started VM has to consume before it is failed (default: %(default)s)",
    )
    group.add_argument(
        "--drain-timeout",
        type=positive_float,
        default=d.drain_timeout,
        help="seconds after ACPI shutdown before destroy (default: %(default)s)",
    )
    group.add_argument(
        "--idle-to-zero",
        type=non_negative_float,
        default=d.idle_to_zero,
        help="with --min 0: seconds of idle queue before the last VM goes (default: %(default)s)",
    )
    group.add_argument(
        "--max-start-per-tick",
        type=positive_int,
        default=d.max_start_per_tick,
        help="VMs started per tick at most: the larger of this and +100%% (default: %(default)s)",
    )
    group.add_argument(
        "--interval",
        type=positive_float,
        default=defaults.SCALER_INTERVAL,
        help="seconds between ticks (default: %(default)s)",
    )
    group.add_argument(
        "--window",
        type=positive_float,
        default=defaults.CPU_WINDOW,
        help="seconds of CPU history averaged (default: %(default)s)",
    )


def policy_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> PolicyConfig:
    config = PolicyConfig(
        min_vms=args.min_vms,
        max_vms=args.max_vms,
        target_backlog=args.target_backlog,
        cpu_high=args.cpu_high,
        cpu_low=args.cpu_low,
        slo=args.slo,
        scale_up_cooldown=args.scale_up_cooldown,
        scale_down_stabilization=args.scale_down_stabilization,
        boot_timeout=args.boot_timeout,
        drain_timeout=args.drain_timeout,
        idle_to_zero=args.idle_to_zero,
        max_start_per_tick=args.max_start_per_tick,
    )
    problems = config.problems()
    if problems:
        parser.error(problems[0])
    return config


def add_pool_options(parser: argparse.ArgumentParser) -> None:
    add_common_options(parser)
    parser.add_argument(
        "--connect", action="append", metavar="URI", help="libvirt URI, repeatable (default: qemu:///system)"
    )
    parser.add_argument(
        "--pool",
        default="vm-*",
        help="glob of the domain names the scaler manages; no other domain is touched (default: %(default)s)",
    )
    parser.add_argument(
        "--management-url",
        default=os.environ.get("VIRTSCALE_MANAGEMENT_URL", defaults.MANAGEMENT_URL),
        help="RabbitMQ management API, http:// or https:// (default: %(default)s); "
        "credentials are those of --amqp-url",
    )
    parser.add_argument("--management-ca", help="CA bundle to verify an https management URL")


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="virtscale-scaler", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    run = commands.add_parser("run", help="the control loop")
    add_pool_options(run)
    add_policy_options(run)
    run.add_argument("--once", action="store_true", help="one tick, then exit")
    run.add_argument("--dry-run", action="store_true", help="decide and report, change nothing")
    run.add_argument("--events", metavar="FILE", help="append one JSON line per tick to FILE")
    run.add_argument(
        "--metrics-port", type=non_negative_int, help="serve Prometheus metrics on 127.0.0.1:PORT"
    )
    run.add_argument(
        "--shutdown-on-exit",
        action="store_true",
        help="ACPI-shutdown every running pool VM when the scaler exits",
    )
    run.add_argument("--ticks", type=positive_int, help=argparse.SUPPRESS)
    status = commands.add_parser("status", help="the pool and the queue, once")
    add_pool_options(status)
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    from virtscale.scaler.simulate import add_simulate_parser

    add_simulate_parser(commands)
    return parser


def build_scaler(
    parser: OneLineParser,
    args: argparse.Namespace,
    policy: Policy,
    *,
    window: float,
    dry_run: bool = False,
    on_tick=None,
) -> Scaler:
    url = resolve_amqp_url(parser, args)
    management = urllib.parse.urlsplit(args.management_url)
    if management.scheme not in ("http", "https") or not management.hostname:
        parser.error(f"--management-url must be http(s)://host:port, got {args.management_url!r}")
    amqp = urllib.parse.urlsplit(url)
    auth = (urllib.parse.unquote(amqp.username or "guest"), urllib.parse.unquote(amqp.password or "guest"))
    vhost = urllib.parse.unquote(amqp.path[1:]) if len(amqp.path) > 1 else "/"
    monitor = QueueMonitor(
        args.management_url, auth, vhost, args.queue, url, verify=args.management_ca or True
    )
    hypervisors = []
    for uri in args.connect or ["qemu:///system"]:
        try:
            Hypervisor.check_uri(uri)
        except HypervisorRefused as exc:
            parser.error(str(exc))
        except HypervisorUnavailable as exc:
            log.warning("%s; will keep retrying", exc)
        hypervisors.append(Hypervisor(uri, args.pool))
    return Scaler(hypervisors, monitor, policy, window=window, dry_run=dry_run, on_tick=on_tick)


def status_table(report: TickReport, with_decision: bool = True) -> str:
    reading = report.reading
    lines = [
        f"queue: depth {fmt(reading.depth)} (ready {fmt(reading.ready)}, unacked {fmt(reading.unacked)}), "
        f"in {fmt(reading.publish_rate, '.1f')}/s, acked {fmt(reading.ack_rate, '.1f')}/s, "
        f"consumers {fmt(reading.consumers)}" + ("  [degraded]" if report.degraded else ""),
        f"{'domain':<16} {'state':<14} {'cpu%':>6} consuming",
    ]
    for sample in sorted(report.samples, key=lambda s: s.name):
        cpu = report.cpu.get(sample.name)
        lines.append(
            f"{sample.name:<16} {sample.state:<14} {fmt(cpu, '.1f'):>6} "
            f"{'yes' if sample.name in reading.consuming else 'no'}"
        )
    if with_decision:
        lines.append(f"decision: {report.decision.reason}")
    lines += [f"problem: {problem}" for problem in report.problems + report.failed_actions]
    return "\n".join(lines)


def fmt(value, spec: str = "") -> str:
    return "?" if value is None else format(value, spec)


def run_loop(parser: OneLineParser, args: argparse.Namespace) -> int:
    from virtscale.scaler.metrics import ScalerMetrics

    config = policy_config(parser, args)
    events = EventsFile(args.events) if args.events else None
    metrics = ScalerMetrics(args.metrics_port)
    interactive = sys.stdout.isatty() and sys.stdin is not None and sys.stdin.isatty()

    def on_tick(report: TickReport) -> None:
        metrics.record(report)
        if events:
            events.write(report)
        if interactive:
            print("\033[2J\033[H" + status_table(report) + "\n\ntype 'terminate' to stop", flush=True)

    scaler = build_scaler(
        parser, args, Policy(config), window=args.window, dry_run=args.dry_run, on_tick=on_tick
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if interactive:
        threading.Thread(target=read_console, args=(stop,), daemon=True).start()
    ticks = 0
    try:
        while not stop.is_set():
            report = scaler.tick()
            ticks += 1
            if args.once:
                print(json.dumps(report.event()))
                break
            if args.ticks and ticks >= args.ticks:
                break
            stop.wait(args.interval)
    finally:
        if args.shutdown_on_exit and not args.dry_run:
            log.info("shutting down the pool: %s", ", ".join(scaler.shutdown_pool()) or "nothing running")
        if events:
            events.close()
    return 0


def read_console(stop: threading.Event) -> None:
    for line in sys.stdin:
        if line.strip() == "terminate":
            stop.set()
            return
        print("type 'terminate' to stop the scaler", file=sys.stderr)


def show_status(parser: OneLineParser, args: argparse.Namespace) -> int:
    # A single tick with a policy that is never asked to act: observe and print.
    scaler = build_scaler(
        parser,
        args,
        Policy(PolicyConfig(min_vms=0, max_vms=1 << 16)),
        window=defaults.CPU_WINDOW,
        dry_run=True,
    )
    scaler.observe_domains()  # a first CPU sample, so the second can give a figure
    threading.Event().wait(1.0)
    report = scaler.tick()
    print(json.dumps(report.event(), indent=2) if args.json else status_table(report, False))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    if args.command == "run":
        return run_loop(parser, args)
    if args.command == "status":
        return show_status(parser, args)
    from virtscale.scaler.simulate import run_simulation

    return run_simulation(parser, args)
