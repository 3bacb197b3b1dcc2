"""Create the least-privilege broker users and write their passwords to var/secrets/.

Talks to the RabbitMQ management API with an administrator account (guest on loopback
by default), so no password ever appears in a process list. Idempotent: an existing
password file is reused, a missing one is generated.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
import urllib.parse

import requests


def permissions(queue: str) -> dict[str, dict]:
    """Each component's rights: (configure, write, read) regexes and user tags."""
    jobs, results = re.escape(queue), re.escape(f"{queue}.hashed")
    return {
        "producer": {"configure": "^$", "write": r"^amq\.default$", "read": "^$", "tags": ""},
        "worker": {"configure": "^$", "write": r"^amq\.default$", "read": f"^{jobs}$", "tags": ""},
        "collector": {
            "configure": "^$",
            "write": r"^amq\.default$",
            "read": f"^{results}$",
            "tags": "",
        },
        # The scaler only watches: the management API with the monitoring tag, no AMQP rights.
        "scaler": {"configure": "^$", "write": "^$", "read": "^$", "tags": "monitoring"},
    }


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--management-url", default="http://127.0.0.1:15672")
    parser.add_argument("--admin-user", default=os.environ.get("VIRTSCALE_ADMIN_USER", "guest"))
    parser.add_argument("--vhost", default="/")
    parser.add_argument("--queue", default="licenses")
    parser.add_argument("--secrets-dir", default="var/secrets")
    args = parser.parse_args(argv)
    admin = (args.admin_user, os.environ.get("VIRTSCALE_ADMIN_PASSWORD", "guest"))
    vhost = urllib.parse.quote(args.vhost, safe="")
    api = args.management_url.rstrip("/") + "/api"
    with requests.Session() as http:
        http.auth = admin
        for user, rights in permissions(args.queue).items():
            password = password_for(args.secrets_dir, user)
            response = http.put(
                f"{api}/users/{user}",
                json={"password": password, "tags": rights["tags"]},
                timeout=10,
            )
            response.raise_for_status()
            grant = {key: rights[key] for key in ("configure", "write", "read")}
            response = http.put(f"{api}/permissions/{vhost}/{user}", json=grant, timeout=10)
            response.raise_for_status()
            print(f"broker user {user}: ready (password in {args.secrets_dir}/{user})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
