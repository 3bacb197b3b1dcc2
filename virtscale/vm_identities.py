"""Each pool VM's own broker user, made with its domain and removed with it, through the
RabbitMQ management API as the provisioner (virtscale.topology_spec.PROVISIONER).

A VM's user is ``worker.<domain>`` with a random password that reaches the guest on its settings
volume only; its rights are topology_spec.vm_user_rights (consume its jobs, publish to the
results exchange, declare nothing). Removing it also closes its connections at once: RabbitMQ
keeps an open connection of a deleted user until it closes, so a guest that is gone, or one that
must be cut off, would otherwise go on consuming and publishing.
"""

from __future__ import annotations

import logging
import secrets
import urllib.parse

import requests

from virtscale import topology_spec
from virtscale.management import ManagementApi, ManagementError
from virtscale.naming import QueueNames, vm_user

log = logging.getLogger(__name__)

#: Bytes of randomness in a VM's password (URL-safe base64, so 43 characters).
PASSWORD_BYTES = 32

#: Why a removed VM's connections were closed, as the management UI and the guest's log show it.
CLOSE_REASON = "virtscale: this VM's broker user was removed"


class VmIdentities:
    """Create and remove VMs' broker users in one vhost, for one job queue."""

    def __init__(self, api: ManagementApi, names: QueueNames, vhost: str = "/"):
        self.api = api
        self.names = names
        self.vhost = vhost

    def create(self, domain: str) -> tuple[str, str]:
        """A new user for ``domain`` (one left from before gets a new password): (user, password).
        Raises ManagementError."""
        rights = topology_spec.vm_user_rights(self.names, domain)
        password = secrets.token_urlsafe(PASSWORD_BYTES)
        user = _quote(rights.name)
        self.api.change(
            "PUT", f"/api/users/{user}", f"broker user {rights.name}", json={"password": password, "tags": ""}
        )
        self.api.change(
            "PUT",
            f"/api/permissions/{_quote(self.vhost)}/{user}",
            f"rights of broker user {rights.name}",
            json=rights.permissions(),
        )
        log.info("broker user %s created for %s", rights.name, domain)
        return rights.name, password

    def remove(self, domain: str) -> int:
        """Delete ``domain``'s user (if any) and close its open connections; returns how many
        were closed. Raises ManagementError."""
        user = vm_user(domain)
        self.api.change("DELETE", f"/api/users/{_quote(user)}", f"broker user {user}", missing_ok=True)
        closed = self.close_connections(user)
        log.info("broker user %s of %s removed, %d connection(s) closed", user, domain, closed)
        return closed

    def close_connections(self, user: str) -> int:
        response = self._read("/api/connections?columns=name,user", f"connections of {user}")
        names = [entry["name"] for entry in response.json() if entry.get("user") == user]
        for name in names:
            self.api.change(
                "DELETE",
                f"/api/connections/{_quote(name)}",
                f"connection of {user}",
                missing_ok=True,
                headers={"X-Reason": CLOSE_REASON},
            )
        return len(names)

    def _read(self, path: str, what: str) -> requests.Response:
        try:
            response = self.api.get(path)
        except requests.RequestException as exc:
            raise ManagementError(f"{what}: management API unreachable ({exc})") from None
        if not response.ok:
            raise ManagementError(f"{what}: the management API said {response.status_code}")
        return response


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")
