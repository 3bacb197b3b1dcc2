"""The producer's publishing loop: paced, confirmed, retried, never silently dropped.

Publishes are pipelined: up to ``max_outstanding`` messages await their confirms at
once, so throughput is not bound by one round trip per message. A nack, an unroutable
return or a lost connection puts the job back in the line to publish again with the same
id (the store de-duplicates by id). After a nack or a return the producer publishes nothing
for a moment (defaults.REPUBLISH_DELAY): a job queue at its length limit (overflow
reject-publish) refuses every publish until its consumers make room.
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from virtscale import defaults
from virtscale.broker import BrokerUrls, Nodes, Session, keep_running
from virtscale.load import Rate
from virtscale.messages import Job, new_job
from virtscale.naming import QueueNames, connection_name

log = logging.getLogger(__name__)

#: Seconds between pacing ticks.
TICK = 0.01

#: Seconds a stopping producer waits for the confirms still outstanding.
DRAIN_TIMEOUT = 15.0


@dataclass
class ProducerReport:
    generated: int = 0
    confirmed: int = 0
    republished: int = 0
    unconfirmed: int = 0

    def line(self) -> str:
        return (
            f"confirmed {self.confirmed} of {self.generated} generated "
            f"({self.republished} republished, {self.unconfirmed} unconfirmed)"
        )


class Producer:
    def __init__(
        self,
        urls: BrokerUrls,
        names: QueueNames,
        next_license: Callable[[], str],
        *,
        rate: Rate | None,
        count: int = 0,
        duration: float | None = None,
        max_outstanding: int = defaults.MAX_OUTSTANDING,
        progress_interval: float = defaults.PROGRESS_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ):
        #: The broker's nodes; each new session goes to the one that worked last, or the next.
        self.nodes = Nodes.of(urls)
        self.names = names
        self.next_license = next_license
        self.rate = rate  # None: as fast as confirms allow
        self.count = count
        self.duration = duration
        self.max_outstanding = max_outstanding
        self.progress_interval = progress_interval
        self.clock = clock
        self.stop_requested = threading.Event()
        self.report = ProducerReport()
        self._session: Session | None = None
        self._to_publish: collections.deque[Job] = collections.deque()
        self._unconfirmed: dict[str, Job] = {}
        self._started: float | None = None
        self._paced_until = 0.0
        self._allowance = 0.0
        self._drain_deadline: float | None = None
        self._last_progress = (0.0, 0)
        self._fill_scheduled = False
        #: Clock time before which nothing is published: the broker has just refused a publish.
        self._held_until = 0.0

    # -- outline -----------------------------------------------------------------------

    def run(self) -> ProducerReport:
        keep_running(self._run_session, self.stop_requested, "producer")
        # A publish the session took down with it is back in _to_publish: unconfirmed all the same.
        self.report.unconfirmed = len(self._unconfirmed) + len(self._to_publish)
        log.info("producer stopped: %s", self.report.line())
        return self.report

    def request_stop(self) -> None:
        """Stop generating jobs; wait for outstanding confirms, then exit (signal-safe)."""
        self.stop_requested.set()
        session = self._session
        if session is not None:
            session.threadsafe(self._tick)

    def set_delta(self, delta: float) -> None:
        """Change the time between publishes while running (from the console thread)."""
        rate = 1.0 / delta
        self.rate = lambda _t: rate
        log.info("delta set to %.3f s (%.2f jobs/s)", delta, rate)

    # -- session -----------------------------------------------------------------------

    def _run_session(self) -> None:
        self._session = Session(
            self.nodes,
            self._on_ready,
            queues=(self.names.jobs,),
            connection_name=connection_name("producer", socket.gethostname(), self.names.jobs),
        )
        self._session.run()

    def _on_ready(self, session: Session) -> None:
        if self._started is None:
            self._started = self.clock()
            self._paced_until = 0.0
            self._last_progress = (self._started, 0)
        self._tick()

    def _tick(self) -> None:
        session = self._session
        if not session.usable:
            return
        self._fill()
        self._log_progress()
        if self._finished():
            session.stop()
            return
        session.call_later(TICK, self._tick)

    def _finished(self) -> bool:
        settled = not self._unconfirmed and not self._to_publish
        if self.count and self.report.confirmed >= self.count:
            return True
        if self.stop_requested.is_set() or self._out_of_time():
            if self._drain_deadline is None:
                self._drain_deadline = self.clock() + DRAIN_TIMEOUT
            if settled:
                return True
            if self.clock() > self._drain_deadline:
                log.warning("gave up waiting for %d confirm(s)", len(self._unconfirmed))
                return True
        return False

    def _out_of_time(self) -> bool:
        return self.duration is not None and self.clock() - self._started >= self.duration

    # -- publishing --------------------------------------------------------------------

    def _fill(self) -> None:
        """Publish what is owed: retries first, then as many new jobs as pacing allows."""
        self._fill_scheduled = False
        session = self._session
        if not session.usable or self.clock() < self._held_until:
            return
        room = self.max_outstanding - len(self._unconfirmed)
        while room > 0 and self._to_publish:
            self._publish(session, self._to_publish.popleft())
            self.report.republished += 1
            room -= 1
        new_jobs = min(room, self._new_jobs_allowed())
        for _ in range(new_jobs):
            self._publish(session, new_job(self.next_license(), time.time()))
            self.report.generated += 1

    def _new_jobs_allowed(self) -> int:
        if self.stop_requested.is_set() or self._out_of_time():
            return 0
        remaining = self.count - self.report.generated if self.count else 1 << 30
        if self.rate is None:
            return remaining
        elapsed = self.clock() - self._started
        step = elapsed - self._paced_until
        if step > 0:
            rate = self.rate(elapsed)
            # Capped so that a stall (broker blocked, window full) is not followed by a burst.
            self._allowance = min(self._allowance + rate * step, max(1.0, rate))
            self._paced_until = elapsed
        allowed = min(int(self._allowance), remaining)
        self._allowance -= allowed
        return allowed

    def _publish(self, session: Session, job: Job) -> None:
        self._unconfirmed[job.id] = job
        session.publish(
            self.names.jobs, job.to_json(), lambda ok: self._on_confirm(job, ok), message_id=job.id
        )

    def _on_confirm(self, job: Job, ok: bool) -> None:
        del self._unconfirmed[job.id]
        if ok:
            self.report.confirmed += 1
        else:
            log.warning("job %s not confirmed; will publish it again", job.id)
            self._to_publish.append(job)
        session = self._session
        if not ok and session.usable:
            # Refused by a broker still connected, not lost with a session (which reconnects
            # after a backoff of its own): the next publish would be refused too, at once.
            self._held_until = self.clock() + defaults.REPUBLISH_DELAY
        if self.rate is None and not self._fill_scheduled and session.usable:
            # Unpaced: top the window up as confirms come in, once per burst of confirms.
            self._fill_scheduled = True
            session.call_later(0, self._fill)

    def _log_progress(self) -> None:
        now = self.clock()
        since, confirmed_then = self._last_progress
        if now - since < self.progress_interval:
            return
        rate = (self.report.confirmed - confirmed_then) / (now - since)
        log.info(
            "published %d, confirmed %d, outstanding %d, %.1f confirmed/s",
            self.report.generated,
            self.report.confirmed,
            len(self._unconfirmed),
            rate,
        )
        self._last_progress = (now, self.report.confirmed)
