"""Scale-out on real VMs: creating a pool domain on demand (storage volumes + define + start,
scaler/provisioning.py) until its worker consumes, against starting a predefined one, on
this machine's qemu:///system. Alternated, RUNS of each; the image upload is done once before
(it happens once per host and image). `python -m bench fleet` (not in the default set: it boots
real guests for a few minutes)."""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import libvirt

from virtscale import defaults
from virtscale.broker import declare_topology, delete_topology, queue_counts
from virtscale.naming import QueueNames
from virtscale.scaler import template
from virtscale.scaler.hypervisor import Hypervisor
from virtscale.scaler.ownership import DEFINED
from virtscale.scaler.provisioning import HostStorage

URL = os.environ.get("VIRTSCALE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
URI = "qemu:///system"
ROOT = Path(__file__).resolve().parent.parent
RUNS = 3
CONNECTION = "virtscale-bench"


def consuming_after(names: QueueNames, begin, timeout: float = 300.0) -> float:
    """Seconds from begin() until the queue has a consumer (passive declare: no API lag)."""
    started = time.monotonic()
    begin()
    while queue_counts(URL, names.jobs, CONNECTION)[1] < 1:
        if time.monotonic() - started > timeout:
            raise RuntimeError("no consumer within the timeout")
        time.sleep(0.05)
    return time.monotonic() - started


def make_template(pool: str, names: QueueNames, directory: str) -> template.Template:
    password = Path(directory) / "password"
    password.write_text("guest")
    out = Path(directory) / "template.json"
    command = [str(ROOT / ".venv/bin/python"), str(ROOT / "deploy/template.py"), "--pool", pool]
    command += ["--queue", names.jobs, "--user", "guest", "--password-file", str(password), "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True)
    return template.load(out)


def wait_gone(hypervisor: Hypervisor, name: str) -> None:
    while any(s.name == name and s.state != "shutoff" for s in hypervisor.sample()):
        time.sleep(0.5)


def create_to_consuming() -> dict:
    pool = f"bench{uuid.uuid4().hex[:6]}"
    names = QueueNames(f"{pool}-jobs")
    declare_topology(URL, names, defaults.DELIVERY_LIMIT, CONNECTION)
    hypervisor = Hypervisor(URI, pool)
    created, started = [], []
    try:
        with tempfile.TemporaryDirectory() as directory:
            made = make_template(pool, names, directory)
            storage = HostStorage(libvirt.open(URI))
            storage.ensure_image(made)  # once per host and image, not part of a scale-out
            settings = template.settings(f"{pool}-0", made, "guest")
            storage.create(f"{pool}-0", made, made.tag("guest", DEFINED), settings, start=False)
            for run in range(RUNS):
                started.append(consuming_after(names, lambda: hypervisor.start(f"{pool}-0")))
                hypervisor.destroy(f"{pool}-0")
                name = f"{pool}-{run + 1}"
                body = template.settings(name, made, "guest")
                tag = made.tag("guest")
                created.append(
                    consuming_after(names, lambda n=name, b=body, t=tag: hypervisor.create(n, made, b, t))
                )
                hypervisor.delete(name)
    finally:
        subprocess.run(
            [str(ROOT / ".venv/bin/python"), str(ROOT / "deploy/vms.py"), "undefine", "--pool", pool],
            check=False,
            capture_output=True,
        )
        delete_topology(URL, names, CONNECTION)
    return {"created": created, "started": started}


def run() -> dict:
    print(f"\nScale-out on {URI}: seconds from the action to the worker consuming ({RUNS} runs each)")
    figures = create_to_consuming()
    for kind in ("started", "created"):
        values = figures[kind]
        print(f"{kind:>8} predefined" if kind == "started" else f"{kind:>8} on demand", end="")
        print(f"  median {statistics.median(values):5.1f} s  runs {', '.join(f'{v:.1f}' for v in values)}")
    ratio = statistics.median(figures["created"]) / statistics.median(figures["started"])
    print(f"on demand / predefined (medians): {ratio:.2f}")
    return figures
