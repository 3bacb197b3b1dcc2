"""make chaos's pure parts: when the system counts as whole again after a fault, what counts as
lost, stored twice or an action on a degraded reading, and the fault schedule. The chaos run
itself boots real VMs and is not run here."""

from __future__ import annotations

import itertools

import pytest

from tests.support.deploy_scripts import load

T0 = 1000.0
RULES_BROKEN = "chaos-0bad-1"


@pytest.fixture(scope="module")
def report():
    return load("chaos/report")


@pytest.fixture(scope="module")
def faults():
    return load("chaos/faults")


@pytest.fixture(scope="module")
def rules(report):
    return report.WholeRules(stale_after=10.0, boot_grace=60.0, broken=frozenset({RULES_BROKEN}))


def event(at, *, running=("chaos-1",), consuming=None, desired=1, degraded=False, actions=()):
    consuming = running if consuming is None else consuming
    return {
        "time": T0 + at,
        "depth": 0,
        "desired": desired,
        "domains": {name: {"state": "running", "consuming": name in consuming} for name in running},
        "actions": [{"domain": domain, "action": action} for action, domain in actions],
        "degraded": degraded,
        "problems": ["management API unreachable"] if degraded else [],
        "reason": "test",
    }


def sample(at, *, job_consumers=1, result_consumers=1, management_ok=True, producer_connected=True):
    return {
        "time": T0 + at,
        "management_ok": management_ok,
        "job_consumers": job_consumers,
        "result_consumers": result_consumers,
        "producer_running": True,
        "producer_connected": producer_connected,
    }


def fault(kind, start, end, **extra):
    return {"kind": kind, "start": T0 + start, "end": T0 + end, "detail": "", **extra}


# -- whole or not ---------------------------------------------------------------------------------


def test_a_sample_with_every_part_back_is_whole(report, rules):
    events = [event(0), event(100)]
    state = report.pool_states(events)[-1]
    assert report.missing_parts(sample(101), events[-1], state, rules) == []


@pytest.mark.parametrize(
    ("changes", "missing"),
    [
        ({"management_ok": False}, "management API unreachable"),
        ({"result_consumers": 0}, "collector not consuming"),
        ({"producer_connected": False}, "producer not connected"),
        ({"job_consumers": 0}, "0 consumer(s) on the job queue, 1 VM(s) up"),
    ],
)
def test_a_missing_part_keeps_the_system_from_being_whole(report, rules, changes, missing):
    events = [event(0), event(100)]
    state = report.pool_states(events)[-1]
    assert missing in report.missing_parts(sample(101, **changes), events[-1], state, rules)


def test_a_stale_or_degraded_scaler_is_not_whole(report, rules):
    events = [event(0), event(100, degraded=True)]
    state = report.pool_states(events)[-1]
    assert "scaler's reading degraded" in report.missing_parts(sample(101), events[-1], state, rules)
    assert "scaler not ticking" in report.missing_parts(sample(111), events[-1], state, rules)


def test_a_vm_up_past_the_boot_grace_must_consume_but_a_booting_or_broken_one_need_not(report, rules):
    running = ("chaos-1", "chaos-2", RULES_BROKEN)
    events = [
        event(0, running=("chaos-1", RULES_BROKEN)),
        event(100, running=running, consuming=("chaos-1",)),
    ]
    state = report.pool_states(events)[-1]
    assert state.running_since["chaos-2"] == T0 + 100  # just started: booting
    assert report.missing_parts(sample(101), events[-1], state, rules) == []
    later = [*events, event(170, running=running, consuming=("chaos-1",))]
    state = report.pool_states(later)[-1]
    assert "not consuming: chaos-2" in report.missing_parts(sample(171), later[-1], state, rules)


def test_a_vm_told_to_shut_down_need_not_consume(report, rules):
    events = [
        event(0, running=("chaos-1", "chaos-2")),
        event(100, running=("chaos-1", "chaos-2"), actions=[("shutdown", "chaos-2")]),
        event(102, running=("chaos-1", "chaos-2"), consuming=("chaos-1",)),
    ]
    state = report.pool_states(events)[-1]
    assert "chaos-2" in state.told_to_stop
    assert report.missing_parts(sample(103), events[-1], state, rules) == []


# -- recovery -------------------------------------------------------------------------------------


def test_recovery_is_the_first_whole_sample_after_the_fault_ended(report, rules):
    events = [event(0), event(50), event(62, degraded=True), event(70)]
    samples = [sample(50), sample(55, result_consumers=0), sample(61), sample(65), sample(71)]
    result = report.recovery(fault("cut-management", 52, 62), samples, events, rules)
    assert result["whole_at"] == T0 + 71  # 65 is after the end, but the scaler's tick was degraded


def test_recovery_waits_for_the_capacity_there_was_before_the_fault(report, rules):
    two = ("chaos-1", "chaos-2")
    events = [event(0, running=two, desired=2), event(50, running=("chaos-1",), desired=2)]
    events += [event(60, running=two, consuming=("chaos-1",), desired=2), event(90, running=two, desired=2)]
    samples = [sample(51), sample(61), sample(91, job_consumers=2)]
    result = report.recovery(fault("destroy-vm", 49, 49), samples, events, rules)
    assert result["whole_at"] == T0 + 91


def test_a_broken_guest_is_resolved_when_the_scaler_stops_it(report, rules):
    events = [event(0), event(50), event(140, actions=[("destroy", RULES_BROKEN)]), event(142)]
    samples = [sample(60), sample(100), sample(141), sample(143)]
    broken = fault("bad-guest", 45, 46, domain=RULES_BROKEN)
    assert report.recovery(broken, samples, events, rules)["whole_at"] == T0 + 141
    unresolved = report.recovery(broken, samples, events[:2], rules)
    assert unresolved["whole_at"] is None and unresolved["still_missing"] == ["the fault was never resolved"]
    stray = fault("stray-guest", 45, 46, domain=RULES_BROKEN)
    assert report.recovery(stray, samples, events, rules)["whole_at"] == T0 + 141


def test_a_fault_never_recovered_from_says_what_is_still_missing(report, rules):
    events = [event(0), event(45)]
    result = report.recovery(fault("kill-collector", 40, 45), [sample(46, result_consumers=0)], events, rules)
    assert result["whole_at"] is None and result["still_missing"] == ["collector not consuming"]


# -- the scaler's actions -------------------------------------------------------------------------


def test_only_actions_on_a_degraded_reading_are_flagged(report):
    events = [
        event(0, actions=[("start", "chaos-2")]),
        event(2, degraded=True),
        event(4, degraded=True, actions=[("shutdown", "chaos-2")]),
        event(6),
    ]
    flagged = report.actions_on_degraded(events)
    assert [(a["action"], a["domain"]) for a in flagged] == [("shutdown", "chaos-2")]
    assert len(report.scaler_actions(events)) == 2
    assert report.degraded_spans(events) == [(T0 + 2, T0 + 6)]


def test_a_run_of_degraded_ticks_at_the_end_closes_at_the_last_tick(report):
    assert report.degraded_spans([event(0), event(2, degraded=True), event(4, degraded=True)]) == [
        (T0 + 2, T0 + 4)
    ]


# -- jobs -----------------------------------------------------------------------------------------


def test_the_producers_last_confirmed_line_counts(report):
    log = "confirmed 10 of 12 generated\n...\nconfirmed 3010 of 3010 generated\n"
    assert report.producer_counts(log) == (3010, 3010)
    assert report.producer_counts("interrupted") is None


def test_lost_is_confirmed_minus_stored_and_stored_twice_is_rows_sharing_an_id(report):
    figures = report.job_figures(100, rows=101, distinct_ids=98, stats={"duplicates_ignored": 7})
    assert figures["lost"] == 2
    assert figures["stored_twice"] == 3
    assert figures["duplicate_deliveries_absorbed"] == 7
    assert report.job_figures(100, rows=102, distinct_ids=102, stats=None)["stored_beyond_confirmed"] == 2
    assert report.job_figures(None, rows=0, distinct_ids=0, stats=None)["lost"] is None


def test_seconds_over_the_slo_count_each_second_of_production_once(report):
    rows = [(10.1, 20.0), (10.5, 80.0), (10.9, 75.0), (11.0, 11.5), (12.2, 100.0)]
    assert report.seconds_over_slo(rows, slo=60.0) == 2  # second 10 (twice) and second 12


def test_the_run_passes_only_with_nothing_lost_nothing_twice_and_no_degraded_action(report, rules):
    record = report.RunRecord(
        started=T0,
        events=[event(0), event(2, degraded=True, actions=[("start", "chaos-2")])],
        samples=[],
        faults=[],
        rows=[(T0, T0 + 1)],
        distinct_ids=1,
        stats={"duplicates_ignored": 0, "latency_seconds": {"p50": 1, "p99": 1}},
        producer_log="confirmed 2 of 2 generated",
        slo=60.0,
        drained=True,
    )
    result = report.build_report(record, rules)
    assert result["passed"] is False
    assert result["failures"] == [
        "1 confirmed job(s) never stored",
        "1 action(s) taken on a degraded reading",
    ]
    assert report.summary_lines(result)[-1].startswith("FAIL: 1 confirmed job(s) never stored")


# -- the schedule ---------------------------------------------------------------------------------


def test_the_schedule_spreads_every_fault_over_ten_minutes_of_load(faults):
    planned = faults.schedule(600)
    assert [p.kind for p in planned] == list(faults.KINDS)
    assert planned[0].at == 40 and planned[-1].at == 540
    assert all(b.at - a.at >= faults.MIN_GAP for a, b in itertools.pairwise(planned))


def test_a_short_run_gets_the_first_faults_that_fit(faults):
    planned = faults.schedule(
        180, ("cut-workers", "restart-rabbitmq", "restart-libvirtd", "kill-scaler", "stray-guest")
    )
    assert [p.kind for p in planned] == ["cut-workers", "restart-rabbitmq", "restart-libvirtd", "kill-scaler"]
    assert faults.schedule(90) == []


def test_a_fault_that_cannot_be_injected_is_logged_not_raised(faults):
    class Broken:
        def destroy_busy_vm(self):
            raise RuntimeError("no consuming VM to destroy")

    entry = faults.inject("destroy-vm", Broken())
    assert entry["detail"] == "could not inject: no consuming VM to destroy"
    assert entry["end"] >= entry["start"]
