"""The session lifecycle the worker and the collector share: connect, consume, drain, reconnect.

A subclass names what it consumes and handles each delivery; this base keeps the
``Session`` of the moment, starts consuming once it is ready, stops it once a requested
stop finds nothing unsettled, and tells a callback from a lost session to do nothing
(the broker redelivers what that session had not acked). Imports nothing beyond pika, the
standard library and virtscale's broker and naming, so it ships in the worker image.
"""

from __future__ import annotations

import threading

import pika

from virtscale.broker import BrokerUrls, Nodes, Session, keep_running
from virtscale.naming import QueueNames


class ConsumerService:
    """One consumer of one queue, reconnecting; subclasses fill in the hooks below."""

    def __init__(self, urls: BrokerUrls, names: QueueNames):
        #: The broker's nodes; each new session goes to the one that worked last, or the next.
        self.nodes = Nodes.of(urls)
        self.names = names
        self.stop_requested = threading.Event()
        self._session: Session | None = None
        #: Deliveries (or batches of them) of this session not yet acked or requeued.
        self._unsettled = 0

    # -- hooks ---------------------------------------------------------------------------

    def _session_options(self) -> dict:
        """Session keyword arguments: the queues to check, the prefetch, the connection name."""
        raise NotImplementedError

    def _consume_from(self) -> tuple[str, str]:
        """(queue, consumer tag) for a new session."""
        raise NotImplementedError

    def _on_delivery(self, delivery_tag: int, properties: pika.BasicProperties, body: bytes) -> None:
        raise NotImplementedError

    def _drain(self) -> None:
        """On the I/O loop after a stop request: stop taking deliveries, settle those in hand."""
        raise NotImplementedError

    def _reset(self) -> None:
        """Forget the per-session state of a lost session before a new one starts."""

    # -- lifecycle -------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Warm stop (signal-safe): no new deliveries, those in hand settled, then exit."""
        self.stop_requested.set()
        session = self._session
        if session is not None:
            session.threadsafe(self._drain)

    def _keep_running(self, what: str) -> None:
        """Sessions until a stop; raises BrokerRefused on a configuration error."""
        keep_running(self._run_session, self.stop_requested, what)

    def _run_session(self) -> None:
        self._unsettled = 0
        self._reset()
        self._session = Session(self.nodes, self._start_consuming, **self._session_options())
        self._session.run()

    def _start_consuming(self, session: Session) -> None:
        if self.stop_requested.is_set():
            session.stop()
            return
        queue, tag = self._consume_from()
        session.consume(
            queue,
            self._on_delivery,
            consumer_tag=tag,
            dead_letter_queue=self.names.dead,
            dead_letter_via=self._dead_letter_via(),
        )

    def _dead_letter_via(self) -> tuple[str, str | None]:
        """The exchange and user_id of this service's dead letters: the default exchange, none."""
        return "", None

    def _stop_when_idle(self) -> None:
        if self.stop_requested.is_set() and self._unsettled == 0:
            self._session.stop()

    def _still_current(self, session: Session) -> bool:
        """False once the session a delivery came on is gone: the broker redelivers its messages."""
        return session is self._session and session.usable
