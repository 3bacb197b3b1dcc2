"""The queue as the scaler sees it, from the RabbitMQ management HTTP API.

If the API cannot be reached, a passive queue declare over AMQP still gives the ready
count; such a reading is marked degraded (no unacked count, rates or consumers).
"""

from __future__ import annotations

import logging
import urllib.parse
from dataclasses import dataclass, field

import requests

from virtscale.broker import BrokerRefused, BrokerUnavailable, queue_counts
from virtscale.naming import worker_from_consumer_tag

log = logging.getLogger(__name__)

#: Seconds an HTTP call to the management API may take before the tick goes on without it.
HTTP_TIMEOUT = 3.0


@dataclass(frozen=True)
class QueueReading:
    ready: int | None
    unacked: int | None
    consumers: int | None
    #: Jobs published per second and acked per second, as the broker measures them.
    publish_rate: float | None = None
    ack_rate: float | None = None
    #: Worker names (domain names for VM workers) with a consumer on the queue.
    consuming: frozenset[str] = field(default_factory=frozenset)
    degraded: bool = False
    problem: str | None = None

    @property
    def depth(self) -> int | None:
        """Ready + unacknowledged: the work not yet finished."""
        if self.ready is None:
            return None
        return self.ready + (self.unacked or 0)


class QueueMonitor:
    def __init__(
        self,
        management_url: str,
        auth: tuple[str, str],
        vhost: str,
        queue: str,
        amqp_url: str,
        verify: bool | str = True,
    ):
        self.queue = queue
        self.amqp_url = amqp_url
        base = management_url.rstrip("/")
        # The vhost and queue are path segments: "/" must travel as %2F.
        self.queue_endpoint = (
            f"{base}/api/queues/{urllib.parse.quote(vhost, safe='')}/{urllib.parse.quote(queue, safe='')}"
        )
        self._http = requests.Session()
        self._http.auth = auth
        self._http.verify = verify

    def read(self) -> QueueReading:
        try:
            response = self._http.get(self.queue_endpoint, timeout=HTTP_TIMEOUT)
            response.raise_for_status()
            return self._parse(response.json())
        except (requests.RequestException, ValueError) as exc:
            problem = f"management API: {type(exc).__name__}: {str(exc)[:200]}"
        return self._fallback(problem)

    def _parse(self, body: dict) -> QueueReading:
        stats = body.get("message_stats") or {}
        consuming = set()
        for consumer in body.get("consumer_details") or []:
            name = worker_from_consumer_tag(consumer.get("consumer_tag") or "")
            if name is not None:
                consuming.add(name)
        return QueueReading(
            ready=int(body.get("messages_ready", 0)),
            unacked=int(body.get("messages_unacknowledged", 0)),
            consumers=int(body.get("consumers", 0)),
            publish_rate=float((stats.get("publish_details") or {}).get("rate", 0.0)),
            ack_rate=float((stats.get("ack_details") or {}).get("rate", 0.0)),
            consuming=frozenset(consuming),
        )

    def _fallback(self, problem: str) -> QueueReading:
        try:
            ready, consumers = queue_counts(self.amqp_url, self.queue)
        except (BrokerUnavailable, BrokerRefused) as exc:
            return QueueReading(None, None, None, degraded=True, problem=f"{problem}; AMQP: {exc}")
        return QueueReading(ready, None, consumers, degraded=True, problem=problem)
