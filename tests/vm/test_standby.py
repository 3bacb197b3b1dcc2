"""Two `virtscale-scaler run` processes on one pool of two real guests: the leader starts both and is
killed with SIGKILL while they boot; the standby takes over, adopts them as they are and starts
nothing twice. Judged from the two events files. Marker `vm`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import TEST_CONNECTION, port_open, require, wait_until
from tests.vm.test_vms import ROOT, URI, libvirt_ready
from virtscale import defaults
from virtscale.broker import declare_topology, delete_topology
from virtscale.naming import QueueNames

pytestmark = [pytest.mark.vm, pytest.mark.broker, pytest.mark.timeout(900)]

INTERVAL = defaults.SCALER_INTERVAL


@pytest.fixture
def two_guests(broker_url, tmp_path):
    """Two guests of a pool of their own, shut off, on a queue of their own; removed afterwards."""
    require(libvirt_ready(), "libvirtd with QEMU (qemu:///system)")
    require(port_open("127.0.0.1", 15672), "RabbitMQ management API")
    subprocess.run([str(ROOT / "deploy/image/build.sh")], check=True, cwd=ROOT)
    pool = f"standby{uuid.uuid4().hex[:6]}"
    names = QueueNames(pool)
    declare_topology(broker_url, names, defaults.DELIVERY_LIMIT, TEST_CONNECTION)
    password = tmp_path / "password"
    password.write_text("guest")  # the guests reach the broker via the host's loopback
    template = tmp_path / f"{pool}.json"
    subprocess.run(
        [
            *(sys.executable, str(ROOT / "deploy/template.py"), "--pool", pool, "--out", str(template)),
            *(
                "--queue",
                names.jobs,
                "--cost",
                "6",
                "--user",
                "guest",
                "--shared-user",
                "--password-file",
                str(password),
            ),
        ],
        check=True,
        cwd=ROOT,
    )
    vms = [sys.executable, str(ROOT / "deploy/vms.py")]
    subprocess.run([*vms, "define", "--count", "2", "--template", str(template)], check=True, cwd=ROOT)
    yield pool, names, [f"{pool}-1", f"{pool}-2"]
    subprocess.run([*vms, "undefine", "--pool", pool], check=False, cwd=ROOT)
    delete_topology(broker_url, names, TEST_CONNECTION)


def events(path: Path) -> list[dict]:
    """The events file's lines; a last line cut short by the kill is left out."""
    lines = path.read_text().splitlines() if path.exists() else []
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            assert line is lines[-1], f"only the last line can be cut short: {line!r}"
    return parsed


def all_consuming(event: dict) -> bool:
    return event["leader"] and all(domain["consuming"] for domain in event["domains"].values())


def test_the_standby_takes_over_from_a_killed_leader_and_starts_nothing_twice(
    broker_url, processes, tmp_path, two_guests
):
    pool, names, domains = two_guests
    flags = ["--connect", URI, "--pool", pool, "--amqp-url", broker_url, "--queue", names.jobs]
    flags += ["--min", "2", "--max", "2", "--interval", str(INTERVAL)]
    first_events, second_events = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first = processes.start("virtscale.scaler", "run", *flags, "--events", str(first_events), name="first")
    started = wait_until(
        lambda: [e for e in events(first_events) if e["actions"]], 120, "the first scaler's starts"
    )[0]
    assert started["leader"] and {a["domain"] for a in started["actions"]} == set(domains)
    processes.start("virtscale.scaler", "run", *flags, "--events", str(second_events), name="second")
    wait_until(lambda: events(second_events), 60, "the second scaler's first tick")
    assert not events(second_events)[0]["leader"], "a standby beside the leader"
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    killed_at = time.time()
    wait_until(
        lambda: any(map(all_consuming, events(second_events))), 300, "both consuming, the standby leading"
    )
    before, after = events(first_events), events(second_events)
    print(f"\nfirst scaler: {len(before)} ticks; second: {len(after)} ticks")
    actions = [
        (e["time"], a["domain"], a["action"], name)
        for name, log in (("first", before), ("second", after))
        for e in log
        for a in e["actions"]
    ]
    print(f"actions (time, domain, action, scaler): {actions}")
    starts = sorted(domain for _t, domain, action, _s in actions if action == "start")
    assert starts == sorted(domains), "each guest started once, by the first leader"
    assert all(e["leader"] for e in before + after if e["actions"]), "only a leader lists actions"
    led_first = [e["time"] for e in before if e["leader"]]
    led_second = [e["time"] for e in after if e["leader"]]
    assert max(led_first) < killed_at < min(led_second), "one leader at a time"
    print(f"the standby's first tick as leader: {min(led_second) - killed_at:.1f} s after the kill")
    ticks_to_lead = [e["time"] for e in after if e["time"] > killed_at and e["time"] <= min(led_second)]
    assert len(ticks_to_lead) <= 2, f"the standby led within 2 ticks of the kill, took {len(ticks_to_lead)}"
    took_over = next(e for e in after if e["leader"])
    adopted = set(took_over["signals"]["booting_vms"]) | {
        name for name, domain in took_over["domains"].items() if domain["consuming"]
    }
    assert adopted == set(domains), "the guests it found booting or consuming count as the pool"
