"""The scaler's own warm-pool loop on two real TCG guests (`virtscale-scaler run --warm-pool 1`,
min 1, max 2): it boots the first guest, then fills the warm pool by booting the second and
managed-saving it; a backlog makes it scale out by restoring that guest, which consumes within
seconds with its clock put right. Judged from the events file, libvirt and the broker. Each guest
has a broker user of its own, removed with it. Marker `vm`."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
import uuid

import libvirt
import pytest
import requests

from tests.conftest import (
    MANAGEMENT_URL,
    TEST_CONNECTION,
    duplicates_ignored,
    known_jobs,
    port_open,
    publish_raw,
    require,
    stored_ids,
    wait_until,
)
from tests.vm.test_standby import events
from tests.vm.test_vms import COST, ROOT, URI, libvirt_ready
from tests.vm.test_warm_pool import RESTORE_BOUND, SAVED_FOR, consumers
from virtscale import defaults
from virtscale.broker import declare_topology, delete_topology
from virtscale.naming import QueueNames, vm_user

pytestmark = [pytest.mark.vm, pytest.mark.broker, pytest.mark.timeout(900)]

PROVISIONER = ROOT / "var" / "secrets" / "provisioner"


def api(path: str) -> list[dict]:
    return requests.get(f"{MANAGEMENT_URL}/api/{path}", auth=("guest", "guest"), timeout=10).json()


@pytest.fixture
def warm_pool(broker_url, processes, tmp_path):
    """Two guests of a pool of their own, shut off, each with its broker user; removed afterwards,
    once the scaler and the collector are stopped."""
    require(libvirt_ready(), "libvirtd with QEMU (qemu:///system)")
    require(port_open("127.0.0.1", 15672), "RabbitMQ management API")
    require(PROVISIONER.exists(), "the provisioner's password (make broker)")
    subprocess.run([str(ROOT / "deploy/image/build.sh")], check=True, cwd=ROOT)
    pool = f"swarm{uuid.uuid4().hex[:6]}"
    names = QueueNames(f"{pool}-jobs")
    declare_topology(broker_url, names, defaults.DELIVERY_LIMIT, TEST_CONNECTION)
    template = tmp_path / f"{pool}.json"
    command = [sys.executable, str(ROOT / "deploy/template.py"), "--pool", pool, "--out", str(template)]
    # Four times test_vms' cost: one guest must not clear the backlog alone before the scaler
    # decides (at COST a guest hashed 3,000 jobs in about 40 s, and no scale-out came).
    subprocess.run([*command, "--queue", names.jobs, "--cost", str(COST + 2)], check=True, cwd=ROOT)
    vms = [sys.executable, str(ROOT / "deploy/vms.py")]
    users = ["--provisioner-password-file", str(PROVISIONER), "--queue", names.jobs]
    subprocess.run(
        [*vms, "define", "--count", "2", "--template", str(template), *users], check=True, cwd=ROOT
    )
    yield pool, names
    processes.stop_all()
    subprocess.run([*vms, "undefine", "--pool", pool, *users], check=False, cwd=ROOT)
    delete_topology(broker_url, names, TEST_CONNECTION)
    assert not [d for d in libvirt.openReadOnly(URI).listAllDomains() if d.name().startswith(pool)]
    assert not [u["name"] for u in api("users") if u["name"].startswith(vm_user(pool))], "VM users left"
    assert not [q["name"] for q in api("queues") if pool in q["name"]], "queues left"


def test_the_scaler_fills_its_warm_pool_and_scales_out_by_restoring(
    broker_url, processes, tmp_path, warm_pool
):
    pool, names = warm_pool
    first, second = f"{pool}-1", f"{pool}-2"
    db, log = tmp_path / "hashes.db", tmp_path / "events.jsonl"
    collector = ["run", "--amqp-url", broker_url, "--queue", names.jobs, "--store", f"sqlite:///{db}"]
    processes.start("virtscale.collector", *collector, name="collector")
    flags = ["--connect", URI, "--pool", pool, "--amqp-url", broker_url, "--queue", names.jobs]
    flags += ["--min", "1", "--max", "2", "--warm-pool", "1", "--interval", "2", "--boot-timeout", "300"]
    processes.start("virtscale.scaler", "run", *flags, "--events", str(log), name="scaler")

    def state(event: dict, name: str) -> str | None:
        return event["domains"].get(name, {}).get("state")

    # The scaler boots the first guest to reach --min, then the second to save it.
    wait_until(lambda: any(state(e, second) == "saved" for e in events(log)), 600, f"{second} saved")
    domain = libvirt.openReadOnly(URI).lookupByName(second)
    assert domain.hasManagedSaveImage(0) and not domain.isActive()
    time.sleep(SAVED_FOR)  # its clock falls behind, as a warm VM's does
    assert state(events(log)[-1], second) == "saved" and consumers(broker_url, names.jobs) == 1
    ids, bodies = known_jobs(3000, seed=21)
    publish_raw(broker_url, names.jobs, bodies)
    wait_until(lambda: consumers(broker_url, names.jobs) == 2, 120, "the scale-out consuming", every=0.1)
    consuming_at = time.time()

    def scale_out() -> dict | None:  # its event is written once the restore has been made
        return next((e for e in events(log) if e["actions"] and state(e, second) == "saved"), None)

    out = wait_until(scale_out, 30, "the scale-out's event")
    assert out["actions"] == [{"domain": second, "action": "start"}], out["reason"]
    restore_seconds = consuming_at - out["time"]
    print(f"\nscale-out (restore of {second}) to consuming: {restore_seconds:.2f} s; {out['reason']}")
    assert restore_seconds <= RESTORE_BOUND
    assert domain.isActive() and not domain.hasManagedSaveImage(0)
    actions = [(e["time"], a["domain"], a["action"]) for e in events(log) for a in e["actions"]]
    print(f"actions (time, domain, action): {actions}")
    assert [(d, a) for _t, d, a in actions] == [
        (first, "start"),
        (second, "start"),
        (second, "save"),
        (second, "start"),
    ], "boot, warm up, save, restore: no other start, create or boot"

    wait_until(lambda: set(stored_ids(db)) == ids, 900, "every job stored")
    assert len(stored_ids(db)) == len(ids) and duplicates_ignored(db) == 0, "every id stored once"
    with sqlite3.connect(db) as connection:
        query = "SELECT stored_at - hashed_at FROM hashes WHERE worker = ?"
        lags = [row[0] for row in connection.execute(query, (second,))]
    # Without the clock put right, the restored guest's hashed_at would be SAVED_FOR s behind.
    assert lags and all(-2.0 <= lag <= 10.0 for lag in lags), (len(lags), min(lags), max(lags))
