"""`virtscale-scaler status`: the pool, the queue and who leads, once, as a table or JSON."""

from __future__ import annotations

import argparse
import functools
import json
import threading

from virtscale import defaults
from virtscale.config import OneLineParser
from virtscale.naming import lease_queue
from virtscale.scaler.commands.pool import add_pool_options, build_scaler
from virtscale.scaler.live import fmt, host_counts, host_label, yes_no
from virtscale.scaler.loop import TickReport
from virtscale.scaler.policy import Policy, PolicyConfig

DESCRIPTION = """\
Print the pool's domains (state, CPU%, consuming), the job queue (depth, rates, consumers) and
which scaler leads the pool (holds its lease) once, without changing anything. CPU% needs two
samples, so this takes about a second.
A figure the broker or libvirt did not report shows as '?' and marks the reading [degraded];
if the broker refuses the credentials (or the queue), status exits 1 with one line."""

EXAMPLES = """\
examples:
  virtscale-scaler status
  virtscale-scaler status --connect qemu+ssh://host-2/system --pool workers
  virtscale-scaler status --json --management-url https://broker:15671
"""

#: Seconds between the two CPU samples status takes.
SAMPLE_GAP = 1.0


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "status",
        help="the pool and the queue, once",
        description=DESCRIPTION,
        epilog=EXAMPLES,
    )
    add_pool_options(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=functools.partial(show_status, parser))


def show_status(parser: OneLineParser, args: argparse.Namespace) -> int:
    # A single tick with a policy that is never asked to act: observe and print.
    scaler = build_scaler(
        parser,
        args,
        Policy(PolicyConfig(min_vms=0, max_vms=1 << 16)),
        window=defaults.CPU_WINDOW,
        dry_run=True,
    )
    scaler.log_decisions = False  # the throwaway policy's decision means nothing
    scaler.observe_domains()  # a first CPU sample, so the second can give a figure
    threading.Event().wait(SAMPLE_GAP)
    report = scaler.tick()
    report.lease_holder = scaler.monitor.lease_holder(lease_queue(args.queue, args.pool))
    print(json.dumps(status_event(report), indent=2) if args.json else status_table(report))
    return 0


#: The keys of a tick's event that belong to the decision: status's policy is never asked to act,
#: so what it would decide is left out rather than shown as if a scaler had decided it. Nor does
#: status lead: who does is its "lease_holder".
DECISION_KEYS = ("desired", "actions", "reason", "signals", "leader")


def status_event(report: TickReport) -> dict:
    """The tick's event as JSON output: what was observed, without a decision."""
    return {key: value for key, value in report.event().items() if key not in DECISION_KEYS}


def leader_text(holder: str | None) -> str:
    """Who leads, for display: the lease holder's name, "none", or "?" when not known."""
    return "?" if holder is None else holder or "none (no scaler holds the lease)"


def status_table(report: TickReport) -> str:
    """The tick as plain text: the queue, one line per domain, and problems."""
    reading = report.reading
    lines = [
        f"queue: depth {fmt(reading.depth)} (ready {fmt(reading.ready)}, unacked {fmt(reading.unacked)}), "
        f"in {fmt(reading.publish_rate, '.1f')}/s, acked {fmt(reading.ack_rate, '.1f')}/s, "
        f"consumers {fmt(reading.consumers)}" + ("  [degraded]" if report.degraded else ""),
        f"{'domain':<16} {'state':<14} {'cpu%':>6} {'consuming':<9} host",
    ]
    for name, domain in sorted(report.domains().items()):
        host = host_label(domain["host"]) if domain.get("host") else "?"
        lines.append(
            f"{name:<16} {domain['state']:<14} {fmt(domain['cpu'], '.1f'):>6} "
            f"{yes_no(domain['consuming']):<9} {host}"
        )
    if len(report.hosts) > 1:
        lines.append("hosts: " + host_counts(report))
    lines.append(f"leader: {leader_text(report.lease_holder)}")
    lines += [f"problem: {problem}" for problem in report.problems + report.failed_actions]
    return "\n".join(lines)
