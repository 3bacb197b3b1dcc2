"""virtscale-broker against the real RabbitMQ: what declare creates is what the topology says,
delete says what it deleted, and a mismatched redeclare is one line. The job queue's policy
dead-letters at least once: a poison message reaches the dead-letter queue, and one the
dead-letter queue cannot take stays in the job queue instead of vanishing. A queue at a length
limit refuses publishes, which the producer publishes again later."""

from __future__ import annotations

import json
import urllib.parse
import uuid

import pika
import pytest
import requests

from tests.conftest import MANAGEMENT_URL, drain_queue, known_jobs, publish_raw, run_module, wait_until
from virtscale import defaults, topology_spec
from virtscale.broker import declare_topology
from virtscale.naming import QueueNames

pytestmark = pytest.mark.broker

BROKER = "virtscale.topology"


@pytest.fixture
def fresh(broker_url):
    """Queue names no other test uses; whatever a test left of them is deleted afterwards."""
    names = QueueNames(f"test-cli-{uuid.uuid4().hex[:10]}")
    yield names
    run_module(BROKER, "delete", "--yes", "--queue", names.jobs, env={"VIRTSCALE_AMQP_URL": broker_url})


def broker(broker_url: str, *argv: str):
    return run_module(BROKER, *argv, env={"VIRTSCALE_AMQP_URL": broker_url}, timeout=60)


def management_queue(name: str) -> dict | None:
    response = requests.get(
        f"{MANAGEMENT_URL}/api/queues/%2F/{urllib.parse.quote(name, safe='')}",
        auth=("guest", "guest"),
        timeout=10,
    )
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return response.json()


def test_declare_creates_the_queues_of_the_topology_with_their_arguments(broker_url, fresh):
    run = broker(broker_url, "declare", "--queue", fresh.jobs, "--delivery-limit", "3")
    assert run.returncode == 0, run.stderr
    for queue in topology_spec.queues(fresh, delivery_limit=3):
        found = management_queue(queue.name)
        assert found is not None, queue.name
        assert found["arguments"] == dict(queue.arguments)
        assert found["durable"] is True
        assert found["auto_delete"] is False
        assert found["type"] == "quorum"


def test_delete_says_what_each_queue_held_and_removes_them(broker_url, fresh):
    assert broker(broker_url, "declare", "--queue", fresh.jobs).returncode == 0
    publish_raw(broker_url, fresh.jobs, [b"{}"] * 3)
    publish_raw(broker_url, fresh.results, [b"{}"])
    run = broker(broker_url, "delete", "--yes", "--queue", fresh.jobs)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        f"deleted {fresh.jobs} (3 messages)",
        f"deleted {fresh.results} (1 message)",
        f"deleted {fresh.dead} (0 messages)",
        f"deleted policy virtscale-{fresh.jobs}",
    ]
    assert all(management_queue(name) is None for name in (fresh.jobs, fresh.results, fresh.dead))


def test_delete_of_queues_that_are_not_there_says_so(broker_url, fresh):
    run = broker(broker_url, "delete", "--yes", "--queue", fresh.jobs)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        *(f"{name}: not there, nothing to delete" for name in (fresh.jobs, fresh.results, fresh.dead)),
        f"policy virtscale-{fresh.jobs}: not there, nothing to delete",
    ]


def test_redeclaring_with_other_arguments_is_one_line_naming_the_refusal(broker_url, fresh):
    assert broker(broker_url, "declare", "--queue", fresh.jobs, "--delivery-limit", "5").returncode == 0
    run = broker(broker_url, "declare", "--queue", fresh.jobs, "--delivery-limit", "6")
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "406" in lines[0]
    assert "x-delivery-limit" in lines[0]


AT_LEAST_ONCE = {"dead-letter-strategy": "at-least-once", "overflow": "reject-publish"}


def effective_policy(queue: str) -> dict | None:
    """The policy definition RabbitMQ applies to ``queue`` (shown once its statistics are)."""
    found = management_queue(queue) or {}
    return found.get("effective_policy_definition")


def reject_until_dead_lettered(broker_url: str, queue: str) -> int:
    """Take the one message in ``queue`` and reject it (requeued) until the broker stops giving
    it back: past the delivery limit it is dead-lettered. Returns the deliveries seen."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    deliveries = 0
    try:
        channel = connection.channel()
        for _ in range(100):
            method, _properties, _body = channel.basic_get(queue)
            if method is None:
                if channel.queue_declare(queue, passive=True).method.message_count == 0:
                    return deliveries
                continue
            deliveries += 1
            channel.basic_nack(method.delivery_tag, requeue=True)
    finally:
        connection.close()
    pytest.fail(f"the message in {queue} was never dead-lettered")


def test_declare_sets_the_job_queue_s_policy_and_only_on_it_even_on_queues_that_exist(broker_url, fresh):
    declare_topology(broker_url, fresh, defaults.DELIVERY_LIMIT, "virtscale-tests")  # as before the policy
    assert broker(broker_url, "declare", "--queue", fresh.jobs).returncode == 0
    publish_raw(broker_url, fresh.jobs, [b"{}"])
    wait_until(lambda: effective_policy(fresh.jobs) == AT_LEAST_ONCE, 60, "the policy on the job queue")
    for other in (fresh.results, fresh.dead):
        assert (management_queue(other) or {}).get("policy") is None, other


def test_a_poison_message_is_dead_lettered_at_the_delivery_limit(broker_url, fresh):
    assert broker(broker_url, "declare", "--queue", fresh.jobs).returncode == 0
    _ids, [body] = known_jobs(1, seed=4)
    publish_raw(broker_url, fresh.jobs, [body])
    assert reject_until_dead_lettered(broker_url, fresh.jobs) == defaults.DELIVERY_LIMIT + 1
    dead = wait_until(lambda: drain_queue(broker_url, fresh.dead), 60, "the dead letter")
    [(properties, dead_body)] = dead
    assert dead_body == body
    assert properties.headers["x-first-death-reason"] == "delivery_limit"


def test_a_poison_message_the_dead_letter_queue_cannot_take_stays_in_the_job_queue(broker_url, fresh):
    """At least once: with the dead-letter queue gone, the broker keeps the message (and retries)
    where at most once it would drop it."""
    assert broker(broker_url, "declare", "--queue", fresh.jobs).returncode == 0
    requests.delete(
        f"{MANAGEMENT_URL}/api/queues/%2F/{urllib.parse.quote(fresh.dead, safe='')}",
        auth=("guest", "guest"),
        timeout=10,
    ).raise_for_status()
    publish_raw(broker_url, fresh.jobs, [b"poison"])
    reject_until_dead_lettered(broker_url, fresh.jobs)
    held = wait_until(
        lambda: (management_queue(fresh.jobs) or {}).get("messages_dlx"),
        60,
        "the message held for its dead-lettering",
    )
    assert held == 1


def test_the_producer_publishes_again_what_a_full_queue_refused(broker_url, fresh, processes):
    """A queue of 20 at most that refuses what does not fit (overflow reject-publish, as the job
    queue's policy sets), full from the start: the producer's 40 jobs all get in once a consumer
    makes room, each once. Paced, because a quorum queue learns a new publisher of its state only
    after its first publishes: a burst from one could all get in over the limit."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        limits = {"x-queue-type": "quorum", "x-max-length": 20, "x-overflow": "reject-publish"}
        connection.channel().queue_declare(fresh.jobs, durable=True, arguments=limits)
    finally:
        connection.close()
    _ids, bodies = known_jobs(20, seed=5)
    publish_raw(broker_url, fresh.jobs, bodies)
    producer = processes.start(
        "virtscale.producer", "--amqp-url", broker_url, "--queue", fresh.jobs, "--count", "40", "--rate", "10"
    )
    wait_until(lambda: "will publish it again" in processes.output(producer), 60, "a refused publish")
    taken: list[bytes] = []

    def drained() -> bool:
        taken.extend(body for _properties, body in drain_queue(broker_url, fresh.jobs))
        return producer.poll() is not None and len(taken) >= 60

    wait_until(drained, 120, "all 60 jobs taken")
    assert producer.returncode == 0, processes.output(producer)
    assert "confirmed 40 of 40 generated" in processes.output(producer)
    ids = [json.loads(body)["id"] for body in taken]
    assert len(ids) == len(set(ids)) == 60
