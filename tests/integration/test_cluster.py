"""The pipeline on make cluster's 3-node RabbitMQ cluster: the node leading the job queue is stopped
mid-run and started again; every confirmed job is stored once, and the scaler keeps reading the
queue from the nodes still up.

The cluster is the machine's (fixed node names and ports): the test starts it with make cluster's
own code if it is not running and stops it again afterwards, and holds make cluster's lock
meanwhile, so that two test runs never stop a node under each other.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.rabbitmq.cluster import ROOT, Cluster, exclusive
from deploy.rabbitmq.node import RABBITMQ_BIN, RabbitNode
from tests.conftest import port_open, require, run_module, stored_ids, wait_until
from virtscale import defaults
from virtscale.broker import queue_counts
from virtscale.config import redact_url
from virtscale.management import ManagementApi
from virtscale.naming import QueueNames
from virtscale.scaler.queue_monitor import QueueMonitor, QueueReading

# The module's first test also waits for the cluster to start, and for its lock if another test
# run holds it.
pytestmark = [pytest.mark.broker, pytest.mark.cluster, pytest.mark.timeout(900)]

JOBS = 3000
TEST_CONNECTION = "virtscale-tests"
#: The one reason a reading may be degraded while a node is down: right after the job queue's leader
#: moved, the management API has no counts for it until the new leader's first statistics (RabbitMQ
#: emits a quorum queue's every 5 s).
STATISTICS_NOT_READY = "statistics not ready"


def cluster_can_run(cluster: Cluster) -> bool:
    """Root (the nodes run as the rabbitmq account), the server installed, and each node's ports
    either its own (it runs) or free."""
    if os.geteuid() != 0 or not (RABBITMQ_BIN / "rabbitmq-server").exists() or not shutil.which("runuser"):
        return False
    return all(
        node.running()
        or not any(port_open("127.0.0.1", port) for port in (node.amqp_port, node.management_port))
        for node in cluster.nodes
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    nodes = Cluster()
    require(cluster_can_run(nodes), "a 3-node RabbitMQ cluster (make cluster: root, ports 5681-5683 free)")
    with exclusive():
        started_here = not nodes.running()
        nodes.start(defaults.QUEUE, str(ROOT / "var" / "secrets"))
        try:
            yield nodes
        finally:
            if started_here:
                nodes.stop()


def each(flag: str, values: list[str]) -> list[str]:
    return [item for value in values for item in (flag, value)]


def rotated(urls: list[str], first: int) -> list[str]:
    """The same nodes, starting at another: clients spread over them, as a deployment's would."""
    return urls[first:] + urls[:first]


@pytest.fixture
def queues(cluster: Cluster) -> Iterator[QueueNames]:
    """Fresh queues (and their policy) declared by virtscale-broker on the cluster, deleted after."""
    names = QueueNames(f"test-cluster-{uuid.uuid4().hex[:10]}")
    nodes = [*each("--amqp-url", cluster.amqp_urls), *each("--management-url", cluster.management_urls)]
    declared = run_module("virtscale.topology", "declare", "--queue", names.jobs, *nodes)
    assert declared.returncode == 0, declared.stderr
    yield names
    run_module("virtscale.topology", "delete", "--yes", "--queue", names.jobs, *nodes)


def leader_of(cluster: Cluster, queue: str) -> RabbitNode:
    api = ManagementApi(cluster.management_urls, ("guest", "guest"))
    return cluster.node(api.get(f"/api/queues/%2F/{queue}").json()["leader"])


def start_pipeline(processes, cluster: Cluster, names: QueueNames, leader: RabbitNode, db: Path) -> dict:
    """The collector, two workers and the producer, each given all three nodes: all but one worker
    first the leader's (they must fail over from it), that worker the next node's (it sees the
    leader move away under it)."""
    urls = cluster.amqp_urls
    on_leader, next_one = (
        rotated(urls, urls.index(leader.amqp_url)),
        rotated(urls, urls.index(leader.amqp_url) + 1),
    )
    queue = ["--queue", names.jobs]
    started = {
        "collector": processes.start(
            "virtscale.collector", "run", *each("--amqp-url", on_leader), *queue, "--store", f"sqlite:///{db}"
        )
    }
    for name, first in (("w1", on_leader), ("w2", next_one)):
        started[name] = processes.start(
            "virtscale.worker", *each("--amqp-url", first), *queue,
            "--cost", "4", "--concurrency", "2", "--name", name, name=name,
        )  # fmt: skip
    started["producer"] = processes.start(
        "virtscale.producer", *each("--amqp-url", on_leader), *queue,
        "--count", str(JOBS), "--rate", "75", "--seed", "12", name="producer",
    )  # fmt: skip
    return started


def readings_while_down(monitor: QueueMonitor, complete_ones: int) -> list[tuple[float, QueueReading]]:
    """Readings every half second, with their clock time, until ``complete_ones`` of them were not
    degraded."""
    readings: list[tuple[float, QueueReading]] = []

    def enough() -> bool:
        readings.append((time.monotonic(), monitor.read()))
        return sum(not reading.degraded for _time, reading in readings) >= complete_ones

    wait_until(enough, 120, f"{complete_ones} complete readings", every=0.5)
    return readings


def test_the_job_queues_have_a_replica_on_every_node(cluster, queues):
    api = ManagementApi(cluster.management_urls, ("guest", "guest"))
    for queue in (queues.jobs, queues.results, queues.dead):
        found = api.get(f"/api/queues/%2F/{queue}").json()
        assert sorted(found["members"]) == sorted(node.name for node in cluster.nodes), queue


def test_the_node_leading_the_job_queue_stopped_mid_run_loses_no_job(cluster, queues, processes, tmp_path):
    db = tmp_path / "hashes.db"
    leader = leader_of(cluster, queues.jobs)
    started = start_pipeline(processes, cluster, queues, leader, db)
    producer = started["producer"]
    monitor = QueueMonitor(cluster.management_urls, ("guest", "guest"), "/", queues.jobs, cluster.amqp_urls)
    wait_until(lambda: len(stored_ids(db)) >= JOBS // 5, 120, "the first fifth stored")
    wait_until(lambda: not monitor.read().degraded, 60, "a complete reading before the stop")
    assert leader_of(cluster, queues.jobs) is leader, "the job queue's leader moved before the stop"
    assert producer.poll() is None and len(stored_ids(db)) < JOBS, (
        "the stop would come too late to test anything"
    )
    try:
        leader.stop()
        stopped = time.monotonic()
        timed = readings_while_down(monitor, complete_ones=6)
        producing = producer.poll() is None
    finally:
        leader.start()
    for name in ("collector", "w1", "producer"):
        elsewhere = [node for node in cluster.nodes if node is not leader]
        connected = [f"connected to {redact_url(node.amqp_url)}" for node in elsewhere]
        assert any(line in processes.output(started[name]) for line in connected), f"{name} failed over"

    down = [reading for _time, reading in timed]
    assert all(reading.depth is not None and not reading.refused for reading in down), down
    first_complete = next(index for index, reading in enumerate(down) if not reading.degraded)
    assert not any(reading.degraded for reading in down[first_complete:]), down
    assert all(STATISTICS_NOT_READY in reading.problem for reading in down[:first_complete]), down
    assert producer.wait(300) == 0, processes.output(producer)
    assert f"confirmed {JOBS} of {JOBS} generated" in processes.output(producer)
    wait_until(lambda: len(stored_ids(db)) == JOBS, 300, f"all {JOBS} stored")
    check_stored_once(processes, cluster, queues, db)
    republished = re.search(r"\((\d+) republished", processes.output(producer)).group(1)
    print(
        f"{leader.name} stopped mid-run: {len(down)} readings while down, the first {first_complete} of them"
    )
    print(f"degraded (no statistics yet from the new leader) for {timed[first_complete][0] - stopped:.1f} s")
    print(f"the producer republished {republished} jobs")
    print(f"the node came back {'while the producer still ran' if producing else 'after the producer ended'}")


def check_stored_once(processes, cluster: Cluster, names: QueueNames, db: Path) -> None:
    """Every job stored once, the copies the collector saw counted, nothing left in the queues."""
    for process, _log in processes.started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            assert process.wait(60) == 0, processes.output(process)
    ids = stored_ids(db)
    assert len(ids) == len(set(ids)) == JOBS
    stats = json.loads(
        run_module(
            "virtscale.collector", "stats", "--store", f"sqlite:///{db}", "--queue", names.jobs,
            *each("--amqp-url", cluster.amqp_urls), check=True,
        ).stdout
    )  # fmt: skip
    collector_said = re.search(r"collector stopped: (\d+) stored, (\d+) duplicates", processes.all_output())
    assert (stats["stored"], stats["duplicates_ignored"]) == tuple(map(int, collector_said.groups()))
    assert stats["dead_lettered"] == 0
    for queue in (names.jobs, names.results):
        assert queue_counts(cluster.amqp_urls, queue, TEST_CONNECTION) == (0, 0), queue
    print(f"{JOBS} stored once; {stats['duplicates_ignored']} duplicate deliveries ignored")
