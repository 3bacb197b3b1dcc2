"""Render cloud-init user-data for a worker on a stock Debian 12 / Ubuntu cloud image (a real
KVM host, a bridge network): `make cloud-init BROKER=10.0.0.5 NAME=worker-1`.

The worker code travels inside the user-data (a base64 tarball), so the guest downloads
nothing but Debian's python3-pika, python3-bcrypt and python3-tenacity from its mirror; the
broker password goes to a root-only file and reaches the service as a systemd credential.
The user-data is built as data and written by a YAML emitter, so every value (the password
above all) is quoted as YAML needs, whatever characters it holds.
"""

from __future__ import annotations

import argparse
import base64
import io
import re
import sys
import tarfile
from pathlib import Path

import yaml

from virtscale.config import DNS_LABEL, OneLineParser, host_or_address, port_number, queue_name
from virtscale.worker.cli import bcrypt_cost

ROOT = Path(__file__).resolve().parent.parent
PROG = "deploy/cloud_init.py"

#: What the guest installs from its own Debian mirror: the worker's dependencies and nftables.
PACKAGES = [
    "python3",
    "python3-pika",
    "python3-bcrypt",
    "python3-cffi-backend",
    "python3-tenacity",
    "nftables",
]

#: Where the egress rule lives, loaded at every boot through NFTABLES_INCLUDE.
EGRESS_RULES_PATH = "/etc/nftables.d/virtscale.nft"
#: The ruleset nftables.service loads at boot. Debian's (and Ubuntu's) includes no other file.
NFTABLES_CONF = "/etc/nftables.conf"
#: The line that makes nftables.service load the rule files of /etc/nftables.d too.
NFTABLES_INCLUDE = 'include "/etc/nftables.d/*.nft"'

#: The worker name is the guest's hostname (one label) and goes into the env file as it is.
HOSTNAME = re.compile(DNS_LABEL)
#: A broker user name as RabbitMQ users are named here (it goes into a URL and the env file).
USER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def worker_name(text: str) -> str:
    if not HOSTNAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must be a host name (letters, digits, -), got {text!r}")
    return text


def broker_host(text: str) -> str:
    """An IPv4 address or a DNS name: the nftables rule matches it with `ip daddr`."""
    return host_or_address(text, ipv4_only=True)


def broker_user(text: str) -> str:
    if not USER_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must be 1-64 letters, digits or . _ -, got {text!r}")
    return text


def code_tarball() -> str:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        # Laid out as installed: virtscale/ and virtscale/worker/ (setup.cfg's package_dir).
        for folder, installed_as in (("virtscale", "virtscale"), ("worker", "virtscale/worker")):
            for path in sorted((ROOT / folder).glob("*.py")):
                archive.add(path, arcname=f"virtscale/{installed_as}/{path.name}")
    return base64.b64encode(buffer.getvalue()).decode()


def worker_env(args: argparse.Namespace) -> str:
    """The service's EnvironmentFile; its values are checked by the argument types above."""
    settings = {
        "VIRTSCALE_WORKER_NAME": args.name,
        "VIRTSCALE_AMQP_URL": f"amqp://{args.user}@{args.broker}:{args.port}/%2F",
        "VIRTSCALE_QUEUE": args.queue,
        "VIRTSCALE_COST": args.cost,
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def egress_rules(broker: str, port: int) -> str:
    """nftables: on the broker's host the guest may reach the broker's port and nothing else.
    The file replaces its own table (declare, delete, define), so loading it again, by hand or
    through nftables.conf, never leaves the rule twice."""
    return (
        "table inet virtscale\n"
        "delete table inet virtscale\n"
        "table inet virtscale {\n"
        "  chain output {\n"
        "    type filter hook output priority 0; policy accept;\n"
        f'    ip daddr {broker} tcp dport != {port} reject comment "only the broker\'s port on its host"\n'
        "  }\n"
        "}\n"
    )


def persist_rules_command(conf: str = NFTABLES_CONF) -> list[str]:
    """The shell step that adds NFTABLES_INCLUDE to ``conf`` once, so the egress rule survives a
    reboot: nftables.service loads only that file, which by default includes nothing."""
    return ["sh", "-c", f"grep -qxF '{NFTABLES_INCLUDE}' {conf} || echo '{NFTABLES_INCLUDE}' >> {conf}"]


def write_file(path: str, content: str, permissions: str, encoding: str | None = None) -> dict:
    entry = {"path": path}
    if encoding:
        entry["encoding"] = encoding
    return {**entry, "permissions": permissions, "content": content}


def user_data(args: argparse.Namespace, password: str, code: str, unit: str) -> dict:
    """The cloud-config document: packages, the files the worker needs, and the commands that
    unpack and start it."""
    tmpfiles = (
        "# The unit reads /run/virtscale (in the VM image it is made at boot from fw_cfg).\n"
        "L+ /run/virtscale - - - - /etc/virtscale\n"
    )
    return {
        "hostname": args.name,
        "package_update": True,
        "packages": PACKAGES,
        "write_files": [
            write_file("/opt/virtscale.tar.gz", code, "0644", encoding="b64"),
            write_file("/etc/virtscale/worker.env", worker_env(args), "0644"),
            write_file("/etc/virtscale/password", password, "0600"),
            write_file("/etc/systemd/system/virtscale-worker.service", unit, "0644", encoding="b64"),
            write_file("/etc/tmpfiles.d/virtscale.conf", tmpfiles, "0644"),
            write_file(EGRESS_RULES_PATH, egress_rules(args.broker, args.port), "0644"),
        ],
        "runcmd": [
            ["tar", "-xzf", "/opt/virtscale.tar.gz", "-C", "/opt"],
            ["systemd-tmpfiles", "--create", "/etc/tmpfiles.d/virtscale.conf"],
            # The egress rule now, and at every boot (nftables.service, through the include).
            ["nft", "-f", EGRESS_RULES_PATH],
            persist_rules_command(),
            ["systemctl", "enable", "nftables.service"],
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", "virtscale-worker.service"],
        ],
    }


def render(document: dict) -> str:
    """cloud-init's header line, then the document as YAML (the emitter quotes every value)."""
    return "#cloud-config\n" + yaml.safe_dump(document, sort_keys=False, width=100, allow_unicode=True)


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description=__doc__)
    parser.add_argument("--name", required=True, type=worker_name, help="worker name (the domain name)")
    parser.add_argument(
        "--broker", required=True, type=broker_host, help="broker address as the guest sees it"
    )
    parser.add_argument("--port", type=port_number, default=5672)
    parser.add_argument("--user", type=broker_user, default="worker")
    parser.add_argument("--password-file", metavar="FILE", default="var/secrets/worker")
    parser.add_argument("--queue", type=queue_name, default="licenses")
    parser.add_argument("--cost", type=bcrypt_cost, default=12)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        password = Path(args.password_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        parser.error(f"--password-file {args.password_file!r} cannot be read: {exc.strerror} (make broker)")
    unit = base64.b64encode((ROOT / "deploy" / "virtscale-worker.service").read_bytes()).decode()
    sys.stdout.write(render(user_data(args, password, code_tarball(), unit)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
