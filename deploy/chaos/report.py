"""make chaos's report, computed (pure, no I/O) from what the run recorded: the scaler's events,
the harness's health samples (the management API, read directly, not through a proxy), the fault
log, the store's rows, the collector's stats and the producer's last line.

"Whole" is a health sample in which every part of the system is back: the management API
answers; the collector consumes results; the producer (while it runs) is connected; the scaler
ticked recently on a reading that was not degraded; every pool VM that has run longer than the
boot grace (and was not told to stop, and is not the deliberately broken guest) consumes, and the
broker counts at least that many consumers on the job queue; and as many VMs consume as before
the fault (or as the scaler now wants, if fewer). A fault's recovery time runs from its start to
the first whole sample after it ended.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

#: The scaler's actions that change the pool; none may follow a degraded reading.
POOL_ACTIONS = ("create", "start", "save", "shutdown", "destroy", "delete")
#: Actions after which a running domain is no longer expected to consume.
STOP_ACTIONS = ("shutdown", "destroy", "save", "delete")
#: The producer's last line: `confirmed N of M generated`.
PRODUCER_LINE = re.compile(r"confirmed (\d+) of (\d+) generated")


@dataclass(frozen=True)
class WholeRules:
    """What "whole" requires, in the run's own units."""

    #: Seconds after which the scaler's last event is stale (it is dead or stuck).
    stale_after: float = 10.0
    #: Seconds a running VM may take to consume before it is required to.
    boot_grace: float = 90.0
    #: Domains that are broken on purpose (never expected to consume).
    broken: frozenset[str] = field(default_factory=frozenset)


# -- the pool as the events show it ---------------------------------------------------------------


@dataclass(frozen=True)
class PoolState:
    """Per event: since when each domain has run, and which were told to stop since they started."""

    running_since: dict[str, float]
    told_to_stop: frozenset[str]


def pool_states(events: Sequence[dict]) -> list[PoolState]:
    """One PoolState per event, from the run of consecutive `running` states of each domain."""
    states: list[PoolState] = []
    since: dict[str, float] = {}
    stopping: set[str] = set()
    for event in events:
        running = {name for name, domain in event["domains"].items() if domain["state"] == "running"}
        since = {name: since.get(name, event["time"]) for name in running}
        stopping = {name for name in stopping if name in running}
        stopping |= {a["domain"] for a in event["actions"] if a["action"] in STOP_ACTIONS}
        states.append(PoolState(dict(since), frozenset(stopping)))
    return states


def consuming_count(event: dict) -> int:
    return sum(1 for domain in event["domains"].values() if domain.get("consuming"))


def running_count(event: dict) -> int:
    return sum(1 for domain in event["domains"].values() if domain["state"] == "running")


def required_consumers(state: PoolState, now: float, rules: WholeRules) -> set[str]:
    """The VMs that must consume at ``now``: up longer than the boot grace, not stopping, not broken."""
    return {
        name
        for name, since in state.running_since.items()
        if now - since >= rules.boot_grace and name not in state.told_to_stop and name not in rules.broken
    }


def latest_index(times: Sequence[float], when: float) -> int | None:
    """Index of the last time at or before ``when`` (times ascending), None if there is none."""
    index = bisect.bisect_right(times, when) - 1
    return index if index >= 0 else None


# -- whole or not ---------------------------------------------------------------------------------


def missing_parts(sample: dict, event: dict | None, state: PoolState | None, rules: WholeRules) -> list[str]:
    """What keeps the system from being whole at this sample; empty when it is whole."""
    missing = []
    if not sample.get("management_ok"):
        return ["management API unreachable"]
    if (sample.get("result_consumers") or 0) < 1:
        missing.append("collector not consuming")
    if sample.get("producer_running") and not sample.get("producer_connected"):
        missing.append("producer not connected")
    if event is None or sample["time"] - event["time"] > rules.stale_after:
        return [*missing, "scaler not ticking"]
    if event.get("degraded"):
        missing.append("scaler's reading degraded")
    required = required_consumers(state, sample["time"], rules) if state else set()
    silent = sorted(name for name in required if not event["domains"][name].get("consuming"))
    if silent:
        missing.append("not consuming: " + ", ".join(silent))
    if (sample.get("job_consumers") or 0) < max(len(required), 1):
        missing.append(
            f"{sample.get('job_consumers')} consumer(s) on the job queue, {len(required)} VM(s) up"
        )
    return missing


def has_capacity(event: dict, baseline: int) -> bool:
    """As many VMs consume as before the fault, or as the scaler now wants if that is fewer."""
    return consuming_count(event) >= min(event["desired"], baseline)


def resolved_at(fault: dict, events: Sequence[dict]) -> float | None:
    """When the fault is over: its end; for a broken guest, when the scaler stopped that guest."""
    if fault["kind"] not in ("bad-guest", "stray-guest"):
        return fault["end"]
    domain = fault.get("domain")
    for event in events:
        stopped = any(a["domain"] == domain and a["action"] in STOP_ACTIONS for a in event["actions"])
        if stopped and event["time"] >= fault["start"]:
            return event["time"]
    return None


def recovery(fault: dict, samples: Sequence[dict], events: Sequence[dict], rules: WholeRules) -> dict:
    """The fault's start, end and the first whole sample after it, in seconds of epoch time."""
    states = pool_states(events)
    event_times = [event["time"] for event in events]
    before = latest_index(event_times, fault["start"])
    baseline = consuming_count(events[before]) if before is not None else 1
    over = resolved_at(fault, events)
    outcome = {**fault, "resolved": over, "whole_at": None, "still_missing": None}
    if over is None:
        outcome["still_missing"] = ["the fault was never resolved"]
        return outcome
    for sample in samples:
        if sample["time"] < over:
            continue
        index = latest_index(event_times, sample["time"])
        event = events[index] if index is not None else None
        missing = missing_parts(sample, event, states[index] if index is not None else None, rules)
        if not missing and not has_capacity(event, baseline):
            missing = [f"{consuming_count(event)} VM(s) consuming, {baseline} before the fault"]
        if not missing:
            outcome["whole_at"] = sample["time"]
            return outcome
        outcome["still_missing"] = missing
    return outcome


# -- what the scaler did --------------------------------------------------------------------------


def scaler_actions(events: Iterable[dict]) -> list[dict]:
    """Every action, with its tick's time, whether the reading was degraded, and the reason."""
    return [
        {
            "time": event["time"],
            "domain": action["domain"],
            "action": action["action"],
            "degraded": bool(event.get("degraded")),
            "problems": event.get("problems") or [],
            "reason": event.get("reason", ""),
        }
        for event in events
        for action in event["actions"]
    ]


def actions_on_degraded(events: Iterable[dict]) -> list[dict]:
    """Pool actions taken on a tick whose reading was degraded: each one breaks the rule."""
    return [a for a in scaler_actions(events) if a["degraded"] and a["action"] in POOL_ACTIONS]


def degraded_spans(events: Sequence[dict]) -> list[tuple[float, float]]:
    """(start, end) of each run of degraded ticks, ending at the next tick that was not."""
    spans: list[tuple[float, float]] = []
    opened: float | None = None
    for event in events:
        if event.get("degraded") and opened is None:
            opened = event["time"]
        elif not event.get("degraded") and opened is not None:
            spans.append((opened, event["time"]))
            opened = None
    if opened is not None:
        spans.append((opened, events[-1]["time"]))
    return spans


# -- jobs -----------------------------------------------------------------------------------------


def producer_counts(log_text: str) -> tuple[int, int] | None:
    """(confirmed, generated) from the producer's last `confirmed N of M generated` line."""
    found = PRODUCER_LINE.findall(log_text)
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def seconds_over_slo(rows: Iterable[tuple[float, float]], slo: float) -> int:
    """Seconds (of production time) in which at least one job waited longer than the SLO from
    produced to hashed; rows are (produced_at, hashed_at)."""
    return len({int(produced) for produced, hashed in rows if hashed - produced > slo})


def job_figures(confirmed: int | None, rows: int, distinct_ids: int, stats: dict | None) -> dict:
    """Stored, stored twice (rows sharing an id: must be 0) and lost (confirmed but not stored:
    must be 0). Duplicate deliveries the store absorbed are reported apart: they are harmless."""
    stats = stats or {}
    lost = None if confirmed is None else max(confirmed - distinct_ids, 0)
    return {
        "confirmed": confirmed,
        "stored": distinct_ids,
        "stored_twice": rows - distinct_ids,
        "lost": lost,
        "stored_beyond_confirmed": None if confirmed is None else max(distinct_ids - confirmed, 0),
        "duplicate_deliveries_absorbed": stats.get("duplicates_ignored"),
        "dead_lettered": stats.get("dead_lettered"),
        "latency_seconds": stats.get("latency_seconds"),
    }


# -- the whole report -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """Everything the run recorded, as read back from its files."""

    started: float
    events: list[dict]
    samples: list[dict]
    faults: list[dict]
    #: (produced_at, hashed_at) per stored row.
    rows: list[tuple[float, float]]
    distinct_ids: int
    stats: dict | None
    producer_log: str
    slo: float
    drained: bool


def fault_lines(record: RunRecord, rules: WholeRules) -> list[dict]:
    """Each fault with times relative to the run's start and seconds until whole again."""
    out = []
    for fault in record.faults:
        result = recovery(fault, record.samples, record.events, rules)
        whole = result["whole_at"]
        out.append(
            {
                "fault": fault["kind"],
                "detail": fault.get("detail", ""),
                "start_s": round(fault["start"] - record.started, 1),
                "end_s": round(fault["end"] - record.started, 1),
                "seconds_to_whole": None if whole is None else round(whole - fault["start"], 1),
                "seconds_whole_after_end": None if whole is None else round(whole - fault["end"], 1),
                "not_whole_because": None if whole is not None else result["still_missing"],
            }
        )
    return out


def build_report(record: RunRecord, rules: WholeRules) -> dict:
    counts = producer_counts(record.producer_log)
    confirmed, generated = counts if counts else (None, None)
    jobs = job_figures(confirmed, len(record.rows), record.distinct_ids, record.stats)
    spans = degraded_spans(record.events)
    on_degraded = actions_on_degraded(record.events)
    report = {
        "started_at": record.started,
        "generated": generated,
        **jobs,
        "queue_drained": record.drained,
        "slo_seconds": record.slo,
        "seconds_over_slo": seconds_over_slo(record.rows, record.slo),
        "ticks": len(record.events),
        "degraded_ticks": sum(1 for event in record.events if event.get("degraded")),
        "degraded_seconds": round(sum(end - start for start, end in spans), 1),
        "faults": fault_lines(record, rules),
        "scaler_actions": relative(scaler_actions(record.events), record.started),
        "actions_on_degraded": relative(on_degraded, record.started),
    }
    report["failures"] = failures(report)
    report["passed"] = not report["failures"]
    return report


def relative(actions: list[dict], started: float) -> list[dict]:
    return [{**action, "time": round(action["time"] - started, 1)} for action in actions]


def failures(report: dict) -> list[str]:
    """Why the run fails: a lost job, a job stored twice, an action on a degraded reading."""
    found = []
    if report["lost"] is None:
        found.append("the producer's `confirmed N of M generated` line is missing")
    elif report["lost"]:
        found.append(f"{report['lost']} confirmed job(s) never stored")
    if report["stored_twice"]:
        found.append(f"{report['stored_twice']} job id(s) stored twice")
    if report["actions_on_degraded"]:
        found.append(f"{len(report['actions_on_degraded'])} action(s) taken on a degraded reading")
    return found


def summary_lines(report: dict) -> list[str]:
    latency = report.get("latency_seconds") or {}
    lines = [
        "=== chaos report ===",
        f"jobs: confirmed {report['confirmed']} of {report['generated']} generated; "
        f"stored {report['stored']}; lost {report['lost']}; "
        f"stored twice {report['stored_twice']} (rows sharing an id); "
        f"duplicate deliveries absorbed by the store {report['duplicate_deliveries_absorbed']}; "
        f"dead-lettered {report['dead_lettered']}; queue drained: {report['queue_drained']}",
        f"latency produced -> hashed: p50 {latency.get('p50')} s, p99 {latency.get('p99')} s; "
        f"{report['seconds_over_slo']} s with a job over the {report['slo_seconds']:g} s SLO",
        f"scaler: {report['ticks']} ticks, {report['degraded_ticks']} degraded "
        f"({report['degraded_seconds']} s); {len(report['scaler_actions'])} actions, "
        f"{len(report['actions_on_degraded'])} on a degraded reading",
        "faults (start s, seconds until whole again):",
    ]
    for fault in report["faults"]:
        whole = fault["seconds_to_whole"]
        tail = f"whole after {whole} s" if whole is not None else f"NOT whole: {fault['not_whole_because']}"
        lines.append(f"  {fault['start_s']:7.1f}  {fault['fault']:<18} {fault['detail'][:40]:<40} {tail}")
    lines.append("actions:")
    for action in report["scaler_actions"]:
        flag = "  DEGRADED" if action["degraded"] else ""
        lines.append(f"  {action['time']:7.1f}  {action['action']:<8} {action['domain']}{flag}")
    lines.append("PASS" if report["passed"] else "FAIL: " + "; ".join(report["failures"]))
    return lines
