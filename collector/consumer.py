"""The collector: consume results, store them in batches, ack only after the commit.

pika's I/O loop thread does all AMQP work and no SQLite: it hands each batch to one
writer thread, which alone uses the store and may wait on a locked database for as long
as SQLite's busy timeout without stalling the heartbeats. The writer hands back, through
the loop, the deliveries to ack once their batch is committed. A batch committed after
its session was lost is not acked on the next one: the broker redelivers it and the
store ignores the copies (same id).
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import pika

from virtscale import defaults
from virtscale.broker import BrokerUrls, Session
from virtscale.collector.store import Store, StoreFailed
from virtscale.consuming import ConsumerService
from virtscale.messages import InvalidMessage, Result, parse_result
from virtscale.naming import QueueNames, collector_consumer_tag, connection_name

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
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="store")
        self._failure: StoreFailed | None = None
        self._batch: list[tuple[int, Result]] = []
        self._flush_timer: object | None = None

    # -- outline -----------------------------------------------------------------------

    def run(self) -> None:
        """Collect until asked to stop. Raises BrokerRefused on a configuration error and
        StoreFailed when a batch cannot be written (nothing of it acked)."""
        try:
            self._keep_running("collector")
        finally:
            self._writer.shutdown(wait=True, cancel_futures=True)
        log.info("collector stopped: %d stored, %d duplicates ignored", self.stored, self.duplicates)
        if self._failure is not None:
            raise self._failure

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
            self._unsettled += 1
            session.dead_letter(
                self.names.dead,
                body,
                str(exc),
                properties.message_id,
                lambda ok: self._settle(session, [delivery_tag], ok),
                delivery_tag=delivery_tag,
            )
            return
        self._batch.append((delivery_tag, result))
        if len(self._batch) >= self.batch_size:
            self._flush()
        elif self._flush_timer is None:
            self._flush_timer = session.call_later(self.flush_interval, self._flush)

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
        future = self._writer.submit(self._commit, [result for _tag, result in batch])
        tags = [tag for tag, _result in batch]
        future.add_done_callback(
            lambda done: session.threadsafe(lambda: self._after_commit(session, tags, done))
        )

    def _commit(self, results: list[Result]) -> None:
        """On the writer thread: one transaction for the batch."""
        stored, duplicates = self.store.insert(results, time.time())
        self.stored += stored
        self.duplicates += duplicates
        log.debug("stored %d, ignored %d duplicate(s)", stored, duplicates)

    def _after_commit(self, session: Session, tags: Sequence[int], done: Future) -> None:
        failure = done.exception()
        if failure is not None:
            # Nothing of the batch was stored or acked; stop rather than spin on a broken store.
            log.error("%s; stopping, the results stay in %s", failure, self.names.results)
            self._failure = failure
            self.stop_requested.set()
            session.stop()
            return
        self._settle(session, tags, ok=True)

    def _settle(self, session: Session, tags: Sequence[int], ok: bool) -> None:
        """The one end of every delivery: ack once it is stored or dead-lettered, else requeue.
        Each is acked on its own: a multiple ack could also cover a dead-lettered result whose
        copy the broker has not confirmed yet."""
        if not self._still_current(session):
            return
        self._unsettled -= 1
        for tag in tags:
            if ok:
                session.ack(tag)
            else:
                session.nack(tag, requeue=True)
        self._stop_when_idle()
