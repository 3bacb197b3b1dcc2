"""The collector: consume results, store them in batches, ack only after the commit."""

from __future__ import annotations

import logging
import threading
import time

import pika
from virtscale.collector.store import Store

from virtscale import defaults
from virtscale.broker import Session, keep_running
from virtscale.messages import InvalidMessage, Result, parse_result
from virtscale.naming import QueueNames

log = logging.getLogger(__name__)


class Collector:
    def __init__(
        self,
        url: str,
        names: QueueNames,
        store: Store,
        *,
        batch_size: int = defaults.COLLECTOR_BATCH,
        flush_interval: float = defaults.COLLECTOR_FLUSH_INTERVAL,
    ):
        self.url = url
        self.names = names
        self.store = store
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.stop_requested = threading.Event()
        self.stored = 0
        self.duplicates = 0
        self._session: Session | None = None
        self._batch: list[tuple[int, Result]] = []
        self._flush_timer: object | None = None

    def run(self) -> None:
        keep_running(self._run_session, self.stop_requested, "collector")
        log.info("collector stopped: %d stored, %d duplicates ignored", self.stored, self.duplicates)

    def request_stop(self) -> None:
        """Store and ack what has arrived, then exit (signal-safe)."""
        self.stop_requested.set()
        session = self._session
        if session is not None:
            session.threadsafe(self._finish)

    def _run_session(self) -> None:
        # A batch from a lost session is unacked: the broker redelivers it, so drop it here.
        self._batch = []
        self._flush_timer = None
        self._session = Session(
            self.url,
            lambda session: session.consume(self.names.results, self._on_result),
            queues=(self.names.results, self.names.dead),
            prefetch=self.batch_size * 2,
        )
        self._session.run()

    def _finish(self) -> None:
        if self._session is not None and self._session.usable:
            self._flush()
            self._session.stop()

    def _on_result(self, delivery_tag: int, properties: pika.BasicProperties, body: bytes) -> None:
        session = self._session
        try:
            result = parse_result(body)
        except InvalidMessage as exc:
            reason = str(exc)
            log.warning("dead-lettering result %s: %s", properties.message_id or f"#{delivery_tag}", reason)

            def confirmed(ok: bool) -> None:
                if session is self._session and session.usable:
                    session.ack(delivery_tag) if ok else session.nack(delivery_tag)

            session.publish(
                self.names.dead,
                body,
                confirmed,
                message_id=properties.message_id,
                headers={defaults.REASON_HEADER: reason},
            )
            return
        self._batch.append((delivery_tag, result))
        if len(self._batch) >= self.batch_size:
            self._flush()
        elif self._flush_timer is None:
            self._flush_timer = session.call_later(self.flush_interval, self._flush)

    def _flush(self) -> None:
        session = self._session
        if self._flush_timer is not None:
            session.remove_timeout(self._flush_timer)
            self._flush_timer = None
        if not self._batch or not session.usable:
            return
        batch, self._batch = self._batch, []
        stored, duplicates = self.store.insert((result for _tag, result in batch), time.time())
        self.stored += stored
        self.duplicates += duplicates
        # Each delivery is acked on its own: a multiple ack could also cover a dead-lettered
        # result whose copy the broker has not confirmed yet.
        for delivery_tag, _result in batch:
            session.ack(delivery_tag)
        log.debug("stored %d, ignored %d duplicate(s)", stored, duplicates)
