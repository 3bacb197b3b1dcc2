"""The queue as the scaler sees it, from the RabbitMQ management HTTP API (of any node of a
cluster that answers: virtscale.management).

A reading the broker did not make is missing, never zero. The management API answers without
a queue's counts for some seconds after a broker restart, and for a new queue until its first
statistics (about 6 s after the declare here, however many jobs were published meanwhile). Such
a reading is degraded, says which fields were missing, and takes the exact ready count and the
consumer count from a passive queue declare over AMQP. The same declare stands in when the API
cannot be reached at all. A broker that refuses the credentials makes the reading ``refused``.
"""

from __future__ import annotations

import logging
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import requests

from virtscale.broker import (
    HOLDER_ARGUMENT,
    BrokerRefused,
    BrokerUnavailable,
    BrokerUrls,
    Nodes,
    queue_counts,
)
from virtscale.management import ManagementApi
from virtscale.naming import connection_name, worker_from_consumer_tag

log = logging.getLogger(__name__)

#: The queue object's count fields. Each one can be absent (a broker restart, a new queue).
COUNT_FIELDS = ("messages_ready", "messages_unacknowledged", "consumers")

#: The queue object's consumer list: which workers consume. Absent after a broker restart.
CONSUMER_LIST_FIELD = "consumer_details"

#: HTTP statuses with which the management API refuses the user (password, or no management tag).
REFUSED_STATUSES = frozenset({401, 403})

#: Seconds after the counts (re)appear during which a zero depth is checked by a passive declare.
#: The API shows the queue's last statistics emission (every 5 s by RabbitMQ's default), so its
#: first counts, just after a new queue's or a restarted broker's, can predate jobs already
#: published; two emission intervals are enough for a fresh one to have arrived.
STATS_SETTLE = 10.0


@dataclass(frozen=True)
class QueueReading:
    ready: int | None
    unacked: int | None
    consumers: int | None
    #: Jobs published per second and acked per second, as the broker measures them; None when the
    #: broker reported no such rate (never 0.0 in its place).
    publish_rate: float | None = None
    ack_rate: float | None = None
    #: Worker names (domain names for VM workers) with a consumer on the queue.
    consuming: frozenset[str] = field(default_factory=frozenset)
    degraded: bool = False
    problem: str | None = None
    #: Whether `consuming` is the broker's consumer list; False when it was missing, so an
    #: empty `consuming` says nothing about who consumes.
    consumers_known: bool = True
    #: The broker refused the scaler's credentials or request (management API 401/403, AMQP
    #: ACCESS_REFUSED, a queue that is not there): a configuration to fix, not an outage.
    refused: bool = False

    @property
    def depth(self) -> int | None:
        """Ready + unacknowledged: the work not yet finished. When only the ready count is
        known (a degraded reading), that count: a lower bound, never a reason to scale down."""
        if self.ready is None:
            return None
        return self.ready + (self.unacked or 0)


def _count(body: dict, name: str) -> int | None:
    value = body.get(name)
    return None if isinstance(value, bool) or not isinstance(value, int | float) else int(value)


def _rate(body: dict, details: str) -> float | None:
    """A message_stats rate (``publish_details``, ``ack_details``); None when not reported."""
    stats = body.get("message_stats")
    section = stats.get(details) if isinstance(stats, dict) else None
    rate = section.get("rate") if isinstance(section, dict) else None
    return None if isinstance(rate, bool) or not isinstance(rate, int | float) else float(rate)


def _consuming(body: dict) -> frozenset[str] | None:
    """Worker names on the consumer list; None when the list is missing."""
    consumers = body.get(CONSUMER_LIST_FIELD)
    if not isinstance(consumers, list):
        return None
    names = set()
    for consumer in consumers:
        tag = consumer.get("consumer_tag") if isinstance(consumer, dict) else None
        name = worker_from_consumer_tag(tag or "")
        if name is not None:
            names.add(name)
    return frozenset(names)


def _join(*parts: str | None) -> str:
    return "; ".join(part for part in parts if part)


class QueueMonitor:
    def __init__(
        self,
        management_urls: str | Iterable[str],
        auth: tuple[str, str],
        vhost: str,
        queue: str,
        amqp_urls: BrokerUrls,
        verify: bool | str = True,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.queue = queue
        #: The broker's nodes for the passive declares; they go to the one that answered last.
        self.amqp_nodes = Nodes.of(amqp_urls)
        #: How the passive declares' connections show in the management UI.
        self.connection_name = connection_name("scaler", socket.gethostname(), queue)
        self.clock = clock
        self.api = ManagementApi(management_urls, auth, verify)
        # The vhost and queue are path segments: "/" must travel as %2F.
        self.queues_path = f"/api/queues/{urllib.parse.quote(vhost, safe='')}"
        self.queue_path = f"{self.queues_path}/{urllib.parse.quote(queue, safe='')}"
        #: Clock time since which every reading had the API's full counts (None: the last had not).
        self._counts_since: float | None = None

    def read(self) -> QueueReading:
        try:
            response = self.api.get(self.queue_path)
        except requests.RequestException as exc:
            return self._fallback(f"management API: {type(exc).__name__}: {str(exc)[:200]}")
        if response.status_code in REFUSED_STATUSES:
            return self._fallback(self._refusal_message(response), refused=True)
        try:
            response.raise_for_status()
            body = response.json()
        except (requests.RequestException, ValueError) as exc:
            return self._fallback(f"management API: {type(exc).__name__}: {str(exc)[:200]}")
        if not isinstance(body, dict):
            return self._fallback(f"management API: not a queue object for {self.queue}")
        return self._parse(body)

    def lease_holder(self, lease: str) -> str | None:
        """Who holds the lease queue ``lease`` (virtscale.scaler.leadership): the holder's name,
        "" when no scaler holds it, None when the management API did not say."""
        try:
            response = self.api.get(f"{self.queues_path}/{urllib.parse.quote(lease, safe='')}")
            if response.status_code == 404:
                return ""
            response.raise_for_status()
            holder = response.json().get("arguments", {}).get(HOLDER_ARGUMENT)
        except (requests.RequestException, ValueError, AttributeError) as exc:
            log.debug("the holder of %s not read: %s", lease, type(exc).__name__)
            return None
        return holder if isinstance(holder, str) else None

    def refusal(self) -> str | None:
        """At start-up: why the broker refuses the scaler (management API or AMQP), or None.
        A broker that does not answer is no refusal: the loop runs degraded until it does."""
        unreachable = []
        try:
            response = self.api.get(self.queue_path)
        except requests.RequestException as exc:
            unreachable.append(f"management API at {self.api} unreachable ({type(exc).__name__})")
        else:
            if response.status_code in REFUSED_STATUSES:
                return self._refusal_message(response)
        try:
            queue_counts(self.amqp_nodes, self.queue, self.connection_name)
        except BrokerRefused as exc:
            return str(exc)
        except BrokerUnavailable as exc:
            unreachable.append(str(exc))
        for problem in unreachable:
            log.warning("%s; will keep trying", problem)
        return None

    def _refusal_message(self, response: requests.Response) -> str:
        return (
            f"management API at {self.api} refused the credentials "
            f"({response.status_code} {response.reason}): check the user and password of --amqp-url "
            "(or --password-file) and that the user has the monitoring tag"
        )

    def _parse(self, body: dict) -> QueueReading:
        counts = {name: _count(body, name) for name in COUNT_FIELDS}
        consuming = _consuming(body)
        missing = [name for name, value in counts.items() if value is None]
        if consuming is None:
            missing.append(CONSUMER_LIST_FIELD)
        reading = QueueReading(
            ready=counts["messages_ready"],
            unacked=counts["messages_unacknowledged"],
            consumers=counts["consumers"],
            publish_rate=_rate(body, "publish_details"),
            ack_rate=_rate(body, "ack_details"),
            consuming=consuming or frozenset(),
            degraded=bool(missing),
            problem=(
                f"management API: no {', '.join(missing)} for queue {self.queue} "
                "(statistics not ready: a new queue or a broker restart)"
                if missing
                else None
            ),
            consumers_known=consuming is not None and counts["consumers"] is not None,
        )
        settled = self._counts_settled(complete=not missing)
        if reading.ready is None or reading.consumers is None:
            return self._with_amqp_counts(reading)
        if reading.depth == 0 and not settled:
            return self._confirm_empty(reading)
        return reading

    def _counts_settled(self, complete: bool) -> bool:
        """Whether the API has given full counts for STATS_SETTLE seconds, this reading included."""
        now = self.clock()
        if not complete:
            self._counts_since = None
            return False
        if self._counts_since is None:
            self._counts_since = now
        return now - self._counts_since >= STATS_SETTLE

    def _amqp_counts(self) -> tuple[int, int] | BrokerRefused | BrokerUnavailable:
        try:
            return queue_counts(self.amqp_nodes, self.queue, self.connection_name)
        except (BrokerRefused, BrokerUnavailable) as exc:
            return exc

    def _with_amqp_counts(self, reading: QueueReading) -> QueueReading:
        """The missing ready and consumer counts from a passive declare (exact, over AMQP)."""
        counts = self._amqp_counts()
        if isinstance(counts, Exception):
            return replace(
                reading,
                refused=reading.refused or isinstance(counts, BrokerRefused),
                problem=_join(reading.problem, f"AMQP: {counts}"),
            )
        ready, consumers = counts
        return replace(
            reading,
            ready=ready if reading.ready is None else reading.ready,
            consumers=consumers if reading.consumers is None else reading.consumers,
            problem=_join(reading.problem, "ready count from AMQP"),
        )

    def _confirm_empty(self, reading: QueueReading) -> QueueReading:
        """An empty queue in the API's first counts, checked by a passive declare: those counts
        may predate the last publishes. An empty queue that cannot be checked is not trusted."""
        counts = self._amqp_counts()
        if isinstance(counts, Exception):
            problem = f"management API's first counts say empty, not confirmed: AMQP: {counts}"
            return replace(reading, degraded=True, refused=isinstance(counts, BrokerRefused), problem=problem)
        ready, _consumers = counts
        if ready == 0:
            return reading
        return replace(
            reading,
            ready=ready,
            degraded=True,
            problem=f"management API's counts lag the queue (ready 0, AMQP: {ready}); ready count from AMQP",
        )

    def _fallback(self, problem: str, refused: bool = False) -> QueueReading:
        self._counts_settled(complete=False)
        unknown = QueueReading(
            None, None, None, degraded=True, problem=problem, consumers_known=False, refused=refused
        )
        return self._with_amqp_counts(unknown)
