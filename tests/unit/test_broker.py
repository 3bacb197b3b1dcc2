"""virtscale.broker without a broker: pika's errors told in words and mapped to ours, never raised
as they are; one warning per failed connection attempt."""

import logging
import socket
import threading

import pika.exceptions
import pytest
from pika.adapters.utils.connection_workflow import (
    AMQPConnectionWorkflowFailed,
    AMQPConnectorSocketConnectError,
)

from virtscale import broker
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
        connection_parameters(url)
    assert "s3cret" not in str(caught.value)


def test_connections_carry_their_name():
    params = connection_parameters(URL, "virtscale-worker vm-1 licenses")
    assert params.client_properties["connection_name"] == "virtscale-worker vm-1 licenses"


def test_keep_running_logs_one_warning_with_the_reason_per_failed_attempt(caplog, monkeypatch):
    monkeypatch.setattr(broker.defaults, "RECONNECT_INITIAL", 0.01)
    monkeypatch.setattr(broker.defaults, "RECONNECT_MAX", 0.02)
    monkeypatch.setattr(broker, "RECONNECT_JITTER", 0.01)
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
