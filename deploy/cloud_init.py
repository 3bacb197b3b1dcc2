"""Render cloud-init user-data for a worker on a stock Debian 12 / Ubuntu cloud image (a real
KVM host, a bridge network): `make cloud-init BROKER=10.0.0.5 NAME=worker-1`.

The worker code travels inside the user-data (a base64 tarball), so the guest downloads
nothing but Debian's python3-pika, python3-bcrypt and python3-tenacity from its mirror; the
broker password goes to a root-only file and reaches the service as a systemd credential.
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TEMPLATE = """#cloud-config
hostname: {name}
package_update: true
packages: [python3, python3-pika, python3-bcrypt, python3-cffi-backend, python3-tenacity, nftables]
write_files:
  - path: /opt/virtscale.tar.gz
    encoding: b64
    permissions: "0644"
    content: {code}
  - path: /etc/virtscale/worker.env
    permissions: "0644"
    content: |
      VIRTSCALE_WORKER_NAME={name}
      VIRTSCALE_AMQP_URL=amqp://{user}@{broker}:{port}/%2F
      VIRTSCALE_QUEUE={queue}
      VIRTSCALE_COST={cost}
  - path: /etc/virtscale/password
    permissions: "0600"
    content: {password}
  - path: /etc/systemd/system/virtscale-worker.service
    permissions: "0644"
    encoding: b64
    content: {unit}
  - path: /etc/tmpfiles.d/virtscale.conf
    permissions: "0644"
    content: |
      # The unit reads /run/virtscale (in the VM image it is made at boot from fw_cfg).
      L+ /run/virtscale - - - - /etc/virtscale
  - path: /etc/nftables.d/virtscale.nft
    permissions: "0644"
    content: |
      table inet virtscale {{
        chain output {{
          type filter hook output priority 0; policy accept;
          ip daddr {broker} tcp dport != {port} reject comment "only the broker's port on its host"
        }}
      }}
runcmd:
  - [tar, -xzf, /opt/virtscale.tar.gz, -C, /opt]
  - [systemd-tmpfiles, --create, /etc/tmpfiles.d/virtscale.conf]
  - [nft, -f, /etc/nftables.d/virtscale.nft]
  - [systemctl, daemon-reload]
  - [systemctl, enable, --now, virtscale-worker.service]
"""


def code_tarball() -> str:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        # Laid out as installed: virtscale/ and virtscale/worker/ (setup.cfg's package_dir).
        for folder, installed_as in (("virtscale", "virtscale"), ("worker", "virtscale/worker")):
            for path in sorted((ROOT / folder).glob("*.py")):
                archive.add(path, arcname=f"virtscale/{installed_as}/{path.name}")
    return base64.b64encode(buffer.getvalue()).decode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy/cloud_init.py", description=__doc__)
    parser.add_argument("--name", required=True, help="worker name (the domain name)")
    parser.add_argument("--broker", required=True, help="broker address as the guest sees it")
    parser.add_argument("--port", type=int, default=5672)
    parser.add_argument("--user", default="worker")
    parser.add_argument("--password-file", default="var/secrets/worker")
    parser.add_argument("--queue", default="licenses")
    parser.add_argument("--cost", type=int, default=12)
    args = parser.parse_args(argv)
    unit = base64.b64encode((ROOT / "deploy" / "virtscale-worker.service").read_bytes()).decode()
    password = Path(args.password_file).read_text().strip()
    sys.stdout.write(
        TEMPLATE.format(
            name=args.name,
            code=code_tarball(),
            user=args.user,
            broker=args.broker,
            port=args.port,
            queue=args.queue,
            cost=args.cost,
            password=password,
            unit=unit,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
