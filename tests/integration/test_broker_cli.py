"""virtscale-broker against the real RabbitMQ: what declare creates is what the topology says,
delete says what it deleted, and a mismatched redeclare is one line."""

from __future__ import annotations

import urllib.parse
import uuid

import pytest
import requests

from tests.conftest import MANAGEMENT_URL, publish_raw, run_module
from virtscale import topology_spec
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
    ]
    assert all(management_queue(name) is None for name in (fresh.jobs, fresh.results, fresh.dead))


def test_delete_of_queues_that_are_not_there_says_so(broker_url, fresh):
    run = broker(broker_url, "delete", "--yes", "--queue", fresh.jobs)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        f"{name}: not there, nothing to delete" for name in (fresh.jobs, fresh.results, fresh.dead)
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
