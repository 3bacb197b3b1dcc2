"""The producer against the real RabbitMQ, run in this process: a publish the broker nacks (a queue
at its length limit, overflow reject-publish), returns as unroutable (no such queue) or loses
with its connection is published again; what stays unconfirmed is counted, and the command
exits 1 for it."""

from __future__ import annotations

import json
import re
import threading

import pika
import pytest

from tests.conftest import drain_queue, wait_until
from tests.support.proxy import CuttableProxy
from virtscale import defaults
from virtscale.producer import cli, publisher
from virtscale.producer.licenses import LicenseGenerator
from virtscale.producer.publisher import Producer, ProducerReport

pytestmark = pytest.mark.broker

#: Seconds a step may take before the test fails: each takes a second or two when all is well.
PATIENCE = 10


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    """Reconnects and republishes a few hundredths of a second apart."""
    monkeypatch.setattr(defaults, "RECONNECT_INITIAL", 0.05)
    monkeypatch.setattr(defaults, "RECONNECT_JITTER", 0.05)
    monkeypatch.setattr(defaults, "RECONNECT_MAX", 0.5)
    monkeypatch.setattr(defaults, "REPUBLISH_DELAY", 0.1)


class ProducerThread:
    def __init__(self, url, names, count, rate=None, **options):
        self.producer = Producer(url, names, LicenseGenerator(7), rate=rate, count=count, **options)
        self.report: ProducerReport | None = None
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.report = self.producer.run()
        except BaseException as exc:
            self.failure = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self) -> ProducerReport:
        self._thread.join(PATIENCE)
        assert self.failure is None, repr(self.failure)
        assert self.report is not None, "the producer ended"
        return self.report


def declare(url: str, queue: str, **arguments) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.queue_delete(queue)
        channel.queue_declare(queue, durable=True, arguments=arguments or None)
    finally:
        connection.close()


def delete(url: str, queue: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().queue_delete(queue)
    finally:
        connection.close()


def ids_in(url: str, queue: str) -> list[str]:
    return [json.loads(body)["id"] for _properties, body in drain_queue(url, queue)]


def republished_ids(caplog) -> set[str]:
    said = (re.search(r"job (\S+) not confirmed", r.getMessage()) for r in caplog.records)
    return {match.group(1) for match in said if match}


def test_a_job_a_full_queue_refuses_is_published_again_until_it_gets_in(broker_url, names, caplog):
    declare(broker_url, names.jobs, **{"x-max-length": 5, "x-overflow": "reject-publish"})
    thread = ProducerThread(broker_url, names, count=15)
    taken: list[str] = []

    def all_in() -> bool:
        taken.extend(ids_in(broker_url, names.jobs))
        return thread.done()

    wait_until(all_in, PATIENCE, "the producer done")
    taken.extend(ids_in(broker_url, names.jobs))
    report = thread.join()
    assert (report.generated, report.confirmed, report.unconfirmed) == (15, 15, 0)
    assert report.republished >= 1, "the full queue refused some"
    assert len(taken) == len(set(taken)) == 15, "each job in once"
    assert republished_ids(caplog) <= set(taken)


def test_a_job_returned_as_unroutable_is_published_again(broker_url, names, caplog):
    # Paced, so that the queue is gone while jobs are still to be published.
    thread = ProducerThread(broker_url, names, count=30, rate=lambda _t: 30.0)
    wait_until(lambda: thread.producer.report.confirmed >= 3, PATIENCE, "the first jobs in")
    delete(broker_url, names.jobs)
    wait_until(lambda: republished_ids(caplog), PATIENCE, "a returned job")
    declare(broker_url, names.jobs)
    report = thread.join()
    taken = ids_in(broker_url, names.jobs)
    assert (report.generated, report.confirmed, report.unconfirmed) == (30, 30, 0)
    assert report.republished >= 1
    assert len(taken) == len(set(taken)), "each job in once"
    assert republished_ids(caplog) <= set(taken), "every returned job published again"


def test_jobs_lost_with_the_connection_are_published_again(broker_url, names):
    proxy = CuttableProxy(("127.0.0.1", 5672))
    try:
        thread = ProducerThread(proxy.url(), names, count=40, rate=lambda _t: 40.0)
        wait_until(lambda: thread.producer.report.confirmed >= 5, PATIENCE, "the first jobs in")
        proxy.cut()
        proxy.restore()
        report = thread.join()
    finally:
        proxy.close()
    taken = set(ids_in(broker_url, names.jobs))
    assert (report.generated, report.confirmed, report.unconfirmed) == (40, 40, 0)
    assert len(taken) == 40, "every job in (a copy of one whose confirm was lost is allowed)"
    assert proxy.connections_made >= 2


def test_jobs_that_stay_unconfirmed_are_counted_and_the_command_exits_1(
    broker_url, names, monkeypatch, capsys
):
    declare(broker_url, names.jobs, **{"x-max-length": 0, "x-overflow": "reject-publish"})
    monkeypatch.setattr(publisher, "DRAIN_TIMEOUT", 0.5)
    argv = [
        "--amqp-url",
        broker_url,
        "--queue",
        names.jobs,
        "--count",
        "3",
        "--rate",
        "0",
        "--run-for",
        "0.5",
    ]
    assert cli.main(argv) == 1
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"confirmed 0 of 3 generated \(\d+ republished, 3 unconfirmed\)", line), line
