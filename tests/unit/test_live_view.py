"""The live view of `virtscale-scaler run`, rendered into an 80-column console with no terminal."""

from __future__ import annotations

import io
import logging
import time

from rich.console import Console

from virtscale.scaler.hypervisor import DomainSample
from virtscale.scaler.live import DECISION_LINES, LiveView, render, render_waiting
from virtscale.scaler.loop import TickReport
from virtscale.scaler.policy import Action, Decision
from virtscale.scaler.queue_monitor import QueueReading

WIDTH = 80
#: 2026-03-04 05:06:07 local time: a timestamp the view must show as it is.
WHEN = time.mktime((2026, 3, 4, 5, 6, 7, 0, 0, -1))
LONG_REASON = (
    "depth 1234, arrivals 12.5/s, 2 ready + 1 booting (backlog 4, throughput 3, cpu -); "
    "want 4 -> 4; scale-up cooldown (3/10s); " + "a note that goes on and on; " * 10 + "THE END"
)


def report(reason: str = "want 2 -> 2", signals: dict | None = None, problems=()) -> TickReport:
    samples = [
        DomainSample(name, "test:///default", state, 1, 0, 1, 0.0)
        for name, state in (("vm-1", "running"), ("vm-2", "running"), ("vm-3", "shutoff"))
    ]
    reading = QueueReading(40, 2, 1, 3.5, 3.0, frozenset({"vm-1"}))
    decision = Decision(3, (Action("vm-3", "start"),), reason, signals or {})
    return TickReport(WHEN, reading, samples, {"vm-1": 87.5, "vm-2": None}, decision, list(problems))


def rendered(renderable) -> list[str]:
    console = Console(file=io.StringIO(), width=WIDTH, color_system=None)
    console.print(renderable)
    return console.file.getvalue().splitlines()


def test_the_view_shows_the_dry_run_marker_and_the_tick_time_within_80_columns():
    lines = rendered(render(report(LONG_REASON, problems=["x" * 200]), dry_run=True, log_lines=["y" * 200]))
    text = "\n".join(lines)
    assert "DRY RUN" in text
    assert "2026-03-04 05:06:07" in text
    assert max(len(line) for line in lines) <= WIDTH, text
    assert "vm-1" in text and "87.5" in text and "?" in text, "a missing CPU reading is ?, not 0"
    assert sum("xxxxxxxx" in line for line in lines) == 1, "a long problem is cut to one line, not wrapped"
    assert sum("yyyyyyyy" in line for line in lines) == 1, "so is a long log line"


def test_in_a_dry_run_the_actions_are_marked_as_not_taken():
    text = "\n".join(rendered(render(report(), dry_run=True)))
    assert "actions: start vm-3 (dry run: not taken)" in text


def test_without_dry_run_there_is_no_marker():
    text = "\n".join(rendered(render(report(), dry_run=False)))
    assert "DRY RUN" not in text and "dry run" not in text
    assert "actions: start vm-3" in text


def test_a_long_decision_is_folded_into_a_fixed_number_of_lines_and_marked_as_cut():
    lines = rendered(render(report(LONG_REASON), dry_run=False))
    first = next(index for index, line in enumerate(lines) if line.startswith("decision:"))
    decision = lines[first : first + DECISION_LINES]
    assert decision[-1].endswith("…"), lines
    assert "THE END" not in "\n".join(lines)
    assert "want 4 -> 4" in " ".join(decision), "what the policy wants is not cut"
    assert not lines[first + DECISION_LINES].startswith(" "), "nothing of the reason after the last line"


def test_log_lines_and_the_stop_hint_are_part_of_the_view_above_and_below_the_status():
    lines = rendered(render(report(), dry_run=False, log_lines=["12:00:00 WARNING scaler: first", "second"]))
    heading = next(index for index, line in enumerate(lines) if "virtscale-scaler run" in line)
    assert lines[:heading] == ["12:00:00 WARNING scaler: first", "second"]
    assert "Ctrl-C" in lines[-1] and "terminate" in lines[-1]


def test_a_running_domain_the_decision_counts_as_booting_is_shown_as_booting():
    booting = "\n".join(rendered(render(report(signals={"booting_vms": ["vm-2"]}), dry_run=False)))
    assert [line.split()[:2] for line in booting.splitlines() if line.startswith("vm-")] == [
        ["vm-1", "running"],
        ["vm-2", "booting"],
        ["vm-3", "shutoff"],
    ]
    counted = "\n".join(rendered(render(report(signals={"booting": 1}), dry_run=False)))
    assert "booting" not in counted.split("decision:")[0], "a count names no domain: libvirt's state stays"


def test_the_waiting_view_has_the_marker_and_a_timestamp():
    lines = rendered(render_waiting(dry_run=True, now=WHEN))
    assert "DRY RUN" in lines[0] and "2026-03-04 05:06:07" in lines[0]
    assert max(len(line) for line in lines) <= WIDTH


def test_log_records_go_into_the_view_scrubbed_and_back_to_the_log_handlers_on_exit():
    class Keep(logging.Handler):
        def __init__(self):
            super().__init__()
            self.records = []

        def emit(self, record):
            self.records.append(record)

    root = logging.getLogger()
    saved, kept = root.handlers[:], Keep()
    root.handlers[:] = [kept]
    # A terminal as rich sees it (so the view is drawn on the alternate screen), into a string.
    console = Console(file=io.StringIO(), width=WIDTH, height=30, force_terminal=True, color_system=None)
    try:
        with LiveView(dry_run=True, console=console) as view:
            assert root.handlers != [kept], "while the view is open, records go into it"
            logging.getLogger("virtscale.test").warning("odd license %s", "AB-12-CD-3456")
            view.show(report())
        assert root.handlers == [kept]
    finally:
        root.handlers[:] = saved
    shown = console.file.getvalue()
    assert shown.startswith("\x1b[?1049h") and shown.rstrip().endswith("\x1b[?1049l"), (
        "alternate screen, left"
    )
    assert "WARNING virtscale.test: odd license [license]" in shown and "DRY RUN" in shown
    assert "AB-12-CD-3456" not in shown
    assert [record.getMessage() for record in kept.records] == ["odd license AB-12-CD-3456"], (
        "replayed as they were: the log handlers' own formatters scrub"
    )


def blind_report() -> TickReport:
    """vm-1..3 as listed, vm-4 unseen by libvirt, and the broker's consumer list missing."""
    samples = [
        DomainSample(name, "test:///default", "running", 1, 0, 1, 0.0) for name in ("vm-1", "vm-2", "vm-3")
    ]
    reading = QueueReading(40, 2, None, 3.5, 3.0, consumers_known=False, degraded=True)
    decision = Decision(3, (), "want 3 -> 3", {"booting_vms": []})
    return TickReport(
        WHEN, reading, samples, {"vm-1": 50.0}, decision, ["consumers missing"], unseen=["vm-4"]
    )


def test_a_missing_consumer_list_and_an_unseen_domain_are_shown_as_unknown_not_as_absent():
    rows = {
        line.split()[0]: line.split()[1:]
        for line in rendered(render(blind_report(), dry_run=False))
        if line.startswith("vm-")
    }
    assert rows["vm-1"] == ["running", "50.0", "?"], "not 'no': the consumer list was not read"
    assert rows["vm-4"] == ["unknown", "?", "?"]


def test_the_event_says_null_for_what_was_not_read_and_lists_unseen_domains():
    domains = blind_report().event()["domains"]
    assert domains["vm-2"] == {"state": "running", "cpu": None, "consuming": None, "host": "test:///default"}
    assert domains["vm-4"] == {"state": "unknown", "cpu": None, "consuming": None, "host": None}
    assert report().event()["domains"]["vm-2"]["consuming"] is False, "a list that was read says no"


def test_the_view_says_who_leads():
    leading = report()
    assert "LEADER" in "\n".join(rendered(render(leading, dry_run=False)))
    for holder, words in (
        ("scaler-2:41", "STANDBY: scaler-2:41 leads"),
        ("", "no scaler leads"),
        (None, "not known"),
    ):
        standby = report()
        standby.leader, standby.lease_holder = False, holder
        text = "\n".join(rendered(render(standby, dry_run=False)))
        assert words in text and "LEADER" not in text
    assert "LEADER" not in "\n".join(rendered(render(leading, dry_run=True))), "a dry run leads nothing"
