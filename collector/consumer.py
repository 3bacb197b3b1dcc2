"""The collector: consume results, store them in batches, ack only after the commit.

pika's I/O loop thread does all AMQP work and no store I/O: it hands each batch to one
writer thread, which alone uses the store (SQLite or PostgreSQL, behind one interface) and
may wait on a lock for as long as the store's timeout without stalling the heartbeats. The
writer hands back, through the loop, the deliveries to ack once their batch is committed. A
batch committed after its session was lost is not acked on the next one: the broker
redelivers it and the store ignores the copies (same id).

A store that cannot write (locked too long, disk full, read-only, server gone) does not stop
the collector: the writer retries the batch with the project's backoff while its results stay
unacked (so the broker soon sends no more), says once per interval what is wrong, and carries
on when a commit succeeds. It gives a batch up only on a stop request (the batch is requeued)
or once the batch's session is gone (the broker has taken the batch back already).
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import pika
import tenacity

from virtscale import defaults
from virtscale.backoff import reconnect_wait
from virtscale.broker import BrokerUrls, Session
from virtscale.collector.outage import StoreOutage
from virtscale.collector.store import Store, StoreFailed
from virtscale.consuming import ConsumerService
from virtscale.messages import InvalidMessage, Result, parse_result
from virtscale.naming import QueueNames, collector_consumer_tag, connection_name
from virtscale.publishers import publisher_problem

#: The dead letter's header naming the account that published a refused result.
PUBLISHER_HEADER = "x-virtscale-publisher"

log = logging.getLogger(__name__)


class Collector(ConsumerService):
    def __init__(
        self,
        urls: BrokerUrls,
        names: QueueNames,
        store: Store,
        *,
        batch_size: int = defaults.COLLECTOR_BATCH,
        flush_interval: float = defaults.COLLECTOR_FLUSH_INTERVAL,
        host: str | None = None,
    ):
        super().__init__(urls, names)
        self.store = store
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.host = host or socket.gethostname()
        # Written by the writer thread only; read once it has finished.
        self.stored = 0
        self.duplicates = 0
        #: Results dead-lettered because their publisher may not speak for the worker they name.
        self.impostors = 0
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="store")
        self.outage = StoreOutage()
        self._fault: BaseException | None = None
        self._batch: list[tuple[int, Result]] = []
        self._flush_timer: object | None = None

    # -- outline -----------------------------------------------------------------------

    def run(self) -> None:
        """Collect until asked to stop. Raises BrokerRefused on a configuration error, and the
        exception of a write that failed other than by StoreFailed; a store that cannot write is
        waited for, never a reason to exit."""
        try:
            self._keep_running("collector")
        finally:
            self._writer.shutdown(wait=True, cancel_futures=True)
        log.info(
            "collector stopped: %d stored, %d duplicates ignored, %d from a publisher not entitled",
            self.stored,
            self.duplicates,
            self.impostors,
        )
        if self._fault is not None:
            raise self._fault

    # -- session -----------------------------------------------------------------------

    def _reset(self) -> None:
        # A batch from a lost session is unacked: the broker redelivers it, so drop it here.
        self._batch = []
        self._flush_timer = None

    def _session_options(self) -> dict:
        return {
            "queues": (self.names.results, self.names.dead),
            "prefetch": self.batch_size * 2,
            "connection_name": connection_name("collector", self.host, self.names.jobs),
        }

    def _consume_from(self) -> tuple[str, str]:
        return self.names.results, collector_consumer_tag(self.host, uuid.uuid4().hex[:8])

    def _drain(self) -> None:
        """No new deliveries; commit what has arrived; stop once all of it is acked."""
        self._session.cancel(self._flush_and_stop)

    def _flush_and_stop(self) -> None:
        self._flush()
        self._stop_when_idle()

    # -- per result --------------------------------------------------------------------

    def _on_delivery(self, delivery_tag: int, properties: pika.BasicProperties, body: bytes) -> None:
        session = self._session
        try:
            result = parse_result(body)
        except InvalidMessage as exc:
            self._dead_letter(session, delivery_tag, properties, body, str(exc))
            return
        impostor = publisher_problem(result.worker, properties.user_id)
        if impostor is not None:
            self.impostors += 1
            self._dead_letter(session, delivery_tag, properties, body, impostor)
            return
        self._batch.append((delivery_tag, result))
        if len(self._batch) >= self.batch_size:
            self._flush()
        elif self._flush_timer is None:
            self._flush_timer = session.call_later(self.flush_interval, self._flush)

    def _dead_letter(
        self, session: Session, delivery_tag: int, properties: pika.BasicProperties, body: bytes, reason: str
    ) -> None:
        """A result never to store goes to the dead-letter queue with ``reason``, and who sent it."""
        self._unsettled += 1
        session.dead_letter(
            self.names.dead,
            body,
            reason,
            properties.message_id,
            lambda ok: self._settle(session, [delivery_tag], ok),
            headers={PUBLISHER_HEADER: properties.user_id or ""},
            delivery_tag=delivery_tag,
        )

    def _flush(self) -> None:
        """Hand the batch to the writer thread; its deliveries are acked after the commit."""
        session = self._session
        if self._flush_timer is not None:
            session.remove_timeout(self._flush_timer)
            self._flush_timer = None
        if not self._batch or not session.usable:
            return
        batch, self._batch = self._batch, []
        self._unsettled += 1
        future = self._writer.submit(self._commit, session, [result for _tag, result in batch])
        tags = [tag for tag, _result in batch]
        future.add_done_callback(
            lambda done: session.threadsafe(lambda: self._after_commit(session, tags, done))
        )

    def _commit(self, session: Session, results: list[Result]) -> None:
        """On the writer thread: one transaction for the batch, retried with backoff while the
        store cannot write, until a stop is requested or the batch's session is gone."""
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(StoreFailed),
            wait=reconnect_wait(),
            stop=lambda _state: self.stop_requested.is_set() or not session.usable,
            sleep=self.stop_requested.wait,
            before_sleep=lambda state: self.outage.failed(
                state.outcome.exception(), len(results), state.next_action.sleep
            ),
            reraise=True,
        )
        stored, duplicates = retrying(lambda: self.store.insert(results, time.time()))
        self.outage.succeeded()
        self.stored += stored
        self.duplicates += duplicates
        log.debug("stored %d, ignored %d duplicate(s)", stored, duplicates)

    def _after_commit(self, session: Session, tags: Sequence[int], done: Future) -> None:
        failure = done.exception()
        if failure is not None and not isinstance(failure, StoreFailed):
            # Not the store's state but a fault of ours: stop rather than spin on it.
            log.error("writing a batch failed: %r; stopping, nothing of it acked", failure)
            self._fault = failure
            self.stop_requested.set()
            session.stop()
            return
        if failure is not None and self._still_current(session):
            # Given up on a stop request: nothing of the batch was stored; requeue it.
            log.warning("%s; stopping: %d result(s) go back to %s", failure, len(tags), self.names.results)
        self._settle(session, tags, ok=failure is None)

    def _settle(self, session: Session, tags: Sequence[int], ok: bool) -> None:
        """The one end of every delivery: ack once it is stored or dead-lettered, else requeue.
        Each is acked by its tag: the Session joins the acks of one pass of its loop into a
        multiple ack only up to the first delivery still in hand, so that none covers a
        dead-lettered result whose copy the broker has not confirmed yet."""
        if not self._still_current(session):
            return
        self._unsettled -= 1
        for tag in tags:
            if ok:
                session.ack(tag)
            else:
                session.nack(tag, requeue=True)
        self._stop_when_idle()
