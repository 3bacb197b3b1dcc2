"""The load-profile flags, one definition for the producer (to pace a live run) and the scaler's
simulate command (to replay the same load offline), so a flag accepts the same values in both.

Each command keeps its own defaults: the producer's are ProfileSpec's, the simulator's are
those of the standard profile named by --profile.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from virtscale.config import non_negative_float, positive_float
from virtscale.load import PROFILES, ProfileSpec, Rate, TraceError, load_trace

#: The profile parameters that have a flag of the same name (``--length`` only where asked).
PROFILE_FLAGS = ("base", "peak", "start", "duration", "period", "length")

#: flag -> (type, metavar, help). Rates may be 0 (a profile with no base load); times may not.
_FLAGS = {
    "base": (non_negative_float, "JOBS/S", "rate outside the peak and bursts"),
    "peak": (non_negative_float, "JOBS/S", "rate at the peak"),
    "start": (
        non_negative_float,
        "SECONDS",
        "seconds before the step, spike or first burst; ramp: seconds to reach the peak",
    ),
    "duration": (positive_float, "SECONDS", "seconds the peak (or each burst) lasts"),
    "period": (positive_float, "SECONDS", "sine period; bursty: mean seconds between bursts"),
    "length": (positive_float, "SECONDS", "seconds the whole profile runs"),
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
        metavar="FILE",
        help="replay a load trace instead: CSV with the header time,rate "
        "(`virtscale-scaler trace` makes one from a run's --events file)",
    )
    return group


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
