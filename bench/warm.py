"""Warm pool: restore-to-consuming (managed save, then start) against cold-boot-to-consuming,
RUNS of each on one real TCG guest of qemu:///system, p50 and p95. `python -m bench warm`
(not in the default set: about ten minutes of real boots). Target: at least 10 times faster,
warm p95 at most 2 s."""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid

from bench.fleet import CONNECTION, URI, URL, consuming_after, make_template
from virtscale import defaults
from virtscale.broker import declare_topology, delete_topology, queue_counts
from virtscale.naming import QueueNames
from virtscale.scaler import template
from virtscale.scaler.hypervisor import Hypervisor

RUNS = 10


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def drained(names: QueueNames) -> None:
    while queue_counts(URL, names.jobs, CONNECTION)[1] > 0:
        time.sleep(0.1)


def measure() -> dict[str, list[float]]:
    pool = f"warm{uuid.uuid4().hex[:6]}"
    names = QueueNames(f"{pool}-jobs")
    declare_topology(URL, names, defaults.DELIVERY_LIMIT, CONNECTION)
    hypervisor = Hypervisor(URI, pool)
    name = f"{pool}-1"
    cold, warm, restore_calls = [], [], []
    try:
        with tempfile.TemporaryDirectory() as directory:
            made = make_template(pool, names, directory)
            hypervisor.create(
                name, made, template.settings(name, made, "guest"), made.tag("guest"), start=False
            )
            for _ in range(RUNS):
                cold.append(consuming_after(names, lambda: hypervisor.start(name)))
                hypervisor.stop_worker(name)
                drained(names)
                hypervisor.save(name)
                warm.append(
                    consuming_after(names, lambda: restore_calls.append(timed(hypervisor.start, name)))
                )
                hypervisor.destroy(name)  # the next cold boot
    finally:
        try:
            hypervisor.delete(name)
        finally:
            delete_topology(URL, names, CONNECTION)
    return {"cold": cold, "warm": warm, "restore_calls": restore_calls}


def timed(call, *args) -> float:
    started = time.monotonic()
    call(*args)
    return time.monotonic() - started


def run() -> dict:
    print(f"\nWarm pool on {URI}: seconds from the start to the worker consuming ({RUNS} runs each)")
    figures = measure()
    for kind in ("cold", "warm"):
        values = figures[kind]
        print(
            f"{kind:>5}: p50 {statistics.median(values):5.1f} s  p95 {p95(values):5.1f} s  "
            f"runs {', '.join(f'{v:.1f}' for v in values)}"
        )
    print(
        "warm, of which the restore and the guest-agent command (Hypervisor.start): "
        f"{', '.join(f'{v:.1f}' for v in figures['restore_calls'])}"
    )
    print(
        f"cold / warm: p50 {statistics.median(figures['cold']) / statistics.median(figures['warm']):.1f}x, "
        f"p95 {p95(figures['cold']) / p95(figures['warm']):.1f}x (target >= 10x, warm p95 <= 2 s)"
    )
    return figures
