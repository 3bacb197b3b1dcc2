"""Create the collector's PostgreSQL role and database when missing, write the role's password
to var/secrets/ (0600, like the broker users') and print the store URL, without the password.

Runs as root on the database host (make postgres, after deploy/postgres.sh has the server
running): it speaks to the server as its superuser through ``runuser -u postgres -- psql`` on
the local socket, so it needs no password of its own, and hands psql everything on standard
input, so nothing shows in a process list. The password reaches the server only as a
SCRAM-SHA-256 verifier, never in plain text (not even in a statement log). Idempotent: an
existing password file is reused, and set on the role again; a missing one is generated.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import subprocess
import sys
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deploy.broker_accounts import password_for  # noqa: E402
from virtscale import defaults  # noqa: E402
from virtscale.config import OneLineParser  # noqa: E402

PROG = "deploy/postgres_account.py"

#: PBKDF2 rounds of the verifier: PostgreSQL's own default (scram_iterations).
SCRAM_ITERATIONS = 4096

#: Role and database names this script creates: plain identifiers, so they need no quoting.
NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

SQL = r"""
SELECT format('CREATE ROLE %I LOGIN', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
ALTER ROLE :"role" LOGIN PASSWORD :'verifier';
SELECT format('CREATE DATABASE %I OWNER %I', :'database', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'database') \gexec
"""


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """PostgreSQL's stored form of a SCRAM-SHA-256 password (RFC 5802, 7677), what its
    ``\\password`` sends: ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``.
    The password must be printable ASCII (SASLprep leaves it as it is)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def encode(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{encode(salt)}${encode(stored_key)}:{encode(server_key)}"


def account_of(parser: OneLineParser, url: str) -> tuple[str, str, int]:
    """(role, database, port) of a postgresql://ROLE@HOST:PORT/DATABASE URL without a password."""
    parts = urllib.parse.urlsplit(url)
    role, database = parts.username or "", parts.path.lstrip("/")
    if parts.scheme not in ("postgresql", "postgres") or parts.password is not None or parts.query:
        parser.error(f"--url must look like postgresql://ROLE@HOST:PORT/DATABASE, got {url!r}")
    if not NAME.fullmatch(role) or not NAME.fullmatch(database):
        parser.error(f"--url: role and database must be lowercase identifiers, got {url!r}")
    return role, database, parts.port or 5432


def set_up(role: str, database: str, port: int, verifier: str) -> None:
    """The role (with the verifier as its password) and its database, through psql as postgres."""
    script = f"\\set role {role}\n\\set database {database}\n\\set verifier '{verifier}'\n{SQL}"
    subprocess.run(
        ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-p", str(port)],
        input=script,
        text=True,
        check=True,
        cwd="/",
        stdout=subprocess.DEVNULL,
    )


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__)
    parser.add_argument(
        "--url",
        metavar="URL",
        default=defaults.DEV_POSTGRES_URL,
        help="the store URL to make work: its role, database and port (default: %(default)s)",
    )
    parser.add_argument(
        "--password-file",
        metavar="FILE",
        default=defaults.DEV_POSTGRES_PASSWORD_FILE,
        help="where the role's password is kept (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    role, database, port = account_of(parser, args.url)
    directory, name = os.path.split(args.password_file)
    password = password_for(directory or ".", name)
    if not (password.isascii() and password.isprintable()):
        parser.error(f"--password-file {args.password_file!r}: the password must be printable ASCII")
    try:
        set_up(role, database, port, scram_verifier(password))
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"{PROG}: creating role {role} and database {database} failed: {exc}", file=sys.stderr)
        return 1
    print(f"postgres: role {role} and database {database} ready (password in {args.password_file})")
    print(args.url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
