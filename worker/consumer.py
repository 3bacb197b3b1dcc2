"""The worker's lifecycle: consume, validate, hash on a thread pool, publish, ack, drain.

The I/O loop thread does all AMQP work; hashing runs on a pool of ``concurrency``
threads (bcrypt releases the GIL) and hands its result back through the loop.
Order of effects per job: hash -> publish result (confirmed) -> ack the job. A crash
anywhere before the ack makes the broker redeliver; the store de-duplicates by id.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor

import pika

from virtscale.broker import Session, keep_running
from virtscale.messages import InvalidMessage, Job, Result, parse_job
from virtscale.naming import QueueNames, connection_name, worker_consumer_tag
from virtscale.worker.hashing import hash_license

log = logging.getLogger(__name__)


class Worker:
    def __init__(
        self,
        url: str,
        names: QueueNames,
        *,
        cost: int,
        concurrency: int,
        name: str,
        prefetch_per_slot: int = 1,
    ):
        self.url = url
        self.names = names
        self.cost = cost
        self.concurrency = concurrency
        self.name = name
        self.prefetch = concurrency * prefetch_per_slot
        self.stop_requested = threading.Event()
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="bcrypt")
        self._session: Session | None = None
        self._in_hand = 0
        self.hashed = 0
        self.dead_lettered = 0

    # -- outline -----------------------------------------------------------------------

    def run(self) -> None:
        """Work until asked to stop; raises BrokerRefused on a configuration error."""
        log.info(
            "worker %s: cost %d, %d slot(s), prefetch %d, queue %s",
            self.name,
            self.cost,
            self.concurrency,
            self.prefetch,
            self.names.jobs,
        )
        try:
            keep_running(self._run_session, self.stop_requested, f"worker {self.name}")
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)
        log.info(
            "worker %s stopped: %d hashed, %d dead-lettered",
            self.name,
            self.hashed,
            self.dead_lettered,
        )

    def request_stop(self) -> None:
        """Warm stop (signal-safe): take no new jobs, finish and ack those in hand, exit."""
        self.stop_requested.set()
        session = self._session
        if session is not None:
            session.threadsafe(self._drain)

    # -- session -----------------------------------------------------------------------

    def _run_session(self) -> None:
        self._in_hand = 0
        self._session = Session(
            self.url,
            self._start_consuming,
            queues=(self.names.jobs, self.names.results, self.names.dead),
            prefetch=self.prefetch,
            connection_name=connection_name("worker", self.name, self.names.jobs),
        )
        self._session.run()

    def _start_consuming(self, session: Session) -> None:
        if self.stop_requested.is_set():
            session.stop()
            return
        tag = worker_consumer_tag(self.name, uuid.uuid4().hex[:8])
        session.consume(self.names.jobs, self._on_job, consumer_tag=tag)

    def _drain(self) -> None:
        log.info("worker %s draining: %d job(s) in hand", self.name, self._in_hand)
        self._session.cancel(self._stop_when_idle)

    def _stop_when_idle(self) -> None:
        if self.stop_requested.is_set() and self._in_hand == 0:
            self._session.stop()

    # -- per job -----------------------------------------------------------------------

    def _on_job(self, delivery_tag: int, properties: pika.BasicProperties, body: bytes) -> None:
        session = self._session
        self._in_hand += 1
        try:
            job = parse_job(body)
        except InvalidMessage as exc:
            self._dead_letter(session, delivery_tag, body, str(exc), properties.message_id)
            return
        future = self._pool.submit(hash_license, job.license, self.cost)
        future.add_done_callback(
            lambda done: session.threadsafe(lambda: self._publish_result(session, delivery_tag, job, done))
        )

    def _publish_result(self, session: Session, delivery_tag: int, job: Job, done: Future) -> None:
        if not self._still_current(session):
            return
        try:
            digest, hash_ms = done.result()
        except Exception as exc:  # bcrypt refused input that passed validation: never retry it
            log.error("job %s: hashing failed: %s", job.id, type(exc).__name__)
            self._dead_letter(
                session, delivery_tag, job.to_json(), f"hashing failed: {type(exc).__name__}", job.id
            )
            return
        result = Result(
            id=job.id,
            hash=digest,
            worker=self.name,
            produced_at=job.produced_at,
            hashed_at=time.time(),
            hash_ms=round(hash_ms, 3),
        )
        session.publish(
            self.names.results,
            result.to_json(),
            lambda ok: self._settle(session, delivery_tag, ok, job.id, dead_lettered=False),
            message_id=job.id,
        )

    def _dead_letter(
        self, session: Session, delivery_tag: int, body: bytes, reason: str, message_id: str | None
    ) -> None:
        """Move a job that can never be processed to the dead-letter queue, with the reason."""
        session.dead_letter(
            self.names.dead,
            body,
            reason,
            message_id,
            lambda ok: self._settle(session, delivery_tag, ok, message_id, dead_lettered=True),
            headers={"x-virtscale-worker": self.name},
        )

    def _settle(
        self, session: Session, delivery_tag: int, ok: bool, job_id: str | None, *, dead_lettered: bool
    ) -> None:
        """The one end of every job: ack once its result or dead letter is confirmed, else requeue."""
        if not self._still_current(session):
            return
        self._in_hand -= 1
        if ok:
            session.ack(delivery_tag)
            if dead_lettered:
                self.dead_lettered += 1
            else:
                self.hashed += 1
                log.debug("job %s hashed", job_id)
        else:
            log.warning(
                "job %s: %s not confirmed; job requeued",
                job_id or f"#{delivery_tag}",
                "dead letter" if dead_lettered else "result",
            )
            session.nack(delivery_tag, requeue=True)
        self._stop_when_idle()

    def _still_current(self, session: Session) -> bool:
        """False once the session a delivery came on is gone: the broker redelivers its jobs."""
        return session is self._session and session.usable


def default_concurrency() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
