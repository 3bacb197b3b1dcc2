"""make demo's pure pieces: when it starts the producer, when it is done, what it runs, and what
its live view and summary show. The demo itself boots real VMs and is not run here."""

from __future__ import annotations

import argparse
import io
import re

import pytest
from rich.console import Console

from tests.support.deploy_scripts import load

STARTED = 1000.0


@pytest.fixture(scope="module")
def demo():
    return load("demo")


def event(*states: str, depth: int | None = 0, at: float = 10.0, consuming=(), actions=(), reason="steady"):
    """A scaler event with VMs vm-1.. in ``states``; ``consuming`` names the consuming ones."""
    return {
        "time": STARTED + at,
        "depth": depth,
        "desired": sum(state == "running" for state in states),
        "domains": {
            f"vm-{index}": {
                "state": state,
                "cpu": 50.0 if state == "running" else None,
                "consuming": f"vm-{index}" in consuming,
            }
            for index, state in enumerate(states, 1)
        },
        "actions": [{"domain": domain, "action": action} for action, domain in actions],
        "reason": reason,
    }


ONE, TWO = ("running", "shutoff", "shutoff"), ("running", "running", "shutoff")


@pytest.mark.parametrize(
    ("events", "served"),
    [
        ([], False),
        ([event(*ONE)], False),  # never scaled out
        ([event(*ONE), event(*TWO), event(*ONE)], True),
        ([event(*TWO), event(*ONE, depth=3)], False),  # jobs still queued
        ([event(*TWO), event(*ONE, depth=None)], False),  # depth unknown is not empty
        ([event(*ONE), event(*TWO), event(*TWO)], False),  # not back to one VM yet
        ([event(*TWO), event("shutoff", "shutoff", "shutoff")], False),  # nothing runs
    ],
)
def test_the_load_is_served_once_the_queue_is_empty_and_the_pool_is_back_to_one_vm(demo, events, served):
    assert demo.load_served(events) is served


def test_the_producer_waits_for_a_consuming_vm(demo):
    assert not demo.first_vm_consuming([])
    assert not demo.first_vm_consuming([event(*ONE)])
    assert demo.first_vm_consuming([event(*ONE, consuming=("vm-1",))])
    # Only the latest tick counts.
    assert not demo.first_vm_consuming([event(*ONE, consuming=("vm-1",)), event(*ONE)])


SERVED = [event(*ONE), event(*TWO), event(*ONE)]


@pytest.mark.parametrize(
    ("events", "elapsed", "producer_finished", "scaler_exited", "expected"),
    [
        (SERVED, 10, False, False, None),  # served so far, but the producer is still at it
        (SERVED, 10, True, False, 0),
        (SERVED[:2], 10, True, False, None),
        (SERVED[:2], 10, True, True, 1),
        (SERVED, 2000, True, False, 1),  # past the timeout, even if served
    ],
)
def test_the_verdict(demo, events, elapsed, producer_finished, scaler_exited, expected):
    ending = demo.verdict(
        events,
        elapsed=elapsed,
        timeout=1200,
        producer_finished=producer_finished,
        scaler_exited=scaler_exited,
    )
    assert (None if ending is None else ending[0]) == expected
    if ending is not None:
        assert ending[1].startswith("demo: ")


def test_the_scaler_runs_with_the_demo_settings(demo, tmp_path):
    command = demo.scaler_command(3, tmp_path / "events.jsonl", ["qemu:///system", "qemu:///session"])
    flags = command[command.index("--provisioner-password-file") + 2 :]
    assert command[1] == "run"
    assert command[command.index("--provisioner-password-file") + 1].endswith("var/secrets/provisioner")
    assert " ".join(flags) == (
        "--pool vm --min 1 --interval 2 --target-backlog 40 "
        "--max-start-per-tick 1 --scale-up-cooldown 25 --scale-down-stabilization 30 --boot-timeout 150 "
        "--drain-timeout 60 --metrics-port 9477 --shutdown-on-exit "
        "--connect qemu:///system --connect qemu:///session "
        f"--max 3 --events {tmp_path}/events.jsonl"
    )


def test_the_producer_runs_the_step_profile(demo):
    args = argparse.Namespace(base=1.0, peak=25.0, step_start=20.0, step_length=120.0)
    command = demo.producer_command(args)
    assert command[0].endswith("virtscale-producer")
    assert " ".join(command[command.index("--profile") :]) == (
        "--profile step --base 1.0 --peak 25.0 --start 20.0 --duration 120.0 --seed 1"
    )
    assert "producer@" in command[command.index("--amqp-url") + 1]


# -- the live view ----------------------------------------------------------------------------------

LONG_REASON = "backlog 312 is above the target 40 and rising; starting the next VM to bring it down " * 3
LOG = ["demo: producer started: 1/s, then 25/s for 120 s, then 1/s", "demo: " + "a very long log line " * 8]


def rendered(demo, events, log_lines=LOG, width=80) -> list[str]:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(demo.render_view(events, STARTED, log_lines, STARTED + 130))
    return console.file.getvalue().splitlines()


def test_no_line_of_the_view_is_wider_than_80_columns(demo):
    busy = event(*TWO, depth=312, actions=[("start", "vm-3")], reason=LONG_REASON)
    busy["domains"]["vm-with-a-name-far-longer-than-any-column-should-hold-" * 2] = {"state": "running"}
    busy["degraded"], busy["problems"] = True, ["management API: connection refused " * 4]
    lines = rendered(demo, [busy])
    assert max(len(line) for line in lines) <= 80
    decision = next(line for line in lines if line.startswith("because: "))
    assert decision.endswith("…")  # cut on purpose, not wrapped onto the next line
    assert any(line.startswith("decision: start vm-3") for line in lines)


def test_the_view_keeps_log_lines_above_the_table_and_says_how_to_stop(demo):
    lines = rendered(demo, [event(*TWO, depth=5)])
    assert lines[0] == LOG[0]
    assert lines.index(LOG[0]) < next(i for i, line in enumerate(lines) if line.startswith("domain "))
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "\n".join(lines))
    assert "terminate" in lines[-1]
    assert "Ctrl-C" in lines[-1]
    assert any(line.startswith("vm-2 ") and "running" in line for line in lines)


def test_the_view_before_the_first_tick(demo):
    lines = rendered(demo, [], log_lines=[])
    assert any("waiting for the scaler's first tick" in line for line in lines)
    assert "terminate" in lines[-1]


def test_on_a_terminal_the_view_uses_the_alternate_screen_and_restores_it(demo):
    console = Console(file=io.StringIO(), width=80, force_terminal=True, color_system=None)
    with demo.View(console) as view:
        view.say("demo: producer started")
        view.show([event(*ONE)], STARTED)
    output = console.file.getvalue()
    enter, leave = output.index("\x1b[?1049h"), output.rindex("\x1b[?1049l")
    assert enter < leave
    # The demo's own lines are printed again on the normal screen, after it is restored.
    assert "demo: producer started" in output[leave:]


def test_elsewhere_the_view_prints_each_line_and_each_new_tick_once(demo):
    console = Console(file=io.StringIO(), width=80, color_system=None)
    with demo.View(console) as view:
        view.say("demo: producer started")
        view.show([event(*ONE, at=2)], STARTED)
        view.show([event(*ONE, at=2)], STARTED)
        view.show([event(*ONE, at=2), event(*TWO, at=4)], STARTED)
    lines = console.file.getvalue().splitlines()
    assert "terminate" in lines[0]
    assert lines[1] == "demo: producer started"
    assert len(lines) == 4
    assert "vm-1:run" in lines[2]
    assert "\x1b" not in console.file.getvalue()


def test_the_summary_lists_the_figures_and_each_vm_action(demo):
    events = [event(*ONE, at=5), event(*TWO, at=40, actions=[("start", "vm-2")], reason="backlog high")]
    figures = {
        "stored": 10,
        "duplicates_ignored": 0,
        "dead_lettered": 1,
        "latency_seconds": {"p50": 1.0},
        "per_worker": {"vm-1": 10},
    }
    lines = demo.summary_lines(events, STARTED, "confirmed 11", figures)
    assert "produced: confirmed 11" in lines
    assert "stored: 10 (duplicates ignored 0), dead-lettered: 1" in lines
    assert lines[-1] == "      40s  start    vm-2  (backlog high)"
    assert "stored" not in "".join(demo.summary_lines(events, STARTED, "not run", None))


def test_the_table_shows_booting_vms_unseen_ones_and_an_unread_consumer_list_as_the_scaler_does(demo):
    tick = event(*TWO, depth=5)
    tick["signals"] = {"booting_vms": ["vm-2"]}
    tick["domains"]["vm-1"]["consuming"] = None
    tick["domains"]["vm-4"] = {"state": "unknown", "cpu": None, "consuming": None}
    table = {line.split()[0]: line.split()[1:] for line in rendered(demo, [tick]) if line.startswith("vm-")}
    assert table["vm-1"] == ["running", "50.0", "?"]
    assert table["vm-2"][0] == "booting", "the policy counts it as booting, not running"
    assert table["vm-4"] == ["unknown", "?", "?"]
    assert "vm-1:run/50%?" in demo.live_line(tick, STARTED)
