"""`virtscale-scaler trace`: turn a live run's --events file into a `time,rate` load trace, so a
real run can be replayed in the simulator and the policies compared on it."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math

from virtscale.config import add_logging_options, add_version_option

log = logging.getLogger(__name__)

DESCRIPTION = """\
Print a load trace (CSV: time,rate) made from the publish rates a live scaler recorded in its
--events file, one row per tick; `simulate --trace` replays it."""

EXAMPLES = """\
examples:
  virtscale-scaler trace var/events.jsonl > var/trace.csv
  virtscale-scaler simulate --trace var/trace.csv --policy all
"""


class EventsError(ValueError):
    """The events file cannot be turned into a trace; the message says which line and why."""


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "trace",
        help="turn a run's --events file into a load trace for simulate",
        description=DESCRIPTION,
        epilog=EXAMPLES,
    )
    parser.add_argument("events", metavar="FILE", help="events file written by `run --events FILE`")
    add_logging_options(parser, default_level="WARNING")
    add_version_option(parser)
    parser.set_defaults(handler=functools.partial(print_trace, parser))


def print_trace(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Print `time,rate` from the publish rates a live scaler recorded, one row per tick."""
    try:
        rows, missing = trace_rows(read_events(args.events))
    except EventsError as exc:
        parser.error(str(exc))
    if not rows:
        parser.error(f"{args.events}: no event has a publish rate; there is no load to trace")
    if missing:
        log.warning(
            "%s: %d tick(s) without a publish rate left out; the rate before each holds", args.events, missing
        )
    print("time,rate")
    for when, rate in rows:
        print(f"{when},{rate}")
    return 0


def read_events(path: str) -> list[tuple[float, float | None]]:
    """(time, publish rate or None) of every event in the file."""
    events = []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    events.append(_event(path, number, line))
    except OSError as exc:
        raise EventsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise EventsError(f"{path}: not a text file (an events file is UTF-8 JSON lines)") from None
    if not events:
        raise EventsError(f"{path}: no events")
    return events


def _event(path: str, number: int, line: str) -> tuple[float, float | None]:
    where = f"{path}:{number}"
    try:
        event = json.loads(line)
    except ValueError:
        raise EventsError(f"{where}: not JSON; expected one event a line, as `run --events` writes") from None
    if not isinstance(event, dict) or not _number(event.get("time")):
        raise EventsError(f"{where}: expected a JSON object with a numeric 'time'")
    rate = event.get("publish_rate")
    if rate is not None and not _number(rate):
        raise EventsError(f"{where}: 'publish_rate' must be a number or null")
    return event["time"], rate


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def trace_rows(events: list[tuple[float, float | None]]) -> tuple[list[tuple[float, float]], int]:
    """Seconds since the first event and the rate then, and how many ticks had no rate. A tick
    without a rate gives no row, so the rate before it holds (a trace holds each rate until the
    next row) rather than becoming 0; an event not after the last one kept is skipped, as a
    trace's times must increase."""
    start = events[0][0]
    rows: list[tuple[float, float]] = []
    missing = 0
    for time, rate in events:
        when = round(time - start, 3)
        if rate is None:
            missing += 1
            continue
        if rows and when <= rows[-1][0]:
            continue
        rows.append((when, round(rate, 4)))
    return rows, missing
