"""Give RabbitMQ a TLS listener (5671) with a CA of its own: `make broker TLS=1`.

Makes, once, a CA and a server certificate signed by it under var/secrets/tls/ (the CA's key
never leaves it), installs the server's certificate and key where RabbitMQ can read them
(/etc/rabbitmq/tls/), and writes a marked block into /etc/rabbitmq/rabbitmq.conf. RabbitMQ reads
its configuration only when it starts, so it is restarted, but only when the block changed.

The certificate names the addresses guests reach the broker at: 10.0.2.2 (QEMU user-mode
networking), 192.168.122.1 (libvirt's default bridge), the loopback, and --san for more. Guests
get ca.pem with their settings (deploy/template.py --ca-file) and verify the broker against it.

The plaintext listener: --plaintext none closes it. A guest on a bridge cannot reach a listener
on the loopback (this machine's is there), but a guest on user-mode networking arrives on the
host's loopback, so only `none` shuts plaintext to it, and to every host component with it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from virtscale.config import OneLineParser

PROG = "deploy/broker_tls.py"
BEGIN = "# BEGIN virtscale TLS (deploy/broker_tls.py; edits inside are overwritten)"
END = "# END virtscale TLS"
#: Addresses at which guests reach the broker on this machine.
GUEST_ADDRESSES = ("10.0.2.2", "192.168.122.1", "127.0.0.1")
#: Days the CA and the server certificate are valid.
CA_DAYS, SERVER_DAYS = 3650, 825
TLS_PORT = 5671


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certificates(directory: Path, names: list[str]) -> None:
    """ca.key/ca.pem and server.key/server.pem in ``directory``; what exists is kept."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_key, ca_pem = directory / "ca.key", directory / "ca.pem"
    if not ca_pem.exists():
        openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(CA_DAYS),
            "-keyout", str(ca_key), "-out", str(ca_pem), "-subj", "/CN=virtscale broker CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        print(f"broker TLS: CA made ({ca_pem})")
    server_key, server_pem = directory / "server.key", directory / "server.pem"
    if not server_pem.exists():
        san = ",".join(
            f"IP:{name}" if name.replace(".", "").isdigit() or ":" in name else f"DNS:{name}"
            for name in names
        )
        with tempfile.TemporaryDirectory() as work:
            csr, extensions = Path(work) / "server.csr", Path(work) / "server.ext"
            extensions.write_text(
                f"subjectAltName={san}\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n"
            )
            openssl(
                "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(server_key), "-out", str(csr),
                "-subj", "/CN=virtscale broker",
            )  # fmt: skip
            openssl(
                "x509", "-req", "-in", str(csr), "-CA", str(ca_pem), "-CAkey", str(ca_key),
                "-CAcreateserial", "-days", str(SERVER_DAYS), "-out", str(server_pem),
                "-extfile", str(extensions),
            )  # fmt: skip
        print(f"broker TLS: server certificate made for {san}")
    for path in directory.iterdir():
        path.chmod(0o600)
    ca_pem.chmod(0o644)  # public: guests and clients get it


def install(directory: Path, target: Path, owner: str) -> bool:
    """Copy what RabbitMQ needs into ``target``, readable by ``owner`` only; True if it changed."""
    target.mkdir(mode=0o750, parents=True, exist_ok=True)
    changed = False
    for name in ("ca.pem", "server.pem", "server.key"):
        source, copy = directory / name, target / name
        if not copy.exists() or copy.read_bytes() != source.read_bytes():
            shutil.copyfile(source, copy)
            changed = True
        os.chmod(copy, 0o600 if name.endswith(".key") else 0o644)
        shutil.chown(copy, owner, owner)
    shutil.chown(target, owner, owner)
    return changed


def config_block(target: Path, port: int, plaintext: str) -> str:
    lines = [
        BEGIN,
        f"listeners.ssl.default = {port}",
        f"ssl_options.cacertfile = {target / 'ca.pem'}",
        f"ssl_options.certfile = {target / 'server.pem'}",
        f"ssl_options.keyfile = {target / 'server.key'}",
        # Clients authenticate with their user and password; the broker is the one verified.
        "ssl_options.verify = verify_none",
        "ssl_options.fail_if_no_peer_cert = false",
        "ssl_options.versions.1 = tlsv1.3",
        "ssl_options.versions.2 = tlsv1.2",
    ]
    if plaintext == "none":
        lines.append("listeners.tcp = none")
    lines.append(END)
    return "\n".join(lines) + "\n"


def with_block(text: str, block: str) -> str:
    """``text`` with the marked block replaced by ``block`` (appended when absent)."""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        return head + block + tail
    return text + ("" if text.endswith("\n") or not text else "\n") + block


def restart_rabbitmq() -> None:
    """Under systemd when it runs RabbitMQ, else as setup.sh starts it (detached)."""
    managed = (
        subprocess.run(["systemctl", "is-active", "--quiet", "rabbitmq-server"], check=False).returncode == 0
    )
    if managed:
        subprocess.run(["systemctl", "restart", "rabbitmq-server"], check=True)
    else:
        # shutdown, unlike stop, returns only once the node's OS process has exited.
        subprocess.run(["rabbitmqctl", "-q", "shutdown"], check=False)
        subprocess.run(["rabbitmq-server", "-detached"], check=True)
    # A detached node takes a few seconds to register with epmd; until then await_startup
    # fails at once (exit 69), so wait for it to answer first.
    deadline = time.monotonic() + 120
    while subprocess.run(["rabbitmqctl", "-q", "ping"], capture_output=True, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise SystemExit(f"{PROG}: RabbitMQ did not come back within 120 s after its restart")
        time.sleep(1)
    subprocess.run(["rabbitmqctl", "-q", "await_startup", "--timeout", "120"], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__)
    parser.add_argument("--secrets-dir", metavar="DIR", default="var/secrets")
    parser.add_argument("--config", metavar="FILE", default="/etc/rabbitmq/rabbitmq.conf")
    parser.add_argument("--install-dir", metavar="DIR", default="/etc/rabbitmq/tls")
    parser.add_argument("--port", type=int, default=TLS_PORT)
    parser.add_argument("--san", action="append", default=[], metavar="NAME", help="another name or address")
    parser.add_argument(
        "--plaintext",
        choices=["keep", "none"],
        default="keep",
        help="keep the plaintext listener(s) as configured, or close them (default: %(default)s)",
    )
    parser.add_argument("--no-restart", action="store_true", help="write the files, do not restart RabbitMQ")
    args = parser.parse_args(argv)
    if shutil.which("openssl") is None:
        parser.exit(1, f"{PROG}: error: openssl is not installed\n")
    directory = Path(args.secrets_dir) / "tls"
    names = [*GUEST_ADDRESSES, "localhost", socket.gethostname(), *args.san]
    make_certificates(directory, names)
    target = Path(args.install_dir)
    files_changed = install(directory, target, "rabbitmq")
    config = Path(args.config)
    before = config.read_text() if config.exists() else ""
    after = with_block(before, config_block(target, args.port, args.plaintext))
    if after != before:
        config.write_text(after)
    if (after != before or files_changed) and not args.no_restart:
        print("broker TLS: configuration changed; restarting RabbitMQ")
        restart_rabbitmq()
    print(
        f"broker TLS: listening on {args.port}; clients: --ca-file {directory / 'ca.pem'} amqps://...:{args.port}/"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
