"""Everything that talks AMQP: connection parameters, topology, confirm-mode sessions, reconnects.

Nothing outside this module imports pika's exceptions: they are turned into
BrokerUnavailable (retry later) or BrokerRefused (fix the configuration).
"""

from __future__ import annotations

import collections
import logging
import ssl
import threading
import uuid
from collections.abc import Callable, Iterable

import pika
import pika.exceptions
import tenacity
from pika.adapters.utils.connection_workflow import AMQPConnectionWorkflowFailed

from virtscale import defaults, pika_writes, topology_spec
from virtscale.backoff import reconnect_wait
from virtscale.config import redact_url
from virtscale.messages import loggable_id
from virtscale.naming import QueueNames

log = logging.getLogger(__name__)

pika_writes.install()

#: AMQP reply codes after which retrying cannot help: the configuration must change.
#: 403 access refused, 404 not found, 406 precondition failed, 530 not allowed (vhost).
FATAL_REPLY_CODES = frozenset({403, 404, 406, 530})

#: pika turns a connection that ends during its handshake into a "probable" authentication or
#: vhost error, keeping only the text of what ended it. A lost stream, or a close with 320
#: CONNECTION_FORCED, is a node going down while we connected (a cluster node stopping), not a
#: refusal: retried on the next node instead of ending the process.
HANDSHAKE_OUTAGES = ("StreamLostError", "(320)")

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


class Nodes:
    """The AMQP URLs of one broker: a single node, or the nodes of one cluster (which share their
    users and queues). A client connects to one and fails over to the next: each connection goes to
    the node that worked last, and a node that could not be reached, or dropped a session, hands
    over to the one after it. Kept by one client for all its sessions, on one thread at a time."""

    def __init__(self, urls: str | Iterable[str], ca_file: str | None = None):
        self.urls = (urls,) if isinstance(urls, str) else tuple(urls)
        if not self.urls:
            raise ValueError("no broker URL")
        #: The CA certificates that amqps:// nodes' certificates are verified against (None: the
        #: system's).
        self.ca_file = ca_file
        self._current = 0

    @classmethod
    def of(cls, urls: BrokerUrls) -> Nodes:
        """``urls`` as Nodes: a Nodes is shared as it is (its choice of node goes with it)."""
        return urls if isinstance(urls, Nodes) else cls(urls)

    @property
    def current(self) -> str:
        """The URL the next connection tries first."""
        return self.urls[self._current]

    def in_order(self) -> tuple[str, ...]:
        """Every URL, the current one first, then the others in their turn."""
        return self.urls[self._current :] + self.urls[: self._current]

    def worked(self, url: str) -> None:
        self._current = self.urls.index(url)

    def failed(self, url: str) -> None:
        """``url`` was unreachable or lost its session: the next connection tries the node after it."""
        if self.current == url:
            self._current = (self._current + 1) % len(self.urls)

    def __str__(self) -> str:
        return ", ".join(redact_url(url) for url in self.urls)


#: One broker URL, several (the nodes of one cluster), or a client's Nodes.
BrokerUrls = str | Iterable[str] | Nodes


def connection_parameters(
    url: str, connection_name: str, heartbeat: int | None = None, ca_file: str | None = None
) -> pika.URLParameters:
    """pika's parameters for ``url``, named ``connection_name`` in the management UI; ``heartbeat``
    overrides the URL's. An amqps:// URL verifies the broker's certificate and host name against
    ``ca_file`` (else the system's CAs). Raises BrokerRefused for a URL pika cannot use (a bad
    port or query option) or a CA file that cannot be read."""
    try:
        params = pika.URLParameters(url)
    except (ValueError, TypeError, SyntaxError) as exc:
        raise BrokerRefused(f"broker URL {redact_url(url)} is not usable: {exc}") from None
    if url.startswith("amqps:"):
        params.ssl_options = tls_options(params.host, ca_file)
    if heartbeat is not None:
        params.heartbeat = heartbeat
    elif "heartbeat" not in url:
        params.heartbeat = defaults.HEARTBEAT
    params.connection_attempts = 1
    params.blocked_connection_timeout = defaults.BLOCKED_CONNECTION_TIMEOUT
    params.client_properties = {"connection_name": connection_name}
    return params


def tls_options(host: str, ca_file: str | None) -> pika.SSLOptions:
    """TLS that verifies the broker: its certificate chains to ``ca_file`` (or a system CA) and
    names ``host``; pika's own default for amqps:// verifies nothing."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise BrokerRefused(f"CA file {ca_file!r} is not usable: {exc}") from None
    return pika.SSLOptions(context, server_hostname=host)


def check_url(url: str, ca_file: str | None = None) -> None:
    """Raise BrokerRefused now, at start-up, for a URL that no connection attempt could use."""
    connection_parameters(url, "url check", ca_file=ca_file)


def _innermost(exc: BaseException) -> BaseException:
    """The error at the bottom of pika's wrappers (connection workflow, connector phases)."""
    while True:
        if isinstance(exc, AMQPConnectionWorkflowFailed) and exc.exceptions:
            exc = exc.exceptions[-1]
        elif isinstance(getattr(exc, "exception", None), BaseException):  # a connector phase error
            exc = exc.exception
        elif (
            type(exc) is pika.exceptions.AMQPConnectionError
            and exc.args
            and isinstance(exc.args[0], BaseException)
        ):
            exc = exc.args[0]
        else:
            return exc


def describe(exc: BaseException) -> str:
    """Why a connection failed, in words (``connection refused``, ``320 CONNECTION_FORCED ...``)."""
    exc = _innermost(exc)
    reply_code = getattr(exc, "reply_code", None)
    if reply_code is not None:
        return f"{reply_code} {getattr(exc, 'reply_text', '')}".strip()
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    if isinstance(exc, pika.exceptions.AMQPHeartbeatTimeout):
        return "no heartbeat from the broker"
    if isinstance(exc, pika.exceptions.IncompatibleProtocolError):
        return "the server there does not speak AMQP 0-9-1 (wrong port?)"
    return str(exc) or type(exc).__name__


def classify(exc: BaseException, url: str, after_ready: bool = False) -> Exception:
    """The project's exception for a pika exception."""
    where = redact_url(url)
    inner = _innermost(exc)
    probable = pika.exceptions.ProbableAuthenticationError | pika.exceptions.ProbableAccessDeniedError
    if isinstance(inner, probable) and any(mark in str(inner) for mark in HANDSHAKE_OUTAGES):
        return BrokerUnavailable(
            f"broker at {where} unavailable: connection lost while connecting", after_ready
        )
    if isinstance(inner, ssl.SSLCertVerificationError):
        return BrokerRefused(
            f"broker at {where} is not trusted: {inner.verify_message}; give the CA that signed its "
            "certificate (--ca-file), or connect by a name the certificate holds"
        )
    if isinstance(inner, probable | pika.exceptions.AuthenticationError):
        return BrokerRefused(f"broker at {where} refused the credentials or the vhost: {describe(inner)}")
    reply_code = getattr(inner, "reply_code", None)
    if reply_code in FATAL_REPLY_CODES:
        return BrokerRefused(f"broker at {where} refused: {describe(inner)}")
    return BrokerUnavailable(f"broker at {where} unavailable: {describe(inner)}", after_ready)


def _blocking_call(
    urls: BrokerUrls,
    action: Callable[[pika.adapters.blocking_connection.BlockingChannel], object],
    connection_name: str,
):
    """``action(channel)`` on the first node that answers; BrokerUnavailable (every node's reason)
    when none does. A refusal ends it at once: the nodes of one cluster would all refuse."""
    nodes = Nodes.of(urls)
    failures = []
    for url in nodes.in_order():
        try:
            result = _blocking_call_on(url, action, connection_name, nodes.ca_file)
        except BrokerUnavailable as exc:
            nodes.failed(url)
            failures.append(str(exc))
            continue
        nodes.worked(url)
        return result
    raise BrokerUnavailable("; ".join(failures))


def _blocking_call_on(
    url: str,
    action: Callable[[pika.adapters.blocking_connection.BlockingChannel], object],
    connection_name: str,
    ca_file: str | None = None,
):
    try:
        connection = pika.BlockingConnection(connection_parameters(url, connection_name, ca_file=ca_file))
    except pika.exceptions.AMQPError as exc:
        raise classify(exc, url) from exc
    try:
        return action(connection.channel())
    except pika.exceptions.AMQPError as exc:
        raise classify(exc, url) from exc
    finally:
        try:
            if connection.is_open:
                connection.close()
        except pika.exceptions.AMQPError as exc:  # the broker went away meanwhile: nothing to close
            log.debug("closing %s: %s", redact_url(url), describe(exc))


def declare_topology(
    urls: BrokerUrls,
    names: QueueNames,
    delivery_limit: int,
    connection_name: str,
) -> None:
    """Declare the queues of virtscale.topology_spec (idempotent; needs configure rights)."""

    def declare(channel) -> None:
        for queue in topology_spec.queues(names, delivery_limit):
            channel.queue_declare(
                queue.name,
                durable=queue.durable,
                auto_delete=queue.auto_delete,
                arguments=dict(queue.arguments),
            )
        for exchange in topology_spec.exchanges(names):
            channel.exchange_declare(exchange.name, exchange.type, durable=exchange.durable)
            for queue in exchange.bound:
                channel.queue_bind(queue, exchange.name, routing_key=queue)

    _blocking_call(urls, declare, connection_name)
    log.info(
        "topology ready: %s, %s, %s, exchange %s",
        names.jobs,
        names.results,
        names.dead,
        names.results_exchange,
    )


def delete_topology(urls: BrokerUrls, names: QueueNames, connection_name: str) -> dict[str, int | None]:
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
        for exchange in topology_spec.exchanges(names):
            channel.exchange_delete(exchange.name)  # idempotent: one not there is no error
        return held

    return _blocking_call(urls, delete, connection_name)


def queue_counts(urls: BrokerUrls, queue: str, connection_name: str) -> tuple[int, int]:
    """(ready messages, consumers) of ``queue`` by a passive declare; needs no management API."""

    def inspect(channel) -> tuple[int, int]:
        frame = channel.queue_declare(queue, passive=True)
        return frame.method.message_count, frame.method.consumer_count

    return _blocking_call(urls, inspect, connection_name)


#: Messages at most that `peek_headers` reads from a queue.
PEEK_LIMIT = 100_000


def peek_headers(urls: BrokerUrls, queue: str, header: str, connection_name: str) -> list[object]:
    """The ``header`` of each message now in ``queue`` (None where absent), read without taking
    them: none is acked, so the broker puts them all back when the connection closes. At most
    PEEK_LIMIT messages; needs the right to read ``queue``."""

    def peek(channel) -> list[object]:
        values = []
        while len(values) < PEEK_LIMIT:
            method, properties, _body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            values.append((properties.headers or {}).get(header))
        return values

    return _blocking_call(urls, peek, connection_name)


class Session:
    """One connection with one confirm-mode channel, driven by pika's asynchronous I/O loop, to the
    current node of ``urls`` (see Nodes; a session that fails moves the client on to the next).

    All methods except ``threadsafe`` run on the loop's thread. ``run`` blocks until the
    session ends: it returns after ``stop`` and raises BrokerUnavailable or BrokerRefused
    otherwise. Once the channel is gone, acks and publishes are no-ops (the broker redelivers
    what was not acked; publishes not confirmed get ``on_confirm(False)`` when ``run`` ends).
    """

    def __init__(
        self,
        urls: BrokerUrls,
        on_ready: Callable[[Session], None],
        *,
        queues: tuple[str, ...] = (),
        prefetch: int = 0,
        connection_name: str,
        heartbeat: int | None = None,
    ):
        self.nodes = Nodes.of(urls)
        self.url = self.nodes.current
        self._heartbeat = heartbeat
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
        #: The consumer's queue and delivery callback, to re-subscribe after a prefetch change.
        self._subscription: tuple[str, Callable] | None = None
        #: A prefetch change is re-subscribing the consumer; a cancel meanwhile waits for it.
        self._resizing = False
        self._after_resize: Callable[[], None] | None = None
        #: Acks go out once per pass of the I/O loop: the deliveries of this channel in order,
        #: not yet settled on the wire; those the caller acked since the last pass (a pass is
        #: due while there are any); those acked or nacked on their own (out of order) and still
        #: in that queue.
        self._delivered: collections.deque[int] = collections.deque()
        self._to_ack: list[int] = []
        self._settled_singly: set[int] = set()

    # -- lifecycle -------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except BrokerUnavailable:
            self.nodes.failed(self.url)
            raise

    def _run(self) -> None:
        try:
            self._connection = pika.SelectConnection(
                connection_parameters(self.url, self._connection_name, self._heartbeat, self.nodes.ca_file),
                on_open_callback=self._on_connection_open,
                on_open_error_callback=self._on_open_error,
                on_close_callback=self._on_connection_closed,
            )
        except pika.exceptions.AMQPError as exc:
            raise classify(exc, self.url) from exc
        try:
            self._connection.ioloop.start()
        except pika.exceptions.AMQPError as exc:  # raised through the loop by a pika callback
            self._failure = self._failure or classify(exc, self.url, self.ready)
        finally:
            # Closed, the loop drops callbacks handed to it later (threadsafe) and frees its sockets.
            self._connection.ioloop.close()
        self._fail_pending()
        if self._failure is not None:
            raise self._failure
        if not self._stopping:
            raise BrokerUnavailable(f"broker at {redact_url(self.url)}: connection ended", self.ready)

    def stop(self) -> None:
        """Close the channel and the connection cleanly; ``run`` then returns."""
        if self._stopping:
            return
        self._stopping = True
        self._send_acks()
        if self._connection.is_open:
            self._connection.close()
        elif not self._connection.is_closing:
            self._connection.ioloop.stop()

    def threadsafe(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the I/O loop's thread (from any thread or a signal handler).
        After the session has ended the callback is dropped: it belonged to that session."""
        connection = self._connection
        if connection is not None:
            connection.ioloop.add_callback_threadsafe(callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> object:
        return self._connection.ioloop.call_later(delay, callback)

    def remove_timeout(self, handle: object) -> None:
        self._connection.ioloop.remove_timeout(handle)

    @property
    def usable(self) -> bool:
        return self.ready and not self._stopping and self._channel_open

    @property
    def _channel_open(self) -> bool:
        return self._channel is not None and self._channel.is_open

    def _on_channel(self, what: str, action: Callable[[object], object]) -> None:
        """``action(channel)`` if the channel is open. A channel closed meanwhile means the session
        is ending, which ``run`` reports; here it only makes the action moot."""
        if not self._channel_open:
            log.debug("%s skipped: the channel is closed", what)
            return
        try:
            action(self._channel)
        except pika.exceptions.AMQPError as exc:
            log.debug("%s skipped: %s", what, describe(exc))

    # -- publishing ------------------------------------------------------------------

    def publish(
        self,
        routing_key: str,
        body: bytes,
        on_confirm: OnConfirm,
        *,
        message_id: str | None = None,
        headers: dict | None = None,
        exchange: str = "",
        user_id: str | None = None,
    ) -> None:
        """Publish persistently to ``exchange`` (default: the default exchange); ``on_confirm(ok)``
        runs when the broker confirms (ok) or nacks / returns it as unroutable (not ok), or the
        session ends (not ok). ``user_id``, when given, must be the login's user name: the broker
        checks it, so a consumer can trust it to name who published."""
        # delivery_mode 2 = persistent (pika 1.2, Debian 12's, in the guest, has no enum for it).
        properties = pika.BasicProperties(
            delivery_mode=2,
            content_type="application/json",
            message_id=message_id,
            headers=headers,
            user_id=user_id,
        )
        seq = self._next_seq
        self._next_seq += 1
        self._pending[seq] = (message_id, on_confirm)
        self._on_channel(
            f"publish of {loggable_id(message_id)}",
            lambda channel: channel.basic_publish(exchange, routing_key, body, properties, mandatory=True),
        )

    def dead_letter(
        self,
        queue: str,
        body: bytes,
        reason: str,
        message_id: str | None,
        settle: OnConfirm,
        headers: dict | None = None,
        *,
        delivery_tag: int | None = None,
        exchange: str = "",
        user_id: str | None = None,
    ) -> None:
        """Move a message that can never be processed to the dead-letter ``queue``, its body
        unchanged and ``reason`` in the defaults.REASON_HEADER header (plus ``headers``).
        ``settle(ok)`` then acks the original (ok: the copy is safe) or requeues it (not ok).
        ``exchange`` and ``user_id`` as for ``publish``."""
        log.warning("dead-lettering message %s: %s", loggable_id(message_id, delivery_tag), reason)
        publish_headers = {defaults.REASON_HEADER: reason, **(headers or {})}
        self.publish(
            queue,
            body,
            settle,
            message_id=message_id,
            headers=publish_headers,
            exchange=exchange,
            user_id=user_id,
        )

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
        log.warning(
            "message %s returned as unroutable: %s", loggable_id(properties.message_id), method.reply_text
        )
        if properties.message_id is not None:
            self._returned.add(properties.message_id)

    def _fail_pending(self) -> None:
        pending, self._pending = self._pending, collections.OrderedDict()
        for _message_id, on_confirm in pending.values():
            on_confirm(False)

    # -- consuming -------------------------------------------------------------------

    def consume(
        self,
        queue: str,
        on_message: OnMessage,
        consumer_tag: str,
        *,
        dead_letter_queue: str | None = None,
        dead_letter_via: tuple[str, str | None] = ("", None),
    ) -> None:
        """Deliveries from ``queue`` to ``on_message``, under ``consumer_tag`` (which names the
        consumer in the management UI). A delivery ``on_message`` fails on is dead-lettered (to
        ``dead_letter_queue`` with the reason, through the exchange and with the user_id of
        ``dead_letter_via``; else by a nack to the queue's own dead-letter exchange) instead of
        ending the I/O loop and with it the process."""

        def deliver(_channel, method, properties, body) -> None:
            self._delivered.append(method.delivery_tag)
            try:
                on_message(method.delivery_tag, properties, body)
            except Exception as exc:  # the last resort: a bug must not kill the consumer
                self._delivery_failed(
                    method.delivery_tag, properties, body, exc, dead_letter_queue, dead_letter_via
                )

        def start(channel) -> None:
            self._subscription = (queue, deliver)
            self._consumer_tag = channel.basic_consume(queue, deliver, consumer_tag=consumer_tag)

        self._on_channel(f"consuming from {queue}", start)

    def _delivery_failed(
        self,
        delivery_tag: int,
        properties: pika.BasicProperties,
        body: bytes,
        exc: Exception,
        dead_letter_queue: str | None,
        dead_letter_via: tuple[str, str | None] = ("", None),
    ) -> None:
        """Log the error's type (its text could quote the body) and never redeliver the message."""
        reason = f"internal error: {type(exc).__name__}"
        log.error("delivery %s: %s", loggable_id(properties.message_id, delivery_tag), reason)
        if dead_letter_queue is None:
            self.nack(delivery_tag, requeue=False)
            return

        def settle(ok: bool) -> None:
            if ok:
                self.ack(delivery_tag)
            else:
                self.nack(delivery_tag, requeue=False)

        exchange, user_id = dead_letter_via
        self.dead_letter(
            dead_letter_queue,
            body,
            reason,
            properties.message_id,
            settle,
            delivery_tag=delivery_tag,
            exchange=exchange,
            user_id=user_id,
        )

    def cancel(self, on_cancelled: Callable[[], None]) -> None:
        """Stop receiving new deliveries, then ``on_cancelled()``; those in hand can still be acked."""
        if self._resizing:  # between the cancel and the consume of a prefetch change
            self._consumer_tag, self._after_resize = None, on_cancelled
            return
        if self._consumer_tag is None or not self.usable:
            on_cancelled()
            return
        tag, self._consumer_tag = self._consumer_tag, None
        self._on_channel(
            f"cancel of {tag}", lambda channel: channel.basic_cancel(tag, callback=lambda _f: on_cancelled())
        )

    def set_prefetch(self, count: int, consumer_tag: str) -> None:
        """A new prefetch count, for this channel and the ones after a reconnect. RabbitMQ applies
        a basic.qos only to consumers that start after it (and quorum queues refuse a channel-wide
        one), so the consumer re-subscribes, under a new ``consumer_tag`` (RabbitMQ 3.10's channel
        crashed on a quorum-queue delivery to a tag taken again); what it holds stays in hand and
        is acked as usual, what was on its way to the old consumer goes back to the queue."""
        self._prefetch = count
        self._on_channel(
            f"prefetch {count}",
            lambda channel: channel.basic_qos(
                prefetch_count=count, callback=lambda _f: self._resubscribe(consumer_tag)
            ),
        )

    def _resubscribe(self, new_tag: str) -> None:
        if self._consumer_tag is None or self._subscription is None or self._resizing or not self.usable:
            return
        tag, (queue, deliver) = self._consumer_tag, self._subscription
        self._resizing = True

        def again(_frame) -> None:
            self._resizing = False
            if self._after_resize is not None:  # a cancel came meanwhile: it has its way
                cancelled, self._after_resize = self._after_resize, None
                cancelled()
            elif self.usable:
                self._consumer_tag = self._channel.basic_consume(queue, deliver, consumer_tag=new_tag)

        self._channel.basic_cancel(tag, callback=again)

    def ack(self, delivery_tag: int) -> None:
        """Ack a delivery of ``consume``'s. The ack goes out at the end of this pass of the I/O
        loop, together with the others of the pass: as one multiple ack for those with no
        unsettled delivery before them (the usual case), one by one for the rest. Fewer frames
        for the broker, and for the worker one send for the acks a burst of confirms settles."""
        if not self._channel_open:
            log.debug("ack of delivery %d skipped: the channel is closed", delivery_tag)
            return
        if not self._to_ack:
            self._connection.ioloop.call_later(0, self._send_acks)
        self._to_ack.append(delivery_tag)

    def nack(self, delivery_tag: int, requeue: bool = True) -> None:
        self._settled_singly.add(delivery_tag)
        self._on_channel(
            f"nack of delivery {delivery_tag}",
            lambda channel: channel.basic_nack(delivery_tag, requeue=requeue),
        )

    def _send_acks(self) -> None:
        """A multiple ack up to the last acked delivery that has none unsettled before it (it
        covers only deliveries still unacked on the channel: those acked here, as the nacked
        and singly acked ones are settled already); single acks for the acked ones after a
        delivery still in hand."""
        acked, self._to_ack = set(self._to_ack), []
        if not acked or not self._channel_open:
            return
        delivered, singly = self._delivered, self._settled_singly
        up_to = None
        while delivered and (delivered[0] in acked or delivered[0] in singly):
            tag = delivered.popleft()
            if tag in acked:
                acked.discard(tag)
                up_to = tag
            else:
                singly.discard(tag)
        if up_to is not None:
            self._on_channel(
                f"ack of deliveries up to {up_to}", lambda channel: channel.basic_ack(up_to, multiple=True)
            )
        for tag in sorted(acked):
            singly.add(tag)
            self._on_channel(f"ack of delivery {tag}", lambda channel, tag=tag: channel.basic_ack(tag))

    # -- pika callbacks --------------------------------------------------------------

    def _on_connection_open(self, connection) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_open_error(self, _connection, error: BaseException) -> None:
        self._failure = classify(error, self.url)
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
        log.info("connected to %s as %r", redact_url(self.url), self._connection_name)
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


#: The lease queue's argument that names its holder, so that the management API and UI show it.
HOLDER_ARGUMENT = "x-virtscale-holder"

#: Reply codes of a lease claimed or checked in vain: another connection holds the queue (405), or
#: it is gone (404). Either way this connection does not hold it; neither is a configuration error.
LEASE_NOT_HELD = frozenset({404, 405})


class LeaseSession(Session):
    """One connection that holds an exclusive queue as a lease, or waits until it can.

    An exclusive queue belongs to the connection that declared it, and no other connection may
    declare it until the broker deletes it, which it does when that connection ends: closed, or
    found dead by its heartbeat. So the connection that declared the queue holds the lease.

    While another connection holds it, a probe every ``probe_interval`` seconds publishes an empty
    mandatory message to the queue's name: the broker returns it once no such queue exists, and the
    session then declares the queue. (Declaring a queue held elsewhere would be refused with a
    channel error, which the broker logs as an error; a returned message is none.) While holding
    it, a check every ``check_interval`` seconds declares it passively, which only the holder's
    connection can do.

    Callbacks, on the I/O loop's thread: ``on_confirmed(sent_at)`` after the claim and after each
    check, with the clock time the confirmed request was sent; ``on_standby()`` after a probe or
    claim that found the lease held elsewhere; ``on_lost(reason)`` when a check fails or the
    connection ends while holding it. ``run`` and ``stop`` are Session's.
    """

    def __init__(
        self,
        urls: BrokerUrls,
        queue: str,
        *,
        holder: str,
        connection_name: str,
        heartbeat: int,
        check_interval: float,
        probe_interval: float,
        on_confirmed: Callable[[float], None],
        on_standby: Callable[[], None],
        on_lost: Callable[[str], None],
        clock: Callable[[], float],
    ):
        super().__init__(
            urls, lambda _session: self._probe(), connection_name=connection_name, heartbeat=heartbeat
        )
        self.queue = queue
        self.holding = False
        self._arguments = {"x-max-length": 0, HOLDER_ARGUMENT: holder}  # probes are dropped at once
        self._check_interval = check_interval
        self._probe_interval = probe_interval
        self._on_confirmed = on_confirmed
        self._on_standby = on_standby
        self._on_lost = on_lost
        self._clock = clock
        #: Counts the channels opened, so that a timer set on one does nothing on the next.
        self._channels = 0

    def _later(self, delay: float, step: Callable[[], None]) -> None:
        channel = self._channels
        self.call_later(delay, lambda: step() if channel == self._channels and self.usable else None)

    def _probe(self) -> None:
        def probed(routed: bool) -> None:
            if not self.usable:
                return  # the session ended: this says nothing about the lease
            if routed:
                self._on_standby()
                self._later(self._probe_interval, self._probe)
            else:
                self._claim()

        self.publish(self.queue, b"", probed, message_id=str(uuid.uuid4()))

    def _claim(self) -> None:
        sent_at = self._clock()
        self._on_channel(
            f"claim of {self.queue}",
            lambda channel: channel.queue_declare(
                self.queue, exclusive=True, arguments=self._arguments, callback=lambda _f: self._held(sent_at)
            ),
        )

    def _check(self) -> None:
        sent_at = self._clock()
        self._on_channel(
            f"check of {self.queue}",
            lambda channel: channel.queue_declare(
                self.queue, passive=True, callback=lambda _f: self._held(sent_at)
            ),
        )

    def _held(self, sent_at: float) -> None:
        self.holding = True
        self._on_confirmed(sent_at)
        self._later(self._check_interval, self._check)

    def _became_ready(self) -> None:
        # Said at DEBUG: what the holder says next (leading, or a standby) is the news.
        self.ready = True
        log.debug("connected to %s as %r", redact_url(self.url), self._connection_name)
        self._on_ready(self)

    def _on_return(self, _channel, _method, properties, _body) -> None:
        # A probe coming back is the news that the lease is free, not a problem to log.
        self._returned.add(properties.message_id)

    def _lose(self, reason: str) -> None:
        if self.holding:
            self.holding = False
            self._on_lost(reason)

    def _on_channel_open(self, channel) -> None:
        self._channels += 1
        super()._on_channel_open(channel)

    def _on_channel_closed(self, channel, reason) -> None:
        code = getattr(reason, "reply_code", None)
        if code in LEASE_NOT_HELD and not self._stopping and self._connection.is_open:
            # Another connection won the race to claim it, or it was deleted: probe again on a
            # new channel (the broker closed this one).
            self._channel = None
            self._fail_pending()  # a new channel numbers its confirms from 1 again
            self._next_seq = 1
            was_holding = self.holding
            self._lose(describe(reason))
            if not was_holding:
                self._on_standby()
            self._connection.channel(on_open_callback=self._on_channel_open)
            return
        self._lose(describe(reason))
        if code == 403 and not self._stopping and self._failure is None:
            self._failure = BrokerRefused(
                f"{classify(reason, self.url)}; the scaler's broker user needs the lease rights of "
                "virtscale/topology_spec.py (make broker)"
            )
        super()._on_channel_closed(channel, reason)

    def _on_connection_closed(self, connection, reason) -> None:
        self._lose(describe(reason))
        super()._on_connection_closed(connection, reason)


def keep_running(
    run_session: Callable[[], None],
    stop_requested: threading.Event,
    what: str,
) -> None:
    """Run sessions until one ends cleanly or a stop is requested, reconnecting with capped,
    jittered exponential backoff. The backoff starts afresh after a session that was working.
    Each failed attempt logs one WARNING with its reason. BrokerRefused propagates: the caller
    exits with its message."""

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
            wait=reconnect_wait(),
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
