"""Load profiles: arrival rate (jobs per second) as a function of seconds since start.

Shared by the producer (to pace publishes) and the scaler's simulator (to replay load),
so a profile means the same thing in a live run and in a simulation.
"""

from __future__ import annotations

import bisect
import csv
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Rate = Callable[[float], float]

PROFILES = ("constant", "step", "ramp", "spike", "sine", "bursty")


class TraceError(ValueError):
    """The trace file cannot be used; the message says which line and why."""


@dataclass(frozen=True)
class ProfileSpec:
    """Parameters of the built-in profiles; each profile uses the ones that apply to it."""

    kind: str = "constant"
    #: Rate outside a step, spike or burst, and the low end of a ramp or sine (jobs/s).
    base: float = 1.0
    #: Rate during a step, spike or burst, and the high end of a ramp or sine (jobs/s).
    peak: float = 10.0
    #: Seconds before a step or spike begins; for ramp, seconds to reach the peak.
    start: float = 60.0
    #: Seconds a step or spike (or each burst) lasts.
    duration: float = 120.0
    #: Seconds per cycle of a sine or between the starts of two bursts.
    period: float = 600.0
    #: Seed for the bursty profile's random burst times.
    seed: int = 0
    #: Seconds the whole profile runs (the simulator's horizon).
    length: float = 900.0


def profile_rate(spec: ProfileSpec) -> Rate:
    """The rate function of a built-in profile."""
    base, peak = spec.base, spec.peak
    if spec.kind == "constant":
        return lambda t: base
    if spec.kind == "step":
        return lambda t: peak if spec.start <= t < spec.start + spec.duration else base
    if spec.kind == "spike":
        # A short, sharp spike: the whole peak at once, for `duration` seconds.
        return lambda t: peak if spec.start <= t < spec.start + spec.duration else base
    if spec.kind == "ramp":
        # Up from base to peak over `start` seconds, held for `duration`, then back down as fast.
        up = max(spec.start, 1e-9)

        def ramp(t: float) -> float:
            if t < up:
                return base + (peak - base) * t / up
            if t < up + spec.duration:
                return peak
            return max(base, peak - (peak - base) * (t - up - spec.duration) / up)

        return ramp
    if spec.kind == "sine":
        middle, amplitude = (base + peak) / 2, (peak - base) / 2
        return lambda t: middle - amplitude * math.cos(2 * math.pi * t / spec.period)
    if spec.kind == "bursty":
        rng = np.random.default_rng(spec.seed)
        starts, t = [], spec.start
        while t < spec.length:
            starts.append(t)
            t += rng.exponential(spec.period)
        starts_array = np.array(starts)

        def bursty(t: float) -> float:
            index = bisect.bisect_right(starts, t) - 1
            in_burst = index >= 0 and t < starts_array[index] + spec.duration
            return peak if in_burst else base

        return bursty
    raise ValueError(f"unknown profile {spec.kind!r}; choose one of {', '.join(PROFILES)}")


def load_trace(path: str) -> tuple[Rate, float]:
    """Rate function from a CSV with header ``time,rate`` (each rate held until the next row),
    and the trace's length in seconds (the last row's time)."""
    times: list[float] = []
    rates: list[float] = []
    reader = None
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None or [column.strip() for column in header] != ["time", "rate"]:
                raise TraceError(f"{path}: first line must be the header 'time,rate'")
            for row in reader:
                line_number = reader.line_num
                if not row:
                    continue
                try:
                    when, rate = float(row[0]), float(row[1])
                except (ValueError, IndexError):
                    raise TraceError(f"{path}:{line_number}: expected two numbers 'time,rate'") from None
                if rate < 0 or not math.isfinite(rate) or not math.isfinite(when):
                    raise TraceError(f"{path}:{line_number}: rate must be a finite number >= 0")
                if times and when <= times[-1]:
                    raise TraceError(f"{path}:{line_number}: times must increase")
                times.append(when)
                rates.append(rate)
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        # Decoded ahead in blocks: the line after the last one read is where it was met.
        where = reader.line_num + 1 if reader else 1
        raise TraceError(f"{path}:{where}: not UTF-8 text, not a CSV trace") from None
    except csv.Error as exc:  # a field over the csv module's limit (128 KiB), a NUL byte
        raise TraceError(f"{path}:{reader.line_num}: not a CSV line: {exc}") from None
    if not times:
        raise TraceError(f"{path}: no rows after the header")

    def trace(t: float) -> float:
        index = bisect.bisect_right(times, t) - 1
        return rates[index] if index >= 0 else 0.0

    return trace, times[-1]
