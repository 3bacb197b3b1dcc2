"""Scaler tick cost against pool size, on libvirt's test driver (one connection) and the real
RabbitMQ management API. Target: <= 50 ms per tick at 1000 domains, no worse than linear."""

from __future__ import annotations

import os
import statistics
import tempfile
import time

from virtscale import defaults
from virtscale.scaler.hypervisor import Hypervisor
from virtscale.scaler.loop import Scaler
from virtscale.scaler.policy import Policy, PolicyConfig
from virtscale.scaler.queue_monitor import QueueMonitor

URL = os.environ.get("VIRTSCALE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
DOMAIN = """<domain type="test" xmlns:test="http://libvirt.org/schemas/domain/test/1.0">
<name>vm-{index}</name><memory>65536</memory><vcpu>1</vcpu><os><type>hvm</type></os>
<test:runstate>{state}</test:runstate></domain>"""


def node_file(domains: int, directory: str) -> str:
    """Half the pool running, half shut off."""
    path = os.path.join(directory, f"node-{domains}.xml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("<node>\n")
        for index in range(1, domains + 1):
            handle.write(DOMAIN.format(index=index, state=1 if index % 2 else 5) + "\n")
        handle.write("</node>\n")
    return path


def tick_cost(sizes=(10, 100, 1000), ticks: int = 20) -> None:
    monitor = QueueMonitor(defaults.MANAGEMENT_URL, ("guest", "guest"), "/", "licenses", URL)
    print(f"\nScaler tick cost (test driver, one connection, dry run; median of {ticks} ticks)")
    print(f"{'domains':>8} {'tick ms':>8} {'libvirt ms':>10} {'queue ms':>9} {'ms/domain':>10}")
    with tempfile.TemporaryDirectory() as directory:
        for size in sizes:
            hypervisor = Hypervisor(f"test://{node_file(size, directory)}", "vm")
            scaler = Scaler(
                [hypervisor], monitor, Policy(PolicyConfig(max_vms=size)), window=30, dry_run=True
            )
            scaler.tick()  # connect, first CPU sample
            totals, sampling, reading = [], [], []
            for _ in range(ticks):
                started = time.perf_counter()
                scaler.tick()
                totals.append(time.perf_counter() - started)
                started = time.perf_counter()
                hypervisor.sample()
                sampling.append(time.perf_counter() - started)
                started = time.perf_counter()
                monitor.read()
                reading.append(time.perf_counter() - started)
            tick_ms = statistics.median(totals) * 1000
            print(
                f"{size:>8} {tick_ms:>8.1f} {statistics.median(sampling) * 1000:>10.1f} "
                f"{statistics.median(reading) * 1000:>9.1f} {tick_ms / size:>10.3f}"
            )
    print("target: <= 50 ms per tick at 1000 domains, no worse than linear")
