"""The RabbitMQ management HTTP API of one broker, on whichever of its nodes answers.

Every node of a cluster serves the same API over the whole cluster, so a call may go to any of
them: it goes to the node that answered last, and on to the next when that one cannot be reached
or fails (5xx). The scaler's queue readings and `virtscale-broker declare`'s policy both go
through here. Not in the worker image: it needs requests.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import requests

from virtscale.config import redact_url

log = logging.getLogger(__name__)

#: Seconds one HTTP call to one node may take before the next node is tried.
HTTP_TIMEOUT = 3.0


class ManagementError(Exception):
    """The management API did not do what was asked (unreachable, refused, or said no); the
    message names the nodes and the reason."""


class ManagementApi:
    def __init__(
        self,
        urls: str | Iterable[str],
        auth: tuple[str, str],
        verify: bool | str = True,
        timeout: float = HTTP_TIMEOUT,
    ):
        self.urls = tuple(url.rstrip("/") for url in ((urls,) if isinstance(urls, str) else urls))
        if not self.urls:
            raise ValueError("no management API URL")
        self.timeout = timeout
        self._current = 0
        self._http = requests.Session()
        self._http.auth = auth
        self._http.verify = verify

    def __str__(self) -> str:
        """The URLs for messages, passwords hidden."""
        return ", ".join(redact_url(url) for url in self.urls)

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        """``method`` on ``path`` (``/api/...``) at the first node that answers without a server
        error. Every node failing: the last server error's response, else requests'
        ConnectionError naming each node's problem."""
        problems = []
        response = None
        count = len(self.urls)
        for index in [(self._current + step) % count for step in range(count)]:
            url = self.urls[index]
            try:
                response = self._http.request(method, url + path, timeout=self.timeout, **kwargs)
            except requests.RequestException as exc:
                problems.append(f"{redact_url(url)}: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            if response.status_code < 500:
                if index != self._current:
                    log.info("management API: now reading from %s", redact_url(url))
                self._current = index
                return response
            problems.append(f"{redact_url(url)}: {response.status_code} {response.reason}")
        if response is not None:
            return response
        raise requests.ConnectionError("; ".join(problems))

    def get(self, path: str) -> requests.Response:
        return self.request("GET", path)

    def change(
        self, method: str, path: str, what: str, *, missing_ok: bool = False, **kwargs
    ) -> requests.Response:
        """A call that changes something (PUT, DELETE): ManagementError with the broker's reason
        unless it answered 2xx, or 404 with ``missing_ok`` (a DELETE of what is not there)."""
        try:
            response = self.request(method, path, **kwargs)
        except requests.RequestException as exc:
            raise ManagementError(f"{what}: management API unreachable ({exc})") from None
        if response.ok or (missing_ok and response.status_code == 404):
            return response
        if response.status_code in (401, 403):
            raise ManagementError(
                f"{what}: the management API at {self} refused the user ({response.status_code}): "
                "it needs the administrator or policymaker tag"
            )
        raise ManagementError(f"{what}: the management API said {response.status_code} {_reason(response)}")

    def close(self) -> None:
        self._http.close()


def _reason(response: requests.Response) -> str:
    """The broker's own words for a refused call (its JSON ``reason``), else the HTTP reason."""
    try:
        reason = response.json().get("reason")
    except (ValueError, AttributeError):
        reason = None
    return " ".join(str(reason or response.reason).split())[:300]
