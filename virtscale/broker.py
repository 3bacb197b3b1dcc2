"""Everything that talks AMQP: connection parameters, topology, confirm-mode sessions, reconnects.

Nothing outside this module imports pika's exceptions: they are turned into
BrokerUnavailable (retry later) or BrokerRefused (fix the configuration).
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable

import pika
import pika.exceptions
import tenacity

from virtscale import defaults, topology_spec
from virtscale.config import redact_url
from virtscale.naming import QueueNames

log = logging.getLogger(__name__)

#: AMQP reply codes after which retrying cannot help: the configuration must change.
#: 403 access refused, 404 not found, 406 precondition failed, 530 not allowed (vhost).
FATAL_REPLY_CODES = frozenset({403, 404, 406, 530})

OnMessage = Callable[[int, pika.BasicProperties, bytes], None]
OnConfirm = Callable[[bool], None]


class BrokerUnavailable(Exception):
    """The broker cannot be reached or the connection dropped: retry after a backoff.

    ``after_ready`` tells whether the session had been working before it was lost,
    so the caller can start its backoff afresh.
    """

    def __init__(self, message: str, after_ready: bool = False):
        super().__init__(message)
        self.after_ready = after_ready


class BrokerRefused(Exception):
    """The broker refused us for good (credentials, permissions, a missing queue, a bad
    argument). Retrying will not help: fix the configuration named in the message and restart."""


def connection_parameters(url: str, connection_name: str = "virtscale") -> pika.URLParameters:
    params = pika.URLParameters(url)
    if "heartbeat" not in url:
        params.heartbeat = defaults.HEARTBEAT
    params.connection_attempts = 1
    params.blocked_connection_timeout = 60
    params.client_properties = {"connection_name": connection_name}
    return params


def classify(exc: BaseException, url: str, after_ready: bool = False) -> Exception:
    """The project's exception for a pika exception."""
    where = redact_url(url)
    if isinstance(
        exc,
        pika.exceptions.ProbableAuthenticationError
        | pika.exceptions.AuthenticationError
        | pika.exceptions.ProbableAccessDeniedError,
    ):
        return BrokerRefused(f"broker at {where} refused the credentials or the vhost: {exc!r}")
    reply_code = getattr(exc, "reply_code", None)
    if reply_code in FATAL_REPLY_CODES:
        text = getattr(exc, "reply_text", str(exc))
        return BrokerRefused(f"broker at {where} refused: {reply_code} {text}")
    return BrokerUnavailable(f"broker at {where} unavailable: {exc!r}", after_ready)


def _blocking_call(url: str, action: Callable[[pika.adapters.blocking_connection.BlockingChannel], object]):
    try:
        connection = pika.BlockingConnection(connection_parameters(url))
    except pika.exceptions.AMQPError as exc:
        raise classify(exc, url) from exc
    try:
        return action(connection.channel())
    except pika.exceptions.AMQPError as exc:
        raise classify(exc, url) from exc
    finally:
        if connection.is_open:
            connection.close()


def declare_topology(url: str, names: QueueNames, delivery_limit: int = defaults.DELIVERY_LIMIT) -> None:
    """Declare the queues of virtscale.topology_spec (idempotent; needs configure rights)."""

    def declare(channel) -> None:
        for queue in topology_spec.queues(names, delivery_limit):
            channel.queue_declare(
                queue.name,
                durable=queue.durable,
                auto_delete=queue.auto_delete,
                arguments=dict(queue.arguments),
            )

    _blocking_call(url, declare)
    log.info("topology ready: %s, %s, %s", names.jobs, names.results, names.dead)


def delete_topology(url: str, names: QueueNames) -> dict[str, int | None]:
    """Delete the queues and every message in them, the job queue first (so nothing is
    dead-lettered into a queue already gone). Returns how many messages each queue held when it
    was deleted, None for a queue that was not there."""

    def delete(channel) -> dict[str, int | None]:
        held: dict[str, int | None] = {}
        for queue in reversed(topology_spec.queues(names)):
            try:
                channel.queue_declare(queue.name, passive=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != 404:
                    raise
                held[queue.name] = None
                channel = channel.connection.channel()  # the broker closed the one it refused
                continue
            held[queue.name] = channel.queue_delete(queue.name).method.message_count
        return held

    return _blocking_call(url, delete)


def queue_counts(url: str, queue: str) -> tuple[int, int]:
    """(ready messages, consumers) of ``queue`` by a passive declare; needs no management API."""

    def inspect(channel) -> tuple[int, int]:
        frame = channel.queue_declare(queue, passive=True)
        return frame.method.message_count, frame.method.consumer_count

    return _blocking_call(url, inspect)


class Session:
    """One connection with one confirm-mode channel, driven by pika's asynchronous I/O loop.

    All methods except ``threadsafe`` and ``request_stop_threadsafe`` run on the loop's
    thread. ``run`` blocks until the session ends: it returns after ``stop`` and raises
    BrokerUnavailable or BrokerRefused otherwise.
    """

    def __init__(
        self,
        url: str,
        on_ready: Callable[[Session], None],
        *,
        queues: tuple[str, ...] = (),
        prefetch: int = 0,
        connection_name: str = "virtscale",
    ):
        self.url = url
        self._on_ready = on_ready
        self._connection_name = connection_name
        self._queues = queues
        self._prefetch = prefetch
        self._connection: pika.SelectConnection | None = None
        self._channel = None
        self._failure: Exception | None = None
        self._stopping = False
        self.ready = False
        self._next_seq = 1
        self._pending: collections.OrderedDict[int, tuple[str | None, OnConfirm]] = collections.OrderedDict()
        self._returned: set[str] = set()
        self._consumer_tag: str | None = None

    # -- lifecycle -------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._connection = pika.SelectConnection(
                connection_parameters(self.url, self._connection_name),
                on_open_callback=self._on_connection_open,
                on_open_error_callback=self._on_open_error,
                on_close_callback=self._on_connection_closed,
            )
        except pika.exceptions.AMQPError as exc:
            raise classify(exc, self.url) from exc
        self._connection.ioloop.start()
        self._fail_pending()
        if self._failure is not None:
            raise self._failure
        if not self._stopping:
            raise BrokerUnavailable("connection ended unexpectedly", self.ready)

    def stop(self) -> None:
        """Close the channel and the connection cleanly; ``run`` then returns."""
        if self._stopping:
            return
        self._stopping = True
        if self._connection is None:
            return
        if self._connection.is_open:
            self._connection.close()
        elif not self._connection.is_closing:
            self._connection.ioloop.stop()

    def threadsafe(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the I/O loop's thread (from any thread or a signal handler)."""
        connection = self._connection
        if connection is None:
            return
        try:
            connection.ioloop.add_callback_threadsafe(callback)
        except (RuntimeError, AttributeError):
            log.debug("loop already closed; callback dropped")

    def call_later(self, delay: float, callback: Callable[[], None]) -> object:
        return self._connection.ioloop.call_later(delay, callback)

    def remove_timeout(self, handle: object) -> None:
        self._connection.ioloop.remove_timeout(handle)

    @property
    def usable(self) -> bool:
        return self.ready and not self._stopping and self._channel is not None and self._channel.is_open

    # -- publishing ------------------------------------------------------------------

    def publish(
        self,
        routing_key: str,
        body: bytes,
        on_confirm: OnConfirm,
        *,
        message_id: str | None = None,
        headers: dict | None = None,
    ) -> None:
        """Publish persistently to the default exchange; ``on_confirm(ok)`` runs when the broker
        confirms (ok) or nacks / returns it as unroutable (not ok), or the session ends (not ok)."""
        # delivery_mode 2 = persistent (pika 1.2, Debian 12's, in the guest, has no enum for it).
        properties = pika.BasicProperties(
            delivery_mode=2,
            content_type="application/json",
            message_id=message_id,
            headers=headers,
        )
        seq = self._next_seq
        self._next_seq += 1
        self._pending[seq] = (message_id, on_confirm)
        self._channel.basic_publish("", routing_key, body, properties, mandatory=True)

    @property
    def unconfirmed(self) -> int:
        return len(self._pending)

    def _on_delivery_confirmation(self, frame) -> None:
        method = frame.method
        ok = isinstance(method, pika.spec.Basic.Ack)
        if method.multiple:
            tags = [tag for tag in self._pending if tag <= method.delivery_tag]
        else:
            tags = [method.delivery_tag] if method.delivery_tag in self._pending else []
        for tag in tags:
            message_id, on_confirm = self._pending.pop(tag)
            returned = message_id is not None and message_id in self._returned
            if returned:
                self._returned.discard(message_id)
            on_confirm(ok and not returned)

    def _on_return(self, _channel, method, properties, _body) -> None:
        log.warning("message %s returned as unroutable: %s", properties.message_id, method.reply_text)
        if properties.message_id is not None:
            self._returned.add(properties.message_id)

    def _fail_pending(self) -> None:
        pending, self._pending = self._pending, collections.OrderedDict()
        for _message_id, on_confirm in pending.values():
            on_confirm(False)

    # -- consuming -------------------------------------------------------------------

    def consume(self, queue: str, on_message: OnMessage, consumer_tag: str | None = None) -> None:
        def deliver(_channel, method, properties, body) -> None:
            on_message(method.delivery_tag, properties, body)

        self._consumer_tag = self._channel.basic_consume(queue, deliver, consumer_tag=consumer_tag)

    def cancel(self, on_cancelled: Callable[[], None] | None = None) -> None:
        """Stop receiving new deliveries; those in hand can still be acked."""
        if self._consumer_tag is None or not self.usable:
            if on_cancelled:
                on_cancelled()
            return
        tag, self._consumer_tag = self._consumer_tag, None
        self._channel.basic_cancel(tag, callback=lambda _frame: on_cancelled and on_cancelled())

    def ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self._channel.basic_ack(delivery_tag, multiple=multiple)

    def nack(self, delivery_tag: int, requeue: bool = True) -> None:
        self._channel.basic_nack(delivery_tag, requeue=requeue)

    # -- pika callbacks --------------------------------------------------------------

    def _on_connection_open(self, connection) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_open_error(self, _connection, error) -> None:
        self._failure = (
            classify(error, self.url) if isinstance(error, Exception) else BrokerUnavailable(str(error))
        )
        self._connection.ioloop.stop()

    def _on_connection_closed(self, _connection, reason) -> None:
        self._channel = None
        if not self._stopping and self._failure is None:
            self._failure = classify(reason, self.url, self.ready)
        self._connection.ioloop.stop()

    def _on_channel_open(self, channel) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(
            self._on_delivery_confirmation,
            callback=lambda _f: self._check_queues(list(self._queues)),
        )

    def _check_queues(self, remaining: list[str]) -> None:
        # Passive declares: the topology is made by an operator (make broker), so a
        # missing queue is a configuration error, not something to create silently.
        if remaining:
            queue = remaining.pop(0)
            self._channel.queue_declare(
                queue, passive=True, callback=lambda _frame: self._check_queues(remaining)
            )
        elif self._prefetch:
            self._channel.basic_qos(prefetch_count=self._prefetch, callback=lambda _f: self._became_ready())
        else:
            self._became_ready()

    def _became_ready(self) -> None:
        self.ready = True
        log.info("connected to %s", redact_url(self.url))
        self._on_ready(self)

    def _on_channel_closed(self, _channel, reason) -> None:
        self._channel = None
        if not self._stopping and self._failure is None:
            failure = classify(reason, self.url, self.ready)
            if isinstance(failure, BrokerRefused) and getattr(reason, "reply_code", None) == 404:
                failure = BrokerRefused(f"{failure}; declare the queues first (make broker)")
            self._failure = failure
        if self._connection.is_open:
            self._connection.close()


def keep_running(
    run_session: Callable[[], None],
    stop_requested: threading.Event,
    what: str,
) -> None:
    """Run sessions until one ends cleanly or a stop is requested, reconnecting with capped,
    jittered exponential backoff. The backoff starts afresh after a session that was working.
    BrokerRefused propagates: the caller exits with its message."""

    def log_retry(state: tenacity.RetryCallState) -> None:
        log.warning(
            "%s: %s; retrying in %.1f s (attempt %d)",
            what,
            state.outcome.exception(),
            state.next_action.sleep,
            state.attempt_number,
        )

    def retryable(exc: BaseException) -> bool:
        return isinstance(exc, BrokerUnavailable) and not exc.after_ready

    while not stop_requested.is_set():
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(retryable),
            wait=tenacity.wait_exponential_jitter(
                initial=defaults.RECONNECT_INITIAL, max=defaults.RECONNECT_MAX
            ),
            stop=lambda _state: stop_requested.is_set(),
            sleep=stop_requested.wait,
            before_sleep=log_retry,
            reraise=True,
        )
        try:
            retrying(run_session)
            return
        except BrokerUnavailable as exc:
            if stop_requested.is_set():
                return
            log.warning("%s: connection lost (%s); reconnecting", what, exc)
            stop_requested.wait(defaults.RECONNECT_INITIAL)
