"""Each pool VM's own broker user (virtscale/vm_identities.py) against the real RabbitMQ: what
its credentials may do (consume its jobs, publish results as itself) and may not (publish jobs,
speak for another VM, read results, declare anything, outlive its domain)."""

from __future__ import annotations

import json
import urllib.parse
import uuid
from pathlib import Path

import pika
import pika.exceptions
import pytest
import requests

from tests.conftest import (
    MANAGEMENT_URL,
    drain_queue,
    known_jobs,
    port_open,
    publish_raw,
    queue_depth,
    require,
    run_module,
    stored_ids,
    wait_until,
)
from virtscale import defaults
from virtscale.management import ManagementApi
from virtscale.messages import Result
from virtscale.publishers import IMPOSTOR_REASON
from virtscale.scaler import template
from virtscale.scaler.fleet import Fleet, FleetConfig
from virtscale.vm_identities import VmIdentities

pytestmark = pytest.mark.broker

#: AMQP reply codes: access refused, and a user_id that is not the login's.
ACCESS_REFUSED, PRECONDITION_FAILED = 403, 406


@pytest.fixture
def identities(management, names):
    made = VmIdentities(ManagementApi(management, ("guest", "guest")), names)
    domains = []

    def create(domain: str | None = None) -> tuple[str, str, str]:
        domain = domain or f"idtest-{uuid.uuid4().hex[:8]}"
        user, password = made.create(domain)
        domains.append(domain)
        return domain, user, password

    made.create_for_test = create
    yield made
    for domain in domains:
        made.remove(domain)


def url_of(user: str, password: str) -> str:
    quoted = ":".join(urllib.parse.quote(part, safe="") for part in (user, password))
    return f"amqp://{quoted}@127.0.0.1:5672/%2F"


def channel_of(user: str, password: str):
    connection = pika.BlockingConnection(pika.URLParameters(url_of(user, password)))
    channel = connection.channel()
    channel.confirm_delivery()
    return connection, channel


def result(worker: str) -> bytes:
    return Result(
        id=str(uuid.uuid4()),
        hash="$2b$04$" + "a" * 53,
        worker=worker,
        produced_at=1.0,
        hashed_at=2.0,
        hash_ms=3.0,
    ).to_json()


def refused_with(code: int, action) -> None:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        action()
    assert refused.value.reply_code == code


def test_a_vm_may_not_publish_jobs_read_results_or_declare_a_queue(identities, names):
    _domain, user, password = identities.create_for_test()
    for action in (
        lambda channel: channel.basic_publish("", names.jobs, known_jobs(1, seed=1)[1][0]),
        lambda channel: channel.basic_publish("", names.results, result("x")),
        lambda channel: channel.basic_get(names.results),
        lambda channel: channel.basic_get(names.dead),
        lambda channel: channel.queue_declare(f"{names.jobs}.mine"),
        lambda channel: channel.exchange_declare(f"{names.jobs}.mine"),
        lambda channel: channel.queue_bind(names.jobs, names.results_exchange, routing_key=names.jobs),
    ):
        connection, channel = channel_of(user, password)
        try:
            refused_with(ACCESS_REFUSED, lambda action=action, channel=channel: action(channel))
        finally:
            connection.close()
    assert queue_depth("amqp://guest:guest@127.0.0.1:5672/%2F", names.jobs) == 0


def test_the_results_exchange_reaches_no_queue_but_results_and_dead_letters(identities, names):
    domain, user, password = identities.create_for_test()
    connection, channel = channel_of(user, password)
    try:
        own = pika.BasicProperties(user_id=user, delivery_mode=2)
        with pytest.raises(pika.exceptions.UnroutableError):
            channel.basic_publish(names.results_exchange, names.jobs, b"{}", own, mandatory=True)
        channel.basic_publish(names.results_exchange, names.results, result(domain), own, mandatory=True)
    finally:
        connection.close()
    assert queue_depth("amqp://guest:guest@127.0.0.1:5672/%2F", names.jobs) == 0
    assert queue_depth("amqp://guest:guest@127.0.0.1:5672/%2F", names.results) == 1


def test_the_broker_refuses_a_user_id_that_is_not_the_login(identities, names):
    _domain, user, password = identities.create_for_test()
    other, _other_user, _ = identities.create_for_test()
    connection, channel = channel_of(user, password)
    try:
        forged = pika.BasicProperties(user_id=f"worker.{other}")
        refused_with(
            PRECONDITION_FAILED,
            lambda: channel.basic_publish(names.results_exchange, names.results, result(other), forged),
        )
    finally:
        if connection.is_open:
            connection.close()


def test_a_result_claiming_another_vm_is_dead_lettered_with_a_reason_and_counted(
    identities, names, processes, tmp_path, broker_url
):
    domain, user, password = identities.create_for_test()
    other, _other_user, _ = identities.create_for_test()
    genuine, forged = result(domain), result(other)
    connection, channel = channel_of(user, password)
    try:
        own = pika.BasicProperties(user_id=user, delivery_mode=2)
        for body in (genuine, forged):
            channel.basic_publish(names.results_exchange, names.results, body, own, mandatory=True)
    finally:
        connection.close()
    publish_raw(broker_url, names.results, [result("a-host-worker")])  # a host account: taken
    unsigned = pika.BlockingConnection(pika.URLParameters(broker_url))
    unsigned.channel().basic_publish("", names.results, result("someone"))  # no user_id
    unsigned.close()
    db = tmp_path / "hashes.db"
    store = f"sqlite:///{db}"
    common = ["--amqp-url", broker_url, "--queue", names.jobs, "--store", store]
    processes.start("virtscale.collector", "run", *common, name="collector")
    wait_until(lambda: queue_depth(broker_url, names.dead) == 2, 60, "two dead letters")
    wait_until(lambda: len(stored_ids(db)) == 2, 60, "the genuine results stored")
    stats = json.loads(run_module("virtscale.collector", "stats", *common, check=True).stdout)
    assert stats["impostor_results"] == 2 and stats["dead_lettered"] == 2
    dead = drain_queue(broker_url, names.dead)
    reasons = sorted(properties.headers[defaults.REASON_HEADER] for properties, _body in dead)
    assert all(reason.startswith(IMPOSTOR_REASON) for reason in reasons)
    assert any(f"claims worker '{other}'" in reason and user in reason for reason in reasons)
    assert json.loads(forged)["id"] not in stored_ids(db)
    assert json.loads(genuine)["id"] in stored_ids(db)


def test_a_worker_with_its_own_user_hashes_jobs_and_its_results_are_stored(
    identities, names, processes, tmp_path, broker_url
):
    domain, user, password = identities.create_for_test()
    (tmp_path / "password").write_text(password)
    ids, bodies = known_jobs(10, seed=3, produced_at=1.0)
    publish_raw(broker_url, names.jobs, [*bodies, b"not a job"])
    worker_url = f"amqp://{urllib.parse.quote(user, safe='')}@127.0.0.1:5672/%2F"
    processes.start(
        "virtscale.worker",
        *("--amqp-url", worker_url, "--password-file", str(tmp_path / "password"), "--queue", names.jobs),
        *("--cost", "4", "--name", domain),
        name="worker",
    )
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
    wait_until(lambda: set(stored_ids(db)) == ids, 90, "every job hashed and stored")
    wait_until(lambda: queue_depth(broker_url, names.dead) == 1, 30, "the bad job dead-lettered by the VM")
    assert "403" not in processes.all_output()


def test_a_removed_vms_connection_is_closed_and_its_credentials_refused_at_once(identities, names):
    domain, user, password = identities.create_for_test()
    connection, _channel = channel_of(user, password)
    api = ManagementApi(MANAGEMENT_URL, ("guest", "guest"))

    def listed() -> bool:
        return any(entry.get("user") == user for entry in api.get("/api/connections?columns=user").json())

    wait_until(listed, 30, "the VM's connection listed by the management API")
    assert identities.remove(domain) == 1
    with pytest.raises(pika.exceptions.AMQPError):
        channel_of(user, password)

    def closed() -> bool:
        try:
            connection.process_data_events(0.2)
        except pika.exceptions.ConnectionClosedByBroker as exc:
            assert exc.reply_code == 320  # CONNECTION_FORCED
            return True
        return not connection.is_open

    wait_until(closed, 30, "the VM's open connection closed")
    assert (
        requests.get(
            f"{MANAGEMENT_URL}/api/users/worker.{domain}", auth=("guest", "guest"), timeout=10
        ).status_code
        == 404
    )


# -- TLS (make broker TLS=1) ----------------------------------------------------------------------

CA_FILE = Path(__file__).resolve().parents[2] / "var" / "secrets" / "tls" / "ca.pem"


@pytest.fixture
def tls(broker_url) -> Path:
    require(port_open("127.0.0.1", 5671) and CA_FILE.exists(), "RabbitMQ's TLS listener (make broker TLS=1)")
    return CA_FILE


def test_a_vm_worker_over_tls_verifies_the_broker_and_its_results_are_stored(
    tls, identities, names, processes, tmp_path, broker_url
):
    domain, user, password = identities.create_for_test()
    (tmp_path / "password").write_text(password)
    ids, bodies = known_jobs(5, seed=4, produced_at=1.0)
    publish_raw(broker_url, names.jobs, bodies)
    worker_url = f"amqps://{urllib.parse.quote(user, safe='')}@127.0.0.1:5671/%2F"
    argv = ["--amqp-url", worker_url, "--password-file", str(tmp_path / "password"), "--queue", names.jobs]
    untrusting = run_module("virtscale.worker", *argv, "--name", domain, timeout=60)
    assert untrusting.returncode == 1
    assert "not trusted" in untrusting.stderr and "--ca-file" in untrusting.stderr
    processes.start("virtscale.worker", *argv, "--ca-file", str(tls), "--cost", "4", "--name", domain)
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
    wait_until(lambda: set(stored_ids(db)) == ids, 90, "every job hashed over TLS and stored")
    api = ManagementApi(MANAGEMENT_URL, ("guest", "guest"))

    def over_tls() -> bool:
        connections = api.get("/api/connections?columns=user,ssl").json()
        return any(entry.get("user") == user and entry.get("ssl") is True for entry in connections)

    wait_until(over_tls, 30, "the worker's connection listed as TLS")


# -- the fleet (the scaler's side) ----------------------------------------------------------------


def test_the_fleet_makes_a_vms_user_for_its_settings_and_removes_it_on_release(identities, names):
    worker = template.WorkerSettings(
        amqp_url="amqp://worker@127.0.0.1:5672/%2F",
        password_file="",
        queue=names.jobs,
        cost=4,
        per_vm_users=True,
    )
    image = template.Image("0123456789abcdef", "/rootfs.qcow2", 2**30, "/vmlinuz", "/initrd")
    fleet = Fleet(FleetConfig("vm"), identities)
    domain = f"idtest-{uuid.uuid4().hex[:8]}"
    settings, tag = fleet.settings(domain, template.Template(pool="vm", image=image, worker=worker))
    given = json.loads(settings)
    assert given["amqp_url"] == f"amqp://worker.{domain}@127.0.0.1:5672/%2F"
    connection, _channel = channel_of(f"worker.{domain}", given["password"])
    connection.close()
    assert given["password"] not in tag.metadata_xml()
    fleet.release(domain)
    with pytest.raises(pika.exceptions.AMQPError):
        channel_of(f"worker.{domain}", given["password"])
