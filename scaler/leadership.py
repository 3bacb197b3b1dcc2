"""Which of several scalers on one pool acts: the one that holds the pool's lease in RabbitMQ.

The lease is an exclusive queue named after the job queue and the pool
(virtscale.naming.lease_queue): the scaler whose connection declared it holds it, until that
connection ends and the broker deletes the queue. The others are standbys: they observe every
tick, act on nothing, and probe the lease (virtscale.broker.LeaseSession) until it is free.

Two scalers never act at once, by two bounds (README, "Several scalers on one pool"):

- A leader acts only within ``validity`` seconds of sending a check of its lease that the broker
  confirmed. The broker received that check, and frees the lease of a connection gone silent no
  sooner than two heartbeats later: a leader cut off from the broker has stopped acting (after
  ``validity`` + ``action_margin``) before its lease can be taken.
- A scaler that has just claimed the lease waits ``validity`` + ``action_margin`` before it acts.
  Its claim succeeded only after the broker had freed the lease, so after it had confirmed the
  old leader's last check: whatever ended the old connection (a heartbeat timeout, a reset seen
  only by the broker, a broker node gone), the old leader has stopped by then.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from virtscale import defaults
from virtscale.broker import BrokerRefused, BrokerUrls, LeaseSession, Nodes, keep_running
from virtscale.naming import connection_name, lease_queue

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseTiming:
    """The lease's clocks, in seconds (defaults in virtscale.defaults, each with its reason)."""

    heartbeat: int = defaults.LEASE_HEARTBEAT
    validity: float = defaults.LEASE_VALIDITY
    check_interval: float = defaults.LEASE_CHECK_INTERVAL
    action_margin: float = defaults.LEASE_ACTION_MARGIN
    probe_interval: float = defaults.LEASE_PROBE_INTERVAL

    @property
    def takeover_wait(self) -> float:
        """How long a new holder waits before it acts: the old leader's validity and margin."""
        return self.validity + self.action_margin

    def problems(self) -> list[str]:
        found = []
        if self.takeover_wait >= 2 * self.heartbeat:
            found.append(
                f"validity {self.validity:g} s + action margin {self.action_margin:g} s must be under two "
                f"heartbeats ({2 * self.heartbeat} s): the broker may free a silent leader's lease after that"
            )
        if self.check_interval >= self.validity:
            found.append(
                f"checks every {self.check_interval:g} s would let a {self.validity:g} s validity lapse"
            )
        return found


def scaler_identity() -> str:
    """How a scaler is named as the lease's holder: its host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


class SoleScaler:
    """The leadership of a scaler that stands for no lease (a dry run, `status`, tests): it alone
    decides for its pool, so it always leads."""

    identity = None

    def __init__(self) -> None:
        #: Set to end the loop's pause between ticks early (see Leadership.wake).
        self.wake = threading.Event()

    def term(self) -> int | None:
        return 0

    def still_leads(self, _term: int) -> bool:
        return True

    def holder(self) -> str | None:
        return None

    def standby_note(self) -> str:
        return ""


class Leadership:
    """This scaler's stand for the lease of ``pool`` (serving job queue ``queue``), held on a
    connection and a thread of its own (``start``), so that checks and heartbeats go on whatever a
    tick is doing. A tick asks ``term`` before it observes and acts only while ``still_leads(term)``."""

    def __init__(
        self,
        urls: BrokerUrls,
        queue: str,
        pool: str,
        *,
        identity: str | None = None,
        timing: LeaseTiming = LeaseTiming(),
        clock: Callable[[], float] = time.monotonic,
        holder_lookup: Callable[[str], str | None] | None = None,
    ):
        problems = timing.problems()
        if problems:
            raise ValueError("; ".join(problems))
        #: The broker's nodes; each new lease session goes to the one that worked last, or the next.
        self.nodes = Nodes.of(urls)
        self.pool = pool
        self.queue = lease_queue(queue, pool)
        self.identity = identity or scaler_identity()
        self.timing = timing
        self.clock = clock
        self._holder_lookup = holder_lookup
        self._lock = threading.Lock()
        self._holding = False
        #: Claims so far: a term is one unbroken holding of the lease.
        self._term = 0
        #: Clock time from which the current holder may act, and when its last confirmed check was sent.
        self._leads_from = 0.0
        self._confirmed_at = -float("inf")
        self._was_standby = False
        self._refusal: str | None = None
        self._session: LeaseSession | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        #: Set once the first probe or claim has an outcome (or the broker refused the lease).
        self._settled = threading.Event()
        #: Set when this scaler comes to lead, so that the loop ticks at once instead of an interval later.
        self.wake = threading.Event()

    # -- what a tick asks --------------------------------------------------------------

    def term(self) -> int | None:
        """The current term if this scaler may act now, else None."""
        with self._lock:
            now = self.clock()
            if self._holding and self._leads_from <= now < self._confirmed_at + self.timing.validity:
                return self._term
            return None

    def still_leads(self, term: int) -> bool:
        """Whether an action of ``term`` may still be taken: the same holding, checked recently enough."""
        with self._lock:
            return (
                self._holding
                and self._term == term
                and self.clock() < self._confirmed_at + self.timing.validity
            )

    def holder(self) -> str | None:
        """Who leads: this scaler, else the holder the management API names ("" for none), or None
        when that is not known."""
        if self.term() is not None:
            return self.identity
        return self._holder_lookup(self.queue) if self._holder_lookup else None

    def standby_note(self) -> str:
        """Why this scaler does not act now, for its tick's reason."""
        with self._lock:
            now = self.clock()
            if self._refusal is not None:
                return "standby: the broker refuses the lease"
            if not self._holding:
                return "standby: another scaler holds the lease"
            if now < self._leads_from:
                return f"standby: lease claimed, leading in {self._leads_from - now:.1f} s"
            return f"standby: lease not confirmed for {now - self._confirmed_at:.1f} s"

    @property
    def refusal(self) -> str | None:
        """Why the broker refuses this scaler the lease (its rights), or None."""
        return self._refusal

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._hold, name=f"lease {self.queue}", daemon=True)
        self._thread.start()

    def wait_settled(self, timeout: float) -> bool:
        """Wait until this scaler knows whether it leads (a first probe, or a claim and its wait)."""
        return self._settled.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop acting at once, then release the lease (the broker deletes the queue)."""
        with self._lock:
            self._stopping.set()  # a check confirmed from now on starts no new term
            self._holding = False
        session = self._session
        if session is not None:
            session.threadsafe(session.stop)
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the lease's thread --------------------------------------------------------------

    def _hold(self) -> None:
        while not self._stopping.is_set():
            try:
                keep_running(self._run_session, self._stopping, f"lease {self.queue}")
            except BrokerRefused as exc:
                self._refusal = str(exc)
                # The first outcome is the starter's to report (`run` exits 1 with it); a refusal
                # later on (rights revoked) leaves a standby that says so every time it retries.
                if self._settled.is_set():
                    log.error("%s; retrying in %.0f s", exc, defaults.RECONNECT_MAX)
                self._settled.set()
                self._stopping.wait(defaults.RECONNECT_MAX)
            except Exception:  # a bug must not leave the scaler a standby for good, silently
                log.exception("the lease's thread failed; standing again in %.0f s", defaults.RECONNECT_MAX)
                self._stopping.wait(defaults.RECONNECT_MAX)

    def _run_session(self) -> None:
        self._session = LeaseSession(
            self.nodes,
            self.queue,
            holder=self.identity,
            connection_name=connection_name("scaler", self.identity, self.queue),
            heartbeat=self.timing.heartbeat,
            check_interval=self.timing.check_interval,
            probe_interval=self.timing.probe_interval,
            on_confirmed=self._confirmed,
            on_standby=self._standby,
            on_lost=self._lost,
            clock=self.clock,
        )
        try:
            self._session.run()
        finally:
            self._lost("the lease's connection ended")

    def _confirmed(self, sent_at: float) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            self._refusal = None
            self._confirmed_at = max(self._confirmed_at, sent_at)
            if self._holding:
                return
            self._holding = True
            self._term += 1
            term = self._term
            self._leads_from = self.clock() + self.timing.takeover_wait
        self._was_standby = False
        log.info(
            "holding the lease %s; acting in %.1f s (the previous leader's validity and margin)",
            self.queue,
            self.timing.takeover_wait,
        )
        self._session.call_later(self.timing.takeover_wait, lambda: self._came_to_lead(term))

    def _came_to_lead(self, term: int) -> None:
        with self._lock:
            if not (self._holding and self._term == term):
                return
        log.info("leading pool %s (lease %s)", self.pool, self.queue)
        self._settled.set()
        self.wake.set()

    def _standby(self) -> None:
        self._refusal = None
        if not self._was_standby:
            log.info("standby: another scaler holds the lease %s", self.queue)
            self._was_standby = True
        self._settled.set()

    def _lost(self, reason: str) -> None:
        with self._lock:
            if not self._holding:
                return
            self._holding = False
        self._was_standby = False
        log.warning("lost the lease %s (%s): no longer acting", self.queue, reason)
