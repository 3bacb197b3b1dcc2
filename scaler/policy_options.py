"""The policy's flags, shared by `virtscale-scaler run` and `virtscale-scaler simulate`, so a
policy tried in the simulator is the one the live scaler runs with the same flags."""

from __future__ import annotations

import argparse

from virtscale import defaults
from virtscale.config import (
    MAX_IDLE_TO_ZERO,
    MAX_SECONDS,
    MAX_VMS,
    MIN_INTERVAL,
    bounded_float,
    bounded_int,
    non_negative_float,
    positive_float,
    positive_int,
)
from virtscale.scaler.policy import PolicyConfig

#: The SECONDS flags' types: each bounded (config.py holds the bounds) so that no value can
#: overflow a wait or make a tick loop that never ends.
SECONDS = bounded_float(0, MAX_SECONDS)
POSITIVE_SECONDS = bounded_float(0, MAX_SECONDS, low_open=True)
IDLE_SECONDS = bounded_float(0, MAX_IDLE_TO_ZERO)
_INTERVAL = bounded_float(MIN_INTERVAL, MAX_SECONDS)


def interval_seconds(text: str) -> float:
    """--interval: above 0 (said first, as for every other time), at least MIN_INTERVAL."""
    POSITIVE_SECONDS(text)
    return _INTERVAL(text)


interval_seconds.high = MAX_SECONDS


def percent(text: str) -> float:
    value = non_negative_float(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"must be a percentage 0-100, got {text!r}")
    return value


def add_policy_options(parser: argparse.ArgumentParser) -> None:
    """The policy's flags, in a group of their own; defaults are PolicyConfig's."""
    group = parser.add_argument_group("policy")
    _add_size_options(group, PolicyConfig())
    _add_signal_options(group, PolicyConfig())
    _add_timing_options(group, PolicyConfig())


def _add_size_options(group, config: PolicyConfig) -> None:
    group.add_argument(
        "--min",
        dest="min_vms",
        type=bounded_int(0, MAX_VMS),
        default=config.min_vms,
        metavar="N",
        help="fewest VMs; 0 allows scale to zero (default: %(default)s)",
    )
    group.add_argument(
        "--max",
        dest="max_vms",
        type=bounded_int(1, MAX_VMS),
        default=config.max_vms,
        metavar="N",
        help=f"most VMs, at most {MAX_VMS} (default: %(default)s)",
    )
    group.add_argument(
        "--max-start-per-tick",
        type=positive_int,
        default=config.max_start_per_tick,
        metavar="N",
        help="VMs started per tick at most: the larger of this and +100%% (default: %(default)s)",
    )
    group.add_argument(
        "--warm-pool",
        type=bounded_int(0, MAX_VMS),
        default=config.warm_pool,
        metavar="N",
        help="saved (warm) VMs to keep besides the running ones: a scale-out restores one in "
        "seconds instead of booting one; scale-in saves VMs while the warm pool has room "
        "(default: %(default)s, no warm pool)",
    )


def _add_signal_options(group, config: PolicyConfig) -> None:
    group.add_argument(
        "--slo",
        type=POSITIVE_SECONDS,
        default=config.slo,
        metavar="SECONDS",
        help="seconds a job may wait; the backlog signal plans for it (default: %(default)s)",
    )
    group.add_argument(
        "--target-backlog",
        type=positive_float,
        default=config.target_backlog,
        metavar="JOBS",
        help="waiting jobs per VM before another is wanted, until a VM's throughput is measured "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--cpu-high",
        type=percent,
        default=config.cpu_high,
        metavar="PERCENT",
        help="mean CPU%% above which a VM is added (default: %(default)s)",
    )
    group.add_argument(
        "--cpu-low",
        type=percent,
        default=config.cpu_low,
        metavar="PERCENT",
        help="mean CPU%% below which a VM is removed (default: %(default)s)",
    )


def _add_timing_options(group, config: PolicyConfig) -> None:
    """Cooldowns and timeouts, and the tick and CPU window the signals are read over."""
    for flag, kind, default, text in (
        ("--scale-up-cooldown", SECONDS, config.scale_up_cooldown, "between scale-ups"),
        (
            "--scale-down-stabilization",
            SECONDS,
            config.scale_down_stabilization,
            "a lower recommendation must hold before VMs go",
        ),
        (
            "--boot-timeout",
            POSITIVE_SECONDS,
            config.boot_timeout,
            "a started VM has to consume before it is failed",
        ),
        ("--drain-timeout", POSITIVE_SECONDS, config.drain_timeout, "after ACPI shutdown before destroy"),
        (
            "--idle-to-zero",
            IDLE_SECONDS,
            config.idle_to_zero,
            "of idle queue before the last VM goes (with --min 0)",
        ),
        (
            "--interval",
            interval_seconds,
            defaults.SCALER_INTERVAL,
            f"between ticks, at least {MIN_INTERVAL:g}",
        ),
        ("--window", POSITIVE_SECONDS, defaults.CPU_WINDOW, "of CPU history averaged"),
        (
            "--warm-boot-delay",
            SECONDS,
            config.warm_boot_delay,
            "from a restore to consuming, planned for; default: learned from the restores",
        ),
        (
            "--cold-boot-delay",
            SECONDS,
            config.cold_boot_delay,
            "from a cold boot to consuming, planned for; default: learned from the boots",
        ),
    ):
        group.add_argument(
            flag,
            type=kind,
            default=default,
            metavar="SECONDS",
            # A default of None is the learned figure: its text says so.
            help=f"seconds {text} (at most {kind.high:.15g}"
            + ("; default: %(default)s)" if default is not None else ")"),
        )


def policy_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> PolicyConfig:
    """The PolicyConfig the flags describe; a combination that cannot work is a flag error."""
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
        warm_pool=args.warm_pool,
        warm_boot_delay=args.warm_boot_delay,
        cold_boot_delay=args.cold_boot_delay,
    )
    problems = config.problems()
    if problems:
        parser.error(problems[0])
    return config
