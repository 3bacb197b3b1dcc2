"""The worker's lifecycle: consume, validate, hash on a thread pool, publish, ack, drain.

The I/O loop thread does all AMQP work; hashing runs on a pool of ``concurrency``
threads (bcrypt releases the GIL) and hands its result back through the loop.
Order of effects per job: hash -> publish result (confirmed) -> ack the job. A crash
anywhere before the ack makes the broker redeliver; the store de-duplicates by id.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor

import pika

from virtscale import defaults
from virtscale.broker import BrokerUrls, Session
from virtscale.consuming import ConsumerService
from virtscale.messages import InvalidMessage, Job, Result, loggable_id, parse_job
from virtscale.naming import QueueNames, connection_name, worker_consumer_tag
from virtscale.worker.hashing import hash_license

log = logging.getLogger(__name__)

#: AMQP's prefetch count is a 16-bit number.
MAX_PREFETCH = 65535

#: What the worker hashes to time its cost before it subscribes (not a license number).
CALIBRATION_INPUT = "virtscale-calibration"
#: Calibration hashes at most, and the CPU seconds of them after which no further one starts.
CALIBRATION_HASHES = 5
CALIBRATION_SECONDS = 0.05


def sized_prefetch(concurrency: int, mean_hash_seconds: float) -> int:
    """About PREFETCH_SECONDS of work per slot, at least one job, within AMQP's 16 bits."""
    per_slot = max(1, round(defaults.PREFETCH_SECONDS / max(mean_hash_seconds, 1e-9)))
    return min(concurrency * per_slot, MAX_PREFETCH)


class Worker(ConsumerService):
    def __init__(
        self,
        urls: BrokerUrls,
        names: QueueNames,
        *,
        cost: int,
        concurrency: int,
        name: str,
        prefetch_per_slot: int | None = None,
        login: str | None = None,
    ):
        super().__init__(urls, names)
        #: The broker user name; results and dead letters carry it as their user_id, which the
        #: broker checks, so that the collector knows who published them.
        self.login = login or None
        self.cost = cost
        self.concurrency = concurrency
        self.name = name
        #: None: sized by time from the measured hashing time (one job per slot until then).
        self.prefetch_per_slot = prefetch_per_slot
        self.prefetch = min(concurrency * (prefetch_per_slot or 1), MAX_PREFETCH)
        #: Mean CPU seconds of one hash (see Hashed), and the jobs it was measured on.
        self.mean_hash_seconds: float | None = None
        self._timed_jobs = 0
        #: Monotonic time of the last prefetch change (none yet).
        self._resized_at = -float("inf")
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="bcrypt")
        #: Hashes done on the pool, waiting for the I/O loop, and the session a wake-up of the
        #: loop is pending on: one wake-up serves every hash finished before the loop runs.
        self._finished: collections.deque[tuple[Session, int, Job, Future, float]] = collections.deque()
        self._wake_pending_on: Session | None = None
        self._published_at = -float("inf")
        self.hashed = 0
        self.dead_lettered = 0
        #: Parked: drained and disconnected, waiting for ``resume`` (the warm pool's save).
        self.parking = False
        self.resume = threading.Event()

    # -- outline -----------------------------------------------------------------------

    def run(self) -> None:
        """Work until asked to stop; raises BrokerRefused on a configuration error."""
        self._calibrate()
        log.info(
            "worker %s: cost %d, %d slot(s), prefetch %s, queue %s",
            self.name,
            self.cost,
            self.concurrency,
            self.prefetch
            if self.prefetch_per_slot
            else f"{self.prefetch} ({self.mean_hash_seconds * 1000:.1f} ms a hash, "
            f"{defaults.PREFETCH_SECONDS:g} s of work per slot)",
            self.names.jobs,
        )
        try:
            while True:
                self._keep_running(f"worker {self.name}")
                if not self._parked():
                    break
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)
        log.info(
            "worker %s stopped: %d hashed, %d dead-lettered",
            self.name,
            self.hashed,
            self.dead_lettered,
        )

    def _calibrate(self) -> None:
        """With the prefetch sized by time, time the cost before the first subscription, so that
        the first consumer already holds about a second of work per slot. (Sizing it later
        re-subscribes, and what was on its way to the old consumer goes back to the queue, one
        delivery nearer its limit.) Later jobs' times correct the mean; a drift by
        PREFETCH_CHANGE_FACTOR still re-subscribes."""
        if self.prefetch_per_slot or self.mean_hash_seconds is not None:
            return
        times: list[float] = []
        while len(times) < CALIBRATION_HASHES and sum(times) < CALIBRATION_SECONDS:
            times.append(hash_license(CALIBRATION_INPUT, self.cost).cpu_seconds)
        self.mean_hash_seconds = sorted(times)[len(times) // 2]
        self._timed_jobs = 1
        self.prefetch = sized_prefetch(self.concurrency, self.mean_hash_seconds)

    # -- parking (the warm pool) ----------------------------------------------------------

    def request_park(self) -> None:
        """Signal-safe: drain like a warm stop (no new jobs, those in hand finished and acked,
        the connection closed), then wait for request_resume() instead of exiting. The scaler
        parks a worker before it saves the VM, and resumes it right after the restore: a
        process that is already running reconnects in a fraction of a second."""
        self.parking = True
        self.request_stop()

    def request_resume(self) -> None:
        self.resume.set()

    def _parked(self) -> bool:
        """After a drain: wait while parked; True to work again, False to exit."""
        if not self.parking:
            return False
        log.info("worker %s: parked, nothing in hand; waiting to be resumed", self.name)
        self.resume.wait()
        self.resume.clear()
        if not self.parking:
            return False  # asked to stop while parked
        self.parking = False
        self.stop_requested.clear()
        log.info("worker %s: resumed", self.name)
        return True

    def stop_parked(self) -> bool:
        """Signal-safe: end a parked worker (True), or say it is not parked (False)."""
        if not self.parking:
            return False
        self.parking = False
        self.resume.set()
        return True

    # -- session -----------------------------------------------------------------------

    def _session_options(self) -> dict:
        return {
            "queues": (self.names.jobs, self.names.results, self.names.dead),
            "prefetch": self.prefetch,
            "connection_name": connection_name("worker", self.name, self.names.jobs),
        }

    def _consume_from(self) -> tuple[str, str]:
        return self.names.jobs, worker_consumer_tag(self.name, uuid.uuid4().hex[:8])

    def _dead_letter_via(self) -> tuple[str, str | None]:
        return self.names.results_exchange, self.login

    def _drain(self) -> None:
        """Warm stop: take no new jobs, finish and ack those in hand, exit."""
        log.info("worker %s draining: %d job(s) in hand", self.name, self._unsettled)
        self._session.cancel(self._stop_when_idle)

    # -- per job -----------------------------------------------------------------------

    def _on_delivery(self, delivery_tag: int, properties: pika.BasicProperties, body: bytes) -> None:
        session = self._session
        try:
            job = parse_job(body)
        except InvalidMessage as exc:
            self._unsettled += 1
            self._dead_letter(session, delivery_tag, body, str(exc), properties.message_id)
            return
        future = self._pool.submit(hash_license, job.license, self.cost)
        # Counted once handed on, so a delivery the session dead-letters after an error is not.
        self._unsettled += 1
        future.add_done_callback(lambda done: self._hashed(session, delivery_tag, job, done))

    def _hashed(self, session: Session, delivery_tag: int, job: Job, done: Future) -> None:
        """On a pool thread: queue the hash for the I/O loop, and wake the loop unless a wake-up
        is already pending there. (The loop clears the mark before it empties the queue, so a
        hash queued meanwhile is either taken by that pass or wakes the loop again.)"""
        self._finished.append((session, delivery_tag, job, done, time.time()))
        if self._wake_pending_on is not session:
            self._wake_pending_on = session
            session.threadsafe(self._publish_finished)

    def _results_interval(self) -> float:
        """Seconds between two publishing passes: RESULTS_INTERVAL, or less when the work a slot
        holds beyond the job it hashes is short: a share of that, so that the delay never leaves
        a slot waiting for its next job (with one job per slot: no delay at all)."""
        if self.mean_hash_seconds is None:
            return 0.0
        queued_per_slot = max(self.prefetch / self.concurrency - 1, 0) * self.mean_hash_seconds
        return min(defaults.RESULTS_INTERVAL, defaults.RESULTS_INTERVAL_SHARE * queued_per_slot)

    def _publish_finished(self) -> None:
        """Publish the hashes finished so far, at most once per _results_interval(): under load
        a pass takes several, in one send, and their confirms and acks come back together."""
        session = self._wake_pending_on
        wait = self._published_at + self._results_interval() - time.monotonic()
        # Only on the current session: a mark left on a lost one has nothing to wait for.
        if wait > 0 and session is self._session and session is not None and session.usable:
            session.call_later(wait, self._publish_finished)
            return
        self._wake_pending_on = None
        self._published_at = time.monotonic()
        while self._finished:
            self._publish_result(*self._finished.popleft())

    def _reset(self) -> None:
        # Hashes of a lost session are moot (the broker redelivers their jobs).
        self._finished.clear()
        self._wake_pending_on = None

    def _publish_result(
        self, session: Session, delivery_tag: int, job: Job, done: Future, hashed_at: float
    ) -> None:
        if not self._still_current(session):
            return
        try:
            hashed = done.result()
        except Exception as exc:  # bcrypt refused input that passed validation: never retry it
            log.error("job %s: hashing failed: %s", job.id, type(exc).__name__)
            self._dead_letter(
                session, delivery_tag, job.to_json(), f"hashing failed: {type(exc).__name__}", job.id
            )
            return
        self._time_job(session, hashed.cpu_seconds)
        result = Result(
            id=job.id,
            hash=hashed.digest,
            worker=self.name,
            produced_at=job.produced_at,
            hashed_at=hashed_at,
            hash_ms=round(hashed.ms, 3),
        )
        session.publish(
            self.names.results,
            result.to_json(),
            lambda ok: self._settle(session, delivery_tag, ok, job.id, dead_lettered=False),
            message_id=job.id,
            exchange=self.names.results_exchange,
            user_id=self.login,
        )

    def _time_job(self, session: Session, seconds: float) -> None:
        """Fold one hash's time into the mean; with the prefetch sized by time, resize it once
        the mean has settled and moved it by PREFETCH_CHANGE_FACTOR, at most every
        PREFETCH_CHANGE_INTERVAL seconds."""
        self._timed_jobs += 1
        mean = self.mean_hash_seconds
        if mean is None or self._timed_jobs <= defaults.PREFETCH_SETTLE_JOBS:
            mean = seconds if mean is None else mean + (seconds - mean) / self._timed_jobs
        else:
            mean += defaults.HASH_TIME_SMOOTHING * (seconds - mean)
        self.mean_hash_seconds = mean
        if self.prefetch_per_slot or self._timed_jobs < defaults.PREFETCH_SETTLE_JOBS:
            return
        now = time.monotonic()
        if now - self._resized_at < defaults.PREFETCH_CHANGE_INTERVAL:
            return
        wanted = sized_prefetch(self.concurrency, mean)
        factor = defaults.PREFETCH_CHANGE_FACTOR
        if wanted >= self.prefetch * factor or wanted * factor <= self.prefetch:
            self._resized_at = now
            log.info(
                "worker %s: prefetch %d (%.1f ms a hash, %g s of work per slot)",
                self.name,
                wanted,
                mean * 1000,
                defaults.PREFETCH_SECONDS,
            )
            self.prefetch = wanted
            session.set_prefetch(wanted, self._consume_from()[1])

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
            delivery_tag=delivery_tag,
            exchange=self.names.results_exchange,
            user_id=self.login,
        )

    def _settle(
        self, session: Session, delivery_tag: int, ok: bool, job_id: str | None, *, dead_lettered: bool
    ) -> None:
        """The one end of every job: ack once its result or dead letter is confirmed, else requeue."""
        if not self._still_current(session):
            return
        self._unsettled -= 1
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
                loggable_id(job_id, delivery_tag),
                "dead letter" if dead_lettered else "result",
            )
            session.nack(delivery_tag, requeue=True)
        self._stop_when_idle()


def default_concurrency() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
