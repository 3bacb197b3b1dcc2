"""`virtscale-scaler simulate` and `virtscale-scaler trace`: replay load against policies offline.

The simulator drives the same policy classes as the live scaler (scaler.policy) with the
world replaced (scaler.simulation). `trace` turns a live run's --events file into a
`time,rate` trace, so a real run can be replayed and compared.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from virtscale.scaler.baselines import HpaCpuPolicy, KedaPolicy, OraclePolicy, OriginalPolicy
from virtscale.scaler.policy import Policy, PolicyConfig
from virtscale.scaler.simulator import World, arrival_times, arrivals_per_second, simulate

from virtscale.config import (
    add_logging_options,
    add_version_option,
    non_negative_int,
    positive_float,
    positive_int,
)
from virtscale.load import PROFILES, ProfileSpec, TraceError, load_trace, profile_rate

POLICIES = ("default", "original", "keda", "hpa-cpu", "oracle")

#: The standard profiles every policy is measured on (make bench-policy); jobs/s against a
#: VM that serves 1 / service_time jobs/s per vCPU.
STANDARD_PROFILES = {
    "step": ProfileSpec(kind="step", base=1, peak=8, start=300, duration=900, length=2400),
    "ramp": ProfileSpec(kind="ramp", base=0.5, peak=10, start=900, duration=600, length=3000),
    "spike": ProfileSpec(kind="spike", base=1, peak=12, start=600, duration=60, length=1800),
    "sine": ProfileSpec(kind="sine", base=0.5, peak=8, period=1800, length=7200),
    "bursty": ProfileSpec(
        kind="bursty", base=1, peak=10, start=120, duration=90, period=600, seed=7, length=7200
    ),
}


def add_simulate_parser(commands) -> None:
    from virtscale.scaler.cli import add_policy_options

    parser = commands.add_parser("simulate", help="replay load against a policy, offline")
    add_policy_options(parser)
    parser.add_argument(
        "--policy",
        choices=(*POLICIES, "all"),
        default="default",
        help="policy to run, or all of them (default: %(default)s)",
    )
    parser.add_argument("--vcpus", type=positive_int, default=1, help="slots per VM (default: %(default)s)")
    parser.add_argument(
        "--service-time",
        type=positive_float,
        default=World.service_time,
        help="seconds per job per slot (default: %(default)s, measured)",
    )
    parser.add_argument(
        "--boot-delay",
        type=positive_float,
        default=World.boot_delay,
        help="seconds from start to consuming (default: %(default)s, measured)",
    )
    parser.add_argument(
        "--shutdown-delay",
        type=positive_float,
        default=3.0,
        help="seconds from drained to off (default: %(default)s)",
    )
    parser.add_argument("--initial-vms", type=non_negative_int, help="VMs up at time 0 (default: --min)")
    load = parser.add_argument_group("load")
    load.add_argument(
        "--profile",
        choices=PROFILES,
        default="step",
        help="built-in load profile (default: %(default)s, with the standard parameters)",
    )
    for name, kind in (
        ("base", float),
        ("peak", float),
        ("start", float),
        ("duration", float),
        ("period", float),
        ("length", float),
    ):
        load.add_argument(
            f"--{name}",
            type=positive_float if kind is float else int,
            help=f"profile {name} (default: the standard profile's)",
        )
    load.add_argument("--trace", metavar="FILE.csv", help="replay a trace with header time,rate instead")
    parser.add_argument("--seed", type=int, default=1, help="seed for arrivals (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="one JSON object (a list with --policy all)")
    parser.add_argument("--plot", metavar="FILE.png", help="plot load, backlog and VMs over time")
    add_logging_options(parser, default_level="WARNING")
    add_version_option(parser)

    trace = commands.add_parser("trace", help="turn a live run's --events file into a time,rate trace")
    trace.add_argument("events", help="events file written by `run --events`")
    add_logging_options(trace, default_level="WARNING")
    add_version_option(trace)


def make_policy(name: str, config: PolicyConfig, world: World, counts) -> Policy:
    if name == "default":
        return Policy(config)
    if name == "original":
        return OriginalPolicy(config)
    if name == "keda":
        return KedaPolicy(config, slo=world.slo, service_time=world.service_time, vcpus=world.vcpus)
    if name == "hpa-cpu":
        return HpaCpuPolicy(config)
    return OraclePolicy(
        config,
        arrivals_per_second=counts,
        slo=world.slo,
        service_time=world.service_time,
        vcpus=world.vcpus,
        boot_delay=world.boot_delay,
        interval=world.interval,
    )


def load_from(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """(rate function, length in seconds, label) from the load flags."""
    if args.trace:
        try:
            rate, length = load_trace(args.trace)
        except TraceError as exc:
            parser.error(str(exc))
        return rate, (args.length or length), args.trace
    spec = STANDARD_PROFILES.get(args.profile, ProfileSpec(kind=args.profile))
    overrides = {
        name: getattr(args, name)
        for name in ("base", "peak", "start", "duration", "period", "length")
        if getattr(args, name) is not None
    }
    spec = replace(spec, kind=args.profile, seed=args.seed, **overrides)
    return profile_rate(spec), spec.length, args.profile


def run_simulation(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command == "trace":
        return events_to_trace(args.events)
    from virtscale.scaler.cli import policy_config

    config = policy_config(parser, args)
    world = World(
        vcpus=args.vcpus,
        service_time=args.service_time,
        boot_delay=args.boot_delay,
        shutdown_delay=args.shutdown_delay,
        interval=args.interval,
        window=args.window,
        slo=config.slo,
        pool_size=config.max_vms,
        initial_vms=config.min_vms if args.initial_vms is None else args.initial_vms,
    )
    rate, length, label = load_from(parser, args)
    counts = arrivals_per_second(rate, length, args.seed)
    arrivals = arrival_times(counts, args.seed)
    names = POLICIES if args.policy == "all" else (args.policy,)
    results = [
        simulate(make_policy(name, config, world, counts), world, arrivals, horizon=length) for name in names
    ]
    summaries = [{"load": label, **result.summary()} for result in results]
    if args.json:
        print(json.dumps(summaries if args.policy == "all" else summaries[0]))
    else:
        print(table(summaries))
    if args.plot:
        from virtscale.scaler.plots import plot_simulation

        plot_simulation(results, args.plot, f"{label}: load, backlog and VMs")
    return 0


COLUMNS = (
    "load",
    "policy",
    "vm_seconds",
    "work_vm_seconds",
    "efficiency",
    "p50",
    "p95",
    "p99",
    "max_backlog",
    "slo_violation_seconds",
    "scale_actions",
)


def table(rows: list[dict]) -> str:
    headers = [
        "load",
        "policy",
        "VM-s",
        "work VM-s",
        "effic.",
        "p50 s",
        "p95 s",
        "p99 s",
        "max backlog",
        "SLO viol. s",
        "actions",
    ]
    lines = [" ".join(f"{h:>11}" for h in headers)]
    for row in rows:
        lines.append(" ".join(f"{_cell(row[c]):>11}" for c in COLUMNS))
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.0f}"
    return str(value)


def events_to_trace(path: str) -> int:
    """Print `time,rate` from the publish rates a live scaler recorded, one row per tick."""
    try:
        with open(path, encoding="utf-8") as handle:
            events = [json.loads(line) for line in handle if line.strip()]
    except (OSError, ValueError) as exc:
        print(f"virtscale-scaler trace: {path}: {exc}", file=sys.stderr)
        return 2
    if not events:
        print(f"virtscale-scaler trace: {path}: no events", file=sys.stderr)
        return 2
    start = events[0]["time"]
    print("time,rate")
    last_time = -1.0
    for event in events:
        when = round(event["time"] - start, 3)
        if when <= last_time:
            continue
        rate = event.get("publish_rate")
        print(f"{when},{0.0 if rate is None else round(rate, 4)}")
        last_time = when
    return 0
