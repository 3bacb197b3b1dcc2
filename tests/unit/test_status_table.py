"""`virtscale-scaler status`'s output, from a tick report: what was observed, never a decision."""

from __future__ import annotations

from virtscale.scaler.commands.status import status_event, status_table
from virtscale.scaler.hypervisor import DomainSample
from virtscale.scaler.loop import TickReport
from virtscale.scaler.policy import Action, Decision
from virtscale.scaler.queue_monitor import QueueReading


def report(consumers_known: bool = True) -> TickReport:
    samples = [
        DomainSample(name, "test:///default", state, 1, 0, 1, 0.0)
        for name, state in (("vm-1", "running"), ("vm-2", "shutoff"))
    ]
    reading = QueueReading(4, 1, 1, 2.0, 1.0, frozenset({"vm-1"}), consumers_known=consumers_known)
    decision = Decision(1, (Action("vm-2", "start"),), "want 1 -> 1; only 0 shut-off domain(s)", {"ready": 1})
    return TickReport(0.0, reading, samples, {"vm-1": 12.0}, decision, unseen=["vm-3"])


def rows(text: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.startswith("vm-")}


def test_the_table_shows_unseen_domains_as_unknown_and_a_missing_consumer_list_as_question_marks():
    assert rows(status_table(report())) == {
        "vm-1": ["running", "12.0", "yes", "test:///default"],
        "vm-2": ["shutoff", "?", "no", "test:///default"],
        "vm-3": ["unknown", "?", "?", "?"],
    }
    blind = rows(status_table(report(consumers_known=False)))
    assert blind["vm-1"][2] == "?" and blind["vm-2"][2] == "?"


def test_status_output_holds_no_decision():
    assert "want" not in status_table(report())
    event = status_event(report())
    assert not {"desired", "actions", "reason", "signals"} & event.keys()
    assert event["domains"]["vm-3"]["state"] == "unknown"


def test_status_names_the_leader_and_leads_nothing_itself():
    tick = report()
    for holder, shown in (("scaler-1:7", "leader: scaler-1:7"), ("", "leader: none"), (None, "leader: ?")):
        tick.lease_holder = holder
        assert any(line.startswith(shown) for line in status_table(tick).splitlines())
    event = status_event(tick)
    assert "leader" not in event and "lease_holder" in event
