"""virtscale.broker without a broker: pika's errors told in words and mapped to ours, never raised
as they are; one warning per failed connection attempt."""

import logging
import socket
import threading
import types
import uuid

import pika.exceptions
import pytest
from pika.adapters.utils.connection_workflow import (
    AMQPConnectionWorkflowFailed,
    AMQPConnectorSocketConnectError,
)

from virtscale import broker, defaults
from virtscale.broker import BrokerRefused, BrokerUnavailable, classify, connection_parameters, describe

URL = "amqp://guest:s3cret@127.0.0.1:5672/%2F"


def workflow_failure(error: BaseException) -> BaseException:
    """What pika hands over when it could not connect: the cause three wrappers deep."""
    return pika.exceptions.AMQPConnectionError(
        AMQPConnectionWorkflowFailed([AMQPConnectorSocketConnectError(error)])
    )


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (workflow_failure(ConnectionRefusedError(111, "Connection refused")), "connection refused"),
        (workflow_failure(socket.gaierror(-2, "Name or service not known")), "name or service not known"),
        (workflow_failure(TimeoutError()), "timed out"),
        (
            pika.exceptions.ConnectionClosedByBroker(320, "CONNECTION_FORCED - shutdown"),
            "320 CONNECTION_FORCED",
        ),
        (pika.exceptions.AMQPHeartbeatTimeout("no frames"), "no heartbeat"),
        (pika.exceptions.IncompatibleProtocolError("EOF"), "does not speak AMQP"),
    ],
)
def test_describe_says_what_went_wrong(error, words):
    assert words in describe(error)


def test_unavailable_names_the_broker_and_the_reason_without_the_password():
    failure = classify(workflow_failure(ConnectionRefusedError(111, "Connection refused")), URL)
    assert isinstance(failure, BrokerUnavailable)
    assert str(failure) == "broker at amqp://guest:***@127.0.0.1:5672/%2F unavailable: connection refused"


@pytest.mark.parametrize(
    "error",
    [
        pika.exceptions.ProbableAuthenticationError("ConnectionClosedByBroker: (403) 'ACCESS_REFUSED'"),
        pika.exceptions.ChannelClosedByBroker(404, "NOT_FOUND - no queue 'x'"),
        pika.exceptions.ChannelClosedByBroker(406, "PRECONDITION_FAILED - inequivalent arg"),
        pika.exceptions.ConnectionClosedByBroker(530, "NOT_ALLOWED - vhost"),
    ],
)
def test_configuration_errors_are_refusals(error):
    assert isinstance(classify(error, URL), BrokerRefused)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("amqp://guest:s3cret@host:99999/%2F", "Port out of range"),
        ("amqp://guest:s3cret@host/%2F?heartbeat=often", "Invalid heartbeat"),
        ("amqp://guest:s3cret@host/%2F?colour=blue", "Unknown URL parameter"),
    ],
)
def test_a_url_pika_cannot_use_is_refused_with_the_password_hidden(url, words):
    with pytest.raises(BrokerRefused, match=words) as caught:
        connection_parameters(url, "virtscale-test")
    assert "s3cret" not in str(caught.value)


def test_connections_carry_their_name():
    params = connection_parameters(URL, "virtscale-worker vm-1 licenses")
    assert params.client_properties["connection_name"] == "virtscale-worker vm-1 licenses"


def test_keep_running_logs_one_warning_with_the_reason_per_failed_attempt(caplog, monkeypatch):
    monkeypatch.setattr(broker.defaults, "RECONNECT_INITIAL", 0.01)
    monkeypatch.setattr(broker.defaults, "RECONNECT_MAX", 0.02)
    monkeypatch.setattr(broker.defaults, "RECONNECT_JITTER", 0.01)
    attempts = []

    def run_session() -> None:
        attempts.append(1)
        if len(attempts) <= 3:
            raise classify(workflow_failure(ConnectionRefusedError(111, "Connection refused")), URL)

    with caplog.at_level(logging.DEBUG, logger="virtscale.broker"):
        broker.keep_running(run_session, threading.Event(), "worker vm-1")
    assert len(attempts) == 4
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 3, warnings
    assert all(line.startswith("worker vm-1: broker at") for line in warnings)
    assert all("unavailable: connection refused; retrying in" in line for line in warnings)
    assert all("s3cret" not in line for line in warnings)


def test_keep_running_lets_a_refusal_through():
    def run_session() -> None:
        raise BrokerRefused("fix the configuration")

    with pytest.raises(BrokerRefused):
        broker.keep_running(run_session, threading.Event(), "worker")


def test_a_refused_login_quotes_the_broker_not_pika():
    error = pika.exceptions.ProbableAuthenticationError(
        "ConnectionClosedByBroker: (403) 'ACCESS_REFUSED - Login was refused'"
    )
    message = str(classify(error, URL))
    assert message.startswith("broker at amqp://guest:***@127.0.0.1:5672/%2F refused the credentials")
    assert message.endswith("(403) 'ACCESS_REFUSED - Login was refused'")


class RecordingChannel:
    """The calls a Session makes on its channel, without a broker."""

    is_open = True

    def __init__(self):
        self.deliver = None
        self.published: list[tuple[str, bytes, pika.BasicProperties]] = []
        self.acked: list[int] = []
        self.nacked: list[tuple[int, bool]] = []

    def basic_consume(self, queue, callback, consumer_tag):
        self.deliver = callback
        return consumer_tag

    def basic_publish(self, exchange, routing_key, body, properties, mandatory):
        self.published.append((routing_key, body, properties))

    def basic_ack(self, delivery_tag, multiple=False):
        self.acked.append((delivery_tag, "and all before") if multiple else delivery_tag)

    def basic_nack(self, delivery_tag, requeue):
        self.nacked.append((delivery_tag, requeue))


class PassingLoop:
    """The I/O loop's call_later, run by hand: ``end_pass()`` runs what is due."""

    def __init__(self):
        self.due: list = []

    def call_later(self, _delay, callback):
        self.due.append(callback)

    def end_pass(self) -> None:
        due, self.due = self.due, []
        for callback in due:
            callback()


def consuming_session(on_message, dead_letter_queue=None) -> tuple[broker.Session, RecordingChannel]:
    session = broker.Session(URL, lambda _session: None, connection_name="virtscale-test")
    channel = session._channel = RecordingChannel()
    session._connection = types.SimpleNamespace(ioloop=PassingLoop())
    session.ready = True
    session.consume("jobs", on_message, "tag-1", dead_letter_queue=dead_letter_queue)
    return session, channel


def deliver(channel: RecordingChannel, delivery_tag: int, message_id: str, body: bytes) -> None:
    method = pika.spec.Basic.Deliver(delivery_tag=delivery_tag)
    channel.deliver(channel, method, pika.BasicProperties(message_id=message_id), body)


def confirm(session: broker.Session, delivery_tag: int) -> None:
    frame = types.SimpleNamespace(method=pika.spec.Basic.Ack(delivery_tag=delivery_tag))
    session._on_delivery_confirmation(frame)


def failing(_tag, _properties, body) -> None:
    raise KeyError(body.decode())


def test_a_delivery_the_callback_fails_on_is_dead_lettered_with_the_error_type(caplog):
    session, channel = consuming_session(failing, dead_letter_queue="jobs.dead")
    with caplog.at_level(logging.DEBUG, logger="virtscale.broker"):
        deliver(channel, 7, "LIC-98765432", b"LIC-12345678")
    [(queue, body, properties)] = channel.published
    assert (queue, body) == ("jobs.dead", b"LIC-12345678")
    assert properties.headers[defaults.REASON_HEADER] == "internal error: KeyError"
    assert "LIC-" not in caplog.text
    assert "#7" in caplog.text
    assert channel.acked == [] and channel.nacked == []
    confirm(session, 1)
    session._connection.ioloop.end_pass()
    assert channel.acked == [(7, "and all before")]


def test_acks_go_out_once_a_pass_and_never_cover_a_delivery_in_hand():
    session, channel = consuming_session(lambda *_args: None)
    for tag in range(1, 9):
        deliver(channel, tag, str(uuid.uuid4()), b"{}")
    loop = session._connection.ioloop
    for tag in (2, 1, 3, 6):
        session.ack(tag)
    session.nack(5)
    assert channel.acked == [], "nothing before the end of the pass"
    loop.end_pass()
    # 1-3 contiguous: one multiple ack; 4 is in hand, so 6 goes alone.
    assert channel.acked == [(3, "and all before"), 6]
    assert channel.nacked == [(5, True)]
    session.ack(4)
    session.ack(8)
    loop.end_pass()
    # 4 closes the gap; 5 (nacked) and 6 (acked alone) are settled: the multiple ack stops at 4.
    assert channel.acked[2:] == [(4, "and all before"), 8]
    session.ack(7)
    loop.end_pass()
    assert channel.acked[4:] == [(7, "and all before")]
    assert not session._delivered and not session._settled_singly, "nothing left to track"


def test_a_stop_sends_the_acks_of_the_pass_before_it_closes():
    session, channel = consuming_session(lambda *_args: None)
    deliver(channel, 1, str(uuid.uuid4()), b"{}")
    session.ack(1)
    session._connection = types.SimpleNamespace(
        ioloop=session._connection.ioloop, is_open=True, close=lambda: channel.acked.append("closed")
    )
    session.stop()
    assert channel.acked == [(1, "and all before"), "closed"]


def test_without_a_dead_letter_queue_a_failed_delivery_is_nacked_never_requeued():
    _session, channel = consuming_session(failing)
    deliver(channel, 3, str(uuid.uuid4()), b"{}")
    assert channel.nacked == [(3, False)]
    assert channel.published == []


def test_a_dead_letter_is_logged_by_its_delivery_tag_unless_its_id_is_a_uuid(caplog):
    session = broker.Session(URL, lambda _session: None, connection_name="virtscale-test")
    session._channel = RecordingChannel()
    with caplog.at_level(logging.WARNING, logger="virtscale.broker"):
        session.dead_letter("jobs.dead", b"x", "bad", "LIC-98765432", lambda _ok: None, delivery_tag=5)
    assert "LIC-" not in caplog.text
    assert "dead-lettering message #5: bad" in caplog.text


# -- the nodes of a cluster ------------------------------------------------------------------------


def free_port() -> int:
    """A port nobody listens on now: a node that is down (its connection is refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def down_url() -> str:
    return f"amqp://guest:s3cret@127.0.0.1:{free_port()}/%2F"


def test_nodes_start_at_the_first_and_hand_over_to_the_next_that_failed():
    nodes = broker.Nodes(["amqp://a/", "amqp://b/", "amqp://c/"])
    assert nodes.current == "amqp://a/"
    nodes.failed("amqp://a/")
    assert nodes.in_order() == ("amqp://b/", "amqp://c/", "amqp://a/")
    nodes.failed("amqp://a/")  # a failure of a node already passed over moves nothing
    assert nodes.current == "amqp://b/"
    nodes.failed("amqp://b/")
    nodes.failed("amqp://c/")
    assert nodes.current == "amqp://a/", "round the ring"
    nodes.worked("amqp://c/")
    assert nodes.current == "amqp://c/"


def test_a_single_url_is_a_cluster_of_one_and_nodes_are_shared_as_they_are():
    nodes = broker.Nodes.of(URL)
    assert nodes.urls == (URL,)
    assert broker.Nodes.of(nodes) is nodes
    nodes.failed(URL)
    assert nodes.current == URL
    assert "s3cret" not in str(broker.Nodes([URL, URL]))


def test_a_session_that_cannot_reach_its_node_moves_the_client_on_to_the_next():
    first, second = down_url(), down_url()
    nodes = broker.Nodes([first, second])
    session = broker.Session(nodes, lambda _session: None, connection_name="virtscale-test")
    assert session.url == first
    with pytest.raises(BrokerUnavailable, match="connection refused"):
        session.run()
    assert nodes.current == second
    assert broker.Session(nodes, lambda _session: None, connection_name="virtscale-test").url == second


def test_a_one_off_call_tries_every_node_and_names_each_one_s_reason():
    first, second = down_url(), down_url()
    with pytest.raises(BrokerUnavailable) as caught:
        broker.queue_counts([first, second], "jobs", "virtscale-test")
    message = str(caught.value)
    assert message.count("connection refused") == 2
    assert first.split("@")[1] in message and second.split("@")[1] in message
    assert "s3cret" not in message


@pytest.mark.parametrize(
    "error",
    [
        pika.exceptions.ProbableAuthenticationError(
            "StreamLostError: (\"Stream connection lost: ConnectionResetError(104, 'Connection reset "
            "by peer')\",)"
        ),
        pika.exceptions.ProbableAccessDeniedError(
            'ConnectionClosedByBroker: (320) "CONNECTION_FORCED - broker forced connection closure '
            "with reason 'shutdown'\""
        ),
    ],
)
def test_a_node_going_down_during_the_handshake_is_an_outage_not_a_refusal(error):
    """pika calls it a probable authentication or vhost error; the next node must still be tried."""
    assert isinstance(classify(error, URL), BrokerUnavailable)
