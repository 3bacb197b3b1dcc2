"""`virtscale-scaler simulate`: replay a load profile or trace against one policy or all of them,
offline. The model of the pool is scaler/simulator.py; the policies are the live scaler's own."""

from __future__ import annotations

import argparse
import functools
import json
import os

from virtscale.config import (
    MAX_SIMULATED_SECONDS,
    MAX_VCPUS,
    add_logging_options,
    add_version_option,
    bounded_int,
    non_negative_int,
)
from virtscale.load import ProfileSpec, profile_rate
from virtscale.load_options import add_load_options, profile_spec, read_trace
from virtscale.scaler.commands.checks import check_writable
from virtscale.scaler.lab import POLICIES, STANDARD_PROFILES, make_policy, table
from virtscale.scaler.policy import PolicyConfig
from virtscale.scaler.policy_options import POSITIVE_SECONDS, add_policy_options, policy_config
from virtscale.scaler.simulator import World, arrival_times, arrivals_per_second, simulate

DESCRIPTION = """\
Replay a load profile or a trace against a policy (or all of them) in a model of the pool, and
print VM-seconds, efficiency, latency percentiles, backlog and SLO violations. The policies are
the live scaler's code; the world's calibration (service time, boot delay) was measured."""

EXAMPLES = """\
examples:
  virtscale-scaler simulate --profile step --json
  virtscale-scaler simulate --policy all --profile bursty --max 8 --plot var/bursty.png
  virtscale-scaler trace var/events.jsonl > var/trace.csv && virtscale-scaler simulate --trace var/trace.csv
"""


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "simulate",
        help="replay a load profile or trace against a policy, offline",
        description=DESCRIPTION,
        epilog=EXAMPLES,
    )
    add_policy_options(parser)
    add_world_options(parser)
    add_load_options(
        parser,
        defaults=None,
        profile_default="step",
        profile_help="load profile, with its standard parameters where a flag below is not given "
        "(default: step)",
        with_length=True,
    )
    output = parser.add_argument_group("simulation")
    output.add_argument(
        "--policy",
        choices=(*POLICIES, "all"),
        default="default",
        metavar="NAME",
        help=f"policy to run: {', '.join(POLICIES)}, or all of them (default: %(default)s)",
    )
    output.add_argument(
        "--seed",
        type=non_negative_int,
        default=1,
        metavar="N",
        help="seed for arrivals (default: %(default)s)",
    )
    output.add_argument("--json", action="store_true", help="one JSON object (a list with --policy all)")
    output.add_argument(
        "--plot", metavar="FILE", help="plot load, backlog and VMs over time (.png, .svg, .pdf, ...)"
    )
    add_logging_options(parser, default_level="WARNING")
    add_version_option(parser)
    parser.set_defaults(handler=functools.partial(run_simulation, parser))


def add_world_options(parser: argparse.ArgumentParser) -> None:
    """The model's calibration; defaults are World's (measured, see virtscale.defaults)."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--vcpus",
        type=bounded_int(1, MAX_VCPUS),
        default=World.vcpus,
        metavar="N",
        help=f"slots per VM, at most {MAX_VCPUS} (default: %(default)s)",
    )
    for flag, default, text in (
        ("--service-time", World.service_time, "per job per slot (default: %(default)s, measured)"),
        ("--boot-delay", World.boot_delay, "from start to consuming (default: %(default)s, measured)"),
        ("--shutdown-delay", World.shutdown_delay, "from drained to off (default: %(default)s)"),
    ):
        group.add_argument(
            flag, type=POSITIVE_SECONDS, default=default, metavar="SECONDS", help=f"seconds {text}"
        )
    group.add_argument(
        "--initial-vms",
        type=non_negative_int,
        metavar="N",
        help="VMs up at time 0, at most --max (default: --min)",
    )


def run_simulation(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    config = policy_config(parser, args)
    world = world_from(parser, args, config)
    plotter = plot_writer(parser, args.plot)
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
    if plotter:
        try:
            plotter(results, args.plot, f"{label}: load, backlog and VMs")
        except OSError as exc:
            parser.error(f"--plot {args.plot}: cannot write: {exc.strerror or exc}")
    return 0


def world_from(parser: argparse.ArgumentParser, args: argparse.Namespace, config: PolicyConfig) -> World:
    initial_vms = config.min_vms if args.initial_vms is None else args.initial_vms
    if initial_vms > config.max_vms:
        parser.error(f"--initial-vms {initial_vms} is more than --max {config.max_vms}")
    return World(
        vcpus=args.vcpus,
        service_time=args.service_time,
        boot_delay=args.boot_delay,
        # The policy's --warm-boot-delay, when given, is also what a restore takes in the model.
        warm_boot_delay=World.warm_boot_delay if config.warm_boot_delay is None else config.warm_boot_delay,
        shutdown_delay=args.shutdown_delay,
        interval=args.interval,
        window=args.window,
        slo=config.slo,
        pool_size=config.max_vms + config.warm_pool,
        initial_vms=initial_vms,
    )


def plot_writer(parser: argparse.ArgumentParser, path: str | None):
    """plot_simulation if --plot names a file matplotlib can write, None without --plot."""
    if path is None:
        return None
    # Here, not at the top: matplotlib takes about half a second to import, and only --plot needs it.
    from virtscale.scaler.plots import plot_formats, plot_simulation

    extension = os.path.splitext(path)[1].lstrip(".").lower()
    formats = plot_formats()
    if extension not in formats:
        parser.error(
            f"--plot {path}: the name must end in a format matplotlib writes: .png, .svg, .pdf "
            f"(or {', '.join('.' + name for name in formats if name not in ('png', 'svg', 'pdf'))})"
        )
    check_writable(parser, "--plot", path)
    return plot_simulation


def load_from(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """(rate function, length in seconds, label) from the load flags."""
    if args.trace:
        rate, length = read_trace(parser, args.trace)
        if args.length is None and length > MAX_SIMULATED_SECONDS:
            parser.error(
                f"--trace {args.trace}: its last time is {length:.15g} s, more than the simulator's "
                f"{MAX_SIMULATED_SECONDS:.15g} (30 days); give --length to replay its start"
            )
        return rate, (args.length or length), args.trace
    standard = STANDARD_PROFILES.get(args.profile, ProfileSpec(kind=args.profile))
    spec = profile_spec(args, standard, seed=args.seed)
    return profile_rate(spec), spec.length, args.profile
