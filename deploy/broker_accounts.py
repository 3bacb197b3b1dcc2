"""Create the least-privilege broker users and write their passwords to var/secrets/.

The users and their rights come from virtscale.topology_spec. Talks to the RabbitMQ management
API with an administrator account (guest on loopback by default), so no password ever appears
in a process list. Idempotent: an existing password file is reused, a missing one is generated.
"""

from __future__ import annotations

import os
import secrets
import sys
import urllib.parse
from collections.abc import Iterable

import requests

from virtscale import topology_spec
from virtscale.config import OneLineParser, queue_name
from virtscale.naming import QueueNames

PROG = "deploy/broker_accounts.py"


def password_for(secrets_dir: str, user: str) -> str:
    path = os.path.join(secrets_dir, user)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    password = secrets.token_urlsafe(24)
    os.makedirs(secrets_dir, mode=0o700, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(password + "\n")
    return password


def create_accounts(
    http: requests.Session, api: str, vhost: str, users: Iterable[topology_spec.User], secrets_dir: str
) -> None:
    """Create (or update) each user with its password and tags, then grant its rights in ``vhost``."""
    quoted_vhost = urllib.parse.quote(vhost, safe="")
    for user in users:
        password = password_for(secrets_dir, user.name)
        response = http.put(
            f"{api}/users/{user.name}",
            json={"password": password, "tags": ",".join(user.tags)},
            timeout=10,
        )
        response.raise_for_status()
        response = http.put(
            f"{api}/permissions/{quoted_vhost}/{user.name}", json=user.permissions(), timeout=10
        )
        response.raise_for_status()
        print(f"broker user {user.name}: ready (password in {secrets_dir}/{user.name})")


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__)
    parser.add_argument("--management-url", metavar="URL", default="http://127.0.0.1:15672")
    parser.add_argument(
        "--admin-user",
        metavar="USER",
        default=os.environ.get("VIRTSCALE_ADMIN_USER", "guest"),
        help="management API administrator (env VIRTSCALE_ADMIN_USER; its password in "
        "VIRTSCALE_ADMIN_PASSWORD; default: guest)",
    )
    parser.add_argument("--vhost", metavar="VHOST", default="/")
    parser.add_argument("--queue", metavar="QUEUE", type=queue_name, default="licenses")
    parser.add_argument("--secrets-dir", metavar="DIR", default="var/secrets")
    args = parser.parse_args(argv)
    api = args.management_url.rstrip("/") + "/api"
    try:
        with requests.Session() as http:
            http.auth = (args.admin_user, os.environ.get("VIRTSCALE_ADMIN_PASSWORD", "guest"))
            create_accounts(
                http, api, args.vhost, topology_spec.users(QueueNames(args.queue)), args.secrets_dir
            )
    except requests.HTTPError as exc:
        print(f"{PROG}: the management API refused: {exc}", file=sys.stderr)
        return 1
    except requests.RequestException as exc:
        print(f"{PROG}: cannot reach the management API at {args.management_url}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
