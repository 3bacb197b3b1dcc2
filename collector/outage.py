"""What the collector says while its store cannot write: the first failure at once, then one
line per interval while it lasts (not one per retry), and one line when writes work again."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from virtscale import defaults

log = logging.getLogger(__name__)


class StoreOutage:
    """Used by the writer thread only. ``clock`` is time.monotonic's shape (tests inject one)."""

    def __init__(
        self,
        interval: float = defaults.STORE_OUTAGE_REPORT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.interval = interval
        self._clock = clock
        self._since: float | None = None
        self._reported_at = 0.0
        self.failures = 0

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    def failed(self, error: BaseException, waiting: int, retry_in: float) -> None:
        """A write failed; ``waiting`` results of that batch stay unacked until it succeeds."""
        now = self._clock()
        self.failures += 1
        if self._since is None:
            self._since, self._reported_at = now, now
            log.warning(
                "%s; %d result(s) wait unacked; retrying in %.1f s with backoff", error, waiting, retry_in
            )
        elif now - self._reported_at >= self.interval:
            self._reported_at = now
            log.warning(
                "store still cannot write after %.0f s (%d attempts): %s; %d result(s) wait unacked",
                now - self._since,
                self.failures,
                error,
                waiting,
            )

    def succeeded(self) -> None:
        """A write committed: report the end of an outage, if there was one."""
        if self._since is None:
            return
        seconds = self._clock() - self._since
        log.info("store writes again after %.0f s and %d failed attempt(s)", seconds, self.failures)
        self._since = None
        self.failures = 0
