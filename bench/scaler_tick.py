"""Scaler tick cost against pool size, over 4 libvirt test-driver connections (the domains
split evenly, each host with a template-made fleet: ownership tags, placement room, names)
and the real RabbitMQ management API. Target: <= 50 ms per tick at 1,000 domains over 4
connections, no worse than linear in domains."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

from virtscale import defaults
from virtscale.scaler import template
from virtscale.scaler.fleet import Fleet, FleetConfig
from virtscale.scaler.hypervisor import Hypervisor
from virtscale.scaler.loop import Scaler
from virtscale.scaler.policy import Policy, PolicyConfig
from virtscale.scaler.queue_monitor import QueueMonitor

URL = os.environ.get("VIRTSCALE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
CONNECTIONS = 4
TAG = (
    '<metadata><virtscale:pool xmlns:virtscale="http://virtscale.org/xmlns/pool/1" name="vm" '
    'origin="template" image="bench"/></metadata>'
)
DOMAIN = """<domain type="test" xmlns:test="http://libvirt.org/schemas/domain/test/1.0">
<name>vm-{index}</name>{tag}<memory>65536</memory><vcpu>1</vcpu><os><type>hvm</type></os>
<test:runstate>{state}</test:runstate></domain>"""


def node_file(indices: range, directory: str, host: int) -> str:
    """Half the domains running, half shut off; one in ten not in the pool (no tag)."""
    path = os.path.join(directory, f"node-{host}-{len(indices)}.xml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("<node>\n")
        for index in indices:
            tag = "" if index % 10 == 0 else TAG
            handle.write(DOMAIN.format(index=index, tag=tag, state=1 if index % 2 else 5) + "\n")
        handle.write("</node>\n")
    return path


def template_file(directory: str) -> str:
    image = template.Image(
        "bench", "/nonexistent/rootfs.qcow2", 2**30, "/nonexistent/vmlinuz", "/nonexistent/initrd"
    )
    worker = template.WorkerSettings(
        "amqp://worker@10.0.2.2:5672/%2F", "/nonexistent/password", "licenses", 10
    )
    path = os.path.join(directory, "template.json")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(template.dump(template.Template("vm", image, worker)))
    return path


def scaler_for(size: int, directory: str, monitor: QueueMonitor) -> tuple[Scaler, list[Hypervisor]]:
    per_host = size // CONNECTIONS
    hypervisors = [
        Hypervisor(f"test://{node_file(range(h * per_host + 1, (h + 1) * per_host + 1), directory, h)}", "vm")
        for h in range(CONNECTIONS)
    ]
    fleet = Fleet(FleetConfig("vm", template_file(directory), host_max=per_host))
    policy = Policy(PolicyConfig(max_vms=size))
    return Scaler(hypervisors, monitor, policy, window=30, dry_run=True, fleet=fleet), hypervisors


def tick_cost(sizes=(100, 250, 500, 1000), ticks: int = 20) -> dict:
    monitor = QueueMonitor(defaults.MANAGEMENT_URL, ("guest", "guest"), "/", "licenses", URL)
    print(
        f"\nScaler tick cost ({CONNECTIONS} test-driver connections, dry run, fleet; median of {ticks} ticks)"
    )
    print(f"{'domains':>8} {'tick ms':>8} {'libvirt ms':>10} {'queue ms':>9} {'ms/domain':>10}")
    results = {}
    with tempfile.TemporaryDirectory() as directory:
        for size in sizes:
            scaler, hypervisors = scaler_for(size, directory, monitor)
            scaler.tick()  # connect, read the tags, first CPU sample
            totals, sampling, reading = [], [], []
            for _ in range(ticks):
                started = time.perf_counter()
                scaler.tick()
                totals.append(time.perf_counter() - started)
                started = time.perf_counter()
                for hypervisor in hypervisors:
                    hypervisor.sample_host()
                sampling.append(time.perf_counter() - started)
                started = time.perf_counter()
                monitor.read()
                reading.append(time.perf_counter() - started)
            tick_ms = statistics.median(totals) * 1000
            results[size] = tick_ms
            print(
                f"{size:>8} {tick_ms:>8.1f} {statistics.median(sampling) * 1000:>10.1f} "
                f"{statistics.median(reading) * 1000:>9.1f} {tick_ms / size:>10.3f}"
            )
    growth = (results[sizes[-1]] / results[sizes[0]]) / (sizes[-1] / sizes[0])
    print(
        f"tick cost growth {sizes[0]} -> {sizes[-1]} domains, relative to linear: {growth:.2f} "
        "(<= 1: linear or better)"
    )
    print("target: <= 50 ms per tick at 1000 domains over 4 connections, no worse than linear")
    return {"tick_ms": results, "growth_vs_linear": growth, "json": json.dumps(results)}
