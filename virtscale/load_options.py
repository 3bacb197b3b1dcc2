"""The load-profile flags, one definition for the producer (to pace a live run) and the scaler's
simulate command (to replay the same load offline), so a flag accepts the same values in both.

Each command keeps its own defaults: the producer's are ProfileSpec's, the simulator's are
those of the standard profile named by --profile.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from virtscale.config import MAX_SIMULATED_SECONDS, bounded_float
from virtscale.load import PROFILES, ProfileSpec, Rate, TraceError, load_trace

#: The profile parameters that have a flag of the same name (``--length`` only where asked).
PROFILE_FLAGS = ("base", "peak", "start", "duration", "period", "length")

#: Times are bounded by the simulator's horizon (a longer one could not be replayed anyway); a
#: bursty period under a second would make a burst list of millions before the run starts.
_TIME = bounded_float(0, MAX_SIMULATED_SECONDS)
_DURATION = bounded_float(0, MAX_SIMULATED_SECONDS, low_open=True)
_PERIOD = bounded_float(1, MAX_SIMULATED_SECONDS)
_RATE = bounded_float(0, float("inf"))

#: flag -> (type, metavar, help). Rates may be 0 (a profile with no base load); times may not.
_FLAGS = {
    "base": (_RATE, "JOBS/S", "rate outside the peak and bursts"),
    "peak": (_RATE, "JOBS/S", "rate at the peak"),
    "start": (
        _TIME,
        "SECONDS",
        "seconds before the step, spike or first burst; ramp: seconds to reach the peak",
    ),
    "duration": (_DURATION, "SECONDS", "seconds the peak (or each burst) lasts"),
    "period": (_PERIOD, "SECONDS", "sine period; bursty: mean seconds between bursts (at least 1)"),
    "length": (
        _DURATION,
        "SECONDS",
        f"seconds the whole profile runs, at most {MAX_SIMULATED_SECONDS:.15g} (30 days)",
    ),
}


def add_load_options(
    parser: argparse.ArgumentParser,
    *,
    defaults: ProfileSpec | None,
    profile_default: str | None,
    profile_help: str,
    with_length: bool = False,
) -> argparse._ArgumentGroup:
    """--profile, its parameters and --trace, in a group of their own.

    ``defaults`` gives each parameter's default; None leaves them unset (None), for a command
    that takes them from the chosen profile instead (see ``profile_spec``).
    """
    group = parser.add_argument_group("load profile")
    group.add_argument(
        "--profile",
        choices=PROFILES,
        default=profile_default,
        metavar="NAME",
        help=f"{profile_help}; one of {', '.join(PROFILES)}",
    )
    for name in PROFILE_FLAGS:
        if name == "length" and not with_length:
            continue
        kind, metavar, text = _FLAGS[name]
        default = None if defaults is None else getattr(defaults, name)
        shown = "the standard profile's" if defaults is None else "%(default)s"
        group.add_argument(
            f"--{name}", type=kind, default=default, metavar=metavar, help=f"{text} (default: {shown})"
        )
    group.add_argument(
        "--trace",
        type=trace_path,
        metavar="FILE",
        help="replay a load trace instead: CSV with the header time,rate "
        "(`virtscale-scaler trace` makes one from a run's --events file)",
    )
    return group


def trace_path(text: str) -> str:
    """--trace: a file name; an empty one is an error, not "no trace" (the default profile)."""
    if not text:
        raise argparse.ArgumentTypeError("the file name is empty")
    return text


def profile_spec(args: argparse.Namespace, base: ProfileSpec, **fixed) -> ProfileSpec:
    """``base`` with the profile named by --profile and every parameter flag that was given."""
    given = {name: getattr(args, name) for name in PROFILE_FLAGS if getattr(args, name, None) is not None}
    return replace(base, kind=args.profile, **{**given, **fixed})


def read_trace(parser: argparse.ArgumentParser, path: str) -> tuple[Rate, float]:
    """The --trace file's rate function and length; a file that cannot be used is a flag error."""
    try:
        return load_trace(path)
    except TraceError as exc:
        parser.error(f"--trace {exc}")
