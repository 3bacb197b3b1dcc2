"""One real worker VM with a broker user of its own, over TLS: `make vms` makes the user with the
domain and puts its password and the broker's CA on the settings volume; the guest's worker
connects with amqps://, verifying the broker, and its results are stored under its name;
`make unvms` removes the user. Slow by nature; marker `vm`."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests

from tests.conftest import (
    MANAGEMENT_URL,
    TEST_CONNECTION,
    known_jobs,
    port_open,
    publish_raw,
    require,
    wait_until,
)
from tests.vm.test_vms import libvirt_ready
from virtscale import defaults
from virtscale.broker import declare_topology, delete_topology
from virtscale.naming import QueueNames, vm_user
from virtscale.topology_spec import exactly

pytestmark = [pytest.mark.vm, pytest.mark.broker, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
URI = "qemu:///system"
SECRETS = ROOT / "var" / "secrets"
#: bcrypt cost in the test VM: cheap, so that the jobs are done in seconds under TCG.
COST = 6


def api(path: str) -> requests.Response:
    return requests.get(f"{MANAGEMENT_URL}/api/{path}", auth=("guest", "guest"), timeout=10)


def test_a_vm_of_its_own_user_works_over_tls_and_its_user_goes_with_it(broker_url, processes, tmp_path):
    require(libvirt_ready(), "libvirtd with QEMU (qemu:///system)")
    require(port_open("127.0.0.1", 15672), "RabbitMQ management API")
    require(
        port_open("127.0.0.1", 5671) and (SECRETS / "tls" / "ca.pem").exists(),
        "RabbitMQ's TLS listener (make broker TLS=1)",
    )
    require((SECRETS / "provisioner").exists(), "the provisioner's password (make broker)")
    pool = f"vmid{uuid.uuid4().hex[:4]}"
    domain = f"{pool}-1"
    names = QueueNames(f"{pool}-jobs")
    declare_topology(broker_url, names, defaults.DELIVERY_LIMIT, TEST_CONNECTION)
    template = tmp_path / "template.json"
    vms = [sys.executable, str(ROOT / "deploy/vms.py")]
    provisioner = ["--provisioner-password-file", str(SECRETS / "provisioner"), "--queue", names.jobs]
    try:
        subprocess.run(
            [
                *(sys.executable, str(ROOT / "deploy/template.py"), "--pool", pool, "--out", str(template)),
                *("--queue", names.jobs, "--cost", str(COST), "--ca-file", str(SECRETS / "tls" / "ca.pem")),
            ],
            check=True,
            cwd=ROOT,
            env=os.environ,  # VIRTSCALE_IMAGE_DIR: which image
        )
        subprocess.run(
            [*vms, "define", "--count", "1", "--template", str(template), *provisioner], check=True
        )
        assert api(f"users/{vm_user(domain)}").ok, "the user made with the domain"
        rights = api(f"users/{vm_user(domain)}/permissions").json()
        assert [(r["configure"], r["write"], r["read"]) for r in rights] == [
            ("^$", exactly(names.results_exchange), exactly(names.jobs))
        ]
        xml = subprocess.run(["virsh", "-c", URI, "dumpxml", domain], capture_output=True, text=True).stdout
        assert "amqp" not in xml and "BEGIN CERTIFICATE" not in xml, "settings only on the settings volume"
        ids, bodies = known_jobs(8, seed=21, produced_at=1.0)
        publish_raw(broker_url, names.jobs, bodies)
        db = tmp_path / "hashes.db"
        processes.start(
            "virtscale.collector",
            "run",
            "--amqp-url",
            broker_url,
            "--queue",
            names.jobs,
            "--store",
            f"sqlite:///{db}",
        )
        subprocess.run(["virsh", "-c", URI, "start", domain], check=True, capture_output=True)

        def stored() -> set[tuple[str, str]]:
            try:
                with sqlite3.connect(db) as connection:
                    return set(connection.execute("SELECT id, worker FROM hashes"))
            except sqlite3.OperationalError:
                return set()

        wait_until(lambda: {job_id for job_id, _w in stored()} == ids, 420, "the VM's results stored")
        assert {worker for _id, worker in stored()} == {domain}

        def vm_connections_tls() -> list[bool]:
            connections = api("connections?columns=user,ssl").json()
            return [c["ssl"] for c in connections if c.get("user") == vm_user(domain)]

        # The management API lists a connection once its statistics are collected (every 5 s).
        assert wait_until(vm_connections_tls, 60, "the VM's connection listed") == [True]
    finally:
        subprocess.run([*vms, "undefine", "--pool", pool, *provisioner], check=False)
        delete_topology(broker_url, names, TEST_CONNECTION)
    assert api(f"users/{vm_user(domain)}").status_code == 404, "the user removed with the domain"
    assert not [c for c in api("connections?columns=user").json() if c.get("user") == vm_user(domain)]
