"""Worker and producer efficiency against bare baselines, on the real RabbitMQ."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bcrypt
import pika

from virtscale import defaults
from virtscale.broker import BrokerUrls, declare_topology, delete_topology
from virtscale.naming import QueueNames
from virtscale.producer.licenses import LicenseGenerator
from virtscale.producer.publisher import Producer
from virtscale.worker.consumer import default_concurrency

#: How the benchmark's own connections show in the management UI.
BENCH_CONNECTION = "virtscale-bench"
URL = os.environ.get("VIRTSCALE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def bare_connection() -> pika.BlockingConnection:
    """A plain pika connection for the baselines and the bench's own plumbing, named as such in
    the management UI."""
    params = pika.URLParameters(URL)
    params.client_properties = {"connection_name": BENCH_CONNECTION}
    return pika.BlockingConnection(params)


#: Runs of each measurement; the best counts (load from elsewhere only ever slows one down).
ROUNDS = 2


def raw_bcrypt_rate(cost: int, jobs: int, slots: int) -> float:
    """Hashes per second of bare bcrypt.hashpw on ``slots`` threads (bcrypt releases the GIL)."""
    generate = LicenseGenerator(1)
    licenses = [generate().encode() for _ in range(jobs)]
    with ThreadPoolExecutor(slots) as pool:
        started = time.perf_counter()
        list(pool.map(lambda pw: bcrypt.hashpw(pw, bcrypt.gensalt(cost)), licenses))
        return jobs / (time.perf_counter() - started)


def main_thread_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds so far of a process's main thread, from Linux's /proc."""
    stat = Path(f"/proc/{pid}/task/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pipeline_rate(
    cost: int, jobs: int, slots: int, extra: list[str], worker_url: str = URL
) -> tuple[float, float]:
    """Hashes per second of a real worker process, from the hashed_at of its results
    (start-up excluded): jobs are queued first, then the worker drains them. Also the CPU seconds
    per job of the worker's I/O loop (its main thread, which does all of its AMQP and JSON work,
    while bcrypt runs on its pool's threads), between its first result and its last."""
    names = QueueNames(f"bench-{uuid.uuid4().hex[:8]}")
    declare_topology(URL, names, defaults.DELIVERY_LIMIT, BENCH_CONNECTION)
    try:
        connection = bare_connection()
        channel = connection.channel()
        channel.confirm_delivery()
        generate = LicenseGenerator(2)
        for _ in range(jobs):
            body = json.dumps({"id": str(uuid.uuid4()), "license": generate(), "produced_at": 0})
            channel.basic_publish("", names.jobs, body.encode(), pika.BasicProperties(delivery_mode=2))
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "virtscale.worker",
                "--amqp-url",
                worker_url,
                "--queue",
                names.jobs,
                "--cost",
                str(cost),
                "--concurrency",
                str(slots),
                "--log-level",
                "WARNING",
                *extra,
            ],
        )

        # The reader stays off the CPU the worker and the broker share while they work: it
        # watches the results queue's depth (a passive declare) and reads the results after.
        def results_queued() -> int:
            return channel.queue_declare(names.results, passive=True).method.message_count

        while results_queued() == 0:
            connection.sleep(0.01)
        cpu_at_first = main_thread_cpu_seconds(worker.pid)
        while results_queued() < jobs:
            connection.sleep(0.25)  # rarely: the broker it asks is under test
        cpu_per_job = (main_thread_cpu_seconds(worker.pid) - cpu_at_first) / (jobs - 1)
        worker.terminate()
        worker.wait(30)
        hashed_at = []
        for _method, _props, body in channel.consume(names.results, auto_ack=True, inactivity_timeout=5):
            if body is None:
                break
            hashed_at.append(json.loads(body)["hashed_at"])
            if len(hashed_at) == jobs:
                break
        channel.cancel()
        connection.close()
        hashed_at.sort()
        # The first result marks the start: jobs-1 intervals between first and last.
        return (jobs - 1) / (hashed_at[-1] - hashed_at[0]), cpu_per_job
    finally:
        delete_topology(URL, names, BENCH_CONNECTION)


def worker_efficiency() -> None:
    slots = default_concurrency()
    print(f"\nWorker efficiency ({slots} slots): pipeline hashes/s / raw bcrypt.hashpw hashes/s")
    print(
        "(prefetch auto: the default, about 1 s of work per slot; best of "
        f"{ROUNDS} runs each, raw and pipeline alternating;"
    )
    print(" loop CPU/job: the worker's own work outside bcrypt, on its I/O loop thread)")
    print(
        f"{'cost':>4} {'prefetch/slot':>13} {'raw/s':>9} {'pipeline/s':>11} {'ratio':>6} {'target':>6} "
        f"{'loop CPU/job':>12}"
    )
    for cost, jobs, target in ((4, 4000, 0.60), (10, 400, 0.97), (12, 100, None)):
        for per_slot in ("auto", "1"):
            raw, rate, loop_cpu = 0.0, 0.0, float("inf")
            for _ in range(ROUNDS):
                raw = max(raw, raw_bcrypt_rate(cost, jobs, slots))
                run_rate, run_cpu = pipeline_rate(cost, jobs, slots, ["--prefetch-per-slot", per_slot])
                rate, loop_cpu = max(rate, run_rate), min(loop_cpu, run_cpu)
            print(
                f"{cost:>4} {per_slot:>13} {raw:>9.1f} {rate:>11.1f} {rate / raw:>6.2f} "
                f"{'' if target is None else f'{target:.2f}':>6} {loop_cpu * 1e6:>9.0f} us"
            )
    print("target: the worker's own CPU at most 150 us a job")


def bare_publish_rate(names: QueueNames, count: int) -> float:
    """A bare pika publisher: persistent messages, no confirms, same queue type."""
    connection = bare_connection()
    channel = connection.channel()
    generate = LicenseGenerator(3)
    bodies = [
        json.dumps({"id": str(uuid.uuid4()), "license": generate(), "produced_at": 0}).encode()
        for _ in range(count)
    ]
    properties = pika.BasicProperties(delivery_mode=2)
    started = time.perf_counter()
    for body in bodies:
        channel.basic_publish("", names.jobs, body, properties)
    connection.process_data_events(0)
    elapsed = time.perf_counter() - started
    connection.close()
    return count / elapsed


def confirmed_publish_rate(names: QueueNames, count: int, urls: BrokerUrls = URL) -> float:
    producer = Producer(urls, names, LicenseGenerator(4), rate=None, count=count, progress_interval=1e9)
    started = time.perf_counter()
    report = producer.run()
    elapsed = time.perf_counter() - started
    assert report.confirmed == count
    return count / elapsed


def one_by_one_confirm_rate(names: QueueNames, count: int) -> float:
    connection = bare_connection()
    channel = connection.channel()
    channel.confirm_delivery()
    started = time.perf_counter()
    for index in range(count):
        channel.basic_publish("", names.jobs, b'{"n": %d}' % index, pika.BasicProperties(delivery_mode=2))
    elapsed = time.perf_counter() - started
    connection.close()
    return count / elapsed


def purge(names: QueueNames) -> None:
    connection = bare_connection()
    connection.channel().queue_purge(names.jobs)
    connection.close()


def producer_efficiency(count: int = 20000, rounds: int = 3) -> None:
    names = QueueNames(f"bench-{uuid.uuid4().hex[:8]}")
    declare_topology(URL, names, defaults.DELIVERY_LIMIT, BENCH_CONNECTION)
    try:
        bare, confirmed = [], []
        for _ in range(rounds):
            bare.append(bare_publish_rate(names, count))
            purge(names)
            confirmed.append(confirmed_publish_rate(names, count))
            purge(names)
        single = one_by_one_confirm_rate(names, 1000)
        purge(names)
    finally:
        delete_topology(URL, names, BENCH_CONNECTION)
    best_bare, best_confirmed = max(bare), max(confirmed)
    print(f"\nProducer efficiency: {count} persistent messages to a quorum queue, best of {rounds}")
    print(f"{'publisher':<44} {'msgs/s':>9} {'ratio':>6}")
    print(f"{'bare pika, no confirms (baseline)':<44} {best_bare:>9.0f} {1:>6.2f}")
    print(
        f"{'virtscale-producer, pipelined confirms':<44} {best_confirmed:>9.0f} "
        f"{best_confirmed / best_bare:>6.2f}"
    )
    print(f"{'one publish, wait for its confirm, repeat':<44} {single:>9.0f} {single / best_bare:>6.2f}")
    print("target: virtscale-producer >= 0.75")
