"""Write the pool's template: `make template` (var/template/vm.json).

The template is what every new pool domain is made of: the worker image (its three files and
their content hash), vCPUs, memory, network, domain type, and the worker's settings (broker
URL as the guests see it, user, the file holding its password, queue, bcrypt cost). The
scaler reads it again whenever the file changes: after `make image && make template`, it
replaces the running VMs with VMs on the new image, one at a time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from virtscale.config import OneLineParser, host_or_address, port_number, queue_name
from virtscale.scaler import template
from virtscale.scaler.ownership import pool_name
from virtscale.worker.cli import bcrypt_cost

IMAGE_DIR = Path(os.environ.get("VIRTSCALE_IMAGE_DIR", "/var/lib/libvirt/images/virtscale"))
#: Where the guest finds the broker under QEMU user-mode networking: the host's loopback.
USER_MODE_BROKER = "10.0.2.2"
#: Ports on the host's loopback the guest's boot-time probe tries: only the broker may be open.
EGRESS_PROBE = (("10.0.2.2", 5672), ("10.0.2.2", 15672), ("10.0.2.2", 5432), ("10.0.2.2", 6379))


def content_hash(paths: list[Path], cache: Path) -> str:
    """sha256 over the files' contents, remembered by (path, size, mtime): hashing 650 MB
    takes seconds, and `make template` runs before every demo."""
    key = json.dumps([(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths])
    known = json.loads(cache.read_text()) if cache.exists() else {}
    if key not in known:
        digest = hashlib.sha256()
        for path in paths:
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        known = {key: digest.hexdigest()[:16]}
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known))
    return known[key]


def virtual_size(path: Path) -> int:
    info = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(path)], capture_output=True, text=True, check=True
    )
    return int(json.loads(info.stdout)["virtual-size"])


def probe_domain_type(cache: Path, timeout: float = 20.0) -> str:
    """kvm only if a KVM guest really runs here: boot the image's kernel under KVM with no root
    disk and wait for it to reach its panic. Nested KVM that hangs gives qemu (TCG)."""
    if cache.exists():
        return cache.read_text().strip()
    domain_type = "qemu"
    if os.path.exists("/dev/kvm"):
        command = ["qemu-system-x86_64", "-accel", "kvm", "-m", "256", "-nographic", "-no-reboot"]
        command += ["-kernel", str(IMAGE_DIR / "vmlinuz"), "-append", "console=ttyS0 panic=-1"]
        started = time.monotonic()
        try:
            output = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
            ).stdout
            if "Kernel panic" in output or "Unable to mount root" in output:
                domain_type = "kvm"
        except subprocess.TimeoutExpired:
            pass
        print(f"template: KVM probe: {domain_type} ({time.monotonic() - started:.1f} s)", file=sys.stderr)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(domain_type + "\n")
    return domain_type


def image(state_dir: Path) -> template.Image:
    rootfs = (IMAGE_DIR / "rootfs.qcow2").resolve()
    files = [rootfs, IMAGE_DIR / "vmlinuz", IMAGE_DIR / "initrd.img"]
    missing = [str(path) for path in files if not path.exists()]
    if missing:
        sys.exit(f"template: no worker image ({', '.join(missing)} missing): run `make image` first")
    return template.Image(
        id=content_hash(files, state_dir / "image-hashes.json"),
        rootfs=str(rootfs),
        rootfs_virtual_size=virtual_size(rootfs),
        kernel=str(files[1].resolve()),
        initrd=str(files[2].resolve()),
    )


def build(args: argparse.Namespace) -> template.Template:
    state_dir = Path(args.out).resolve().parent
    domain_type = args.domain_type
    if domain_type == "auto":
        domain_type = probe_domain_type(IMAGE_DIR / "domain-type")
    user_mode = args.network == "user"
    broker = USER_MODE_BROKER if user_mode else args.broker_host
    scheme, port = ("amqps", args.broker_port or 5671) if args.ca_file else ("amqp", args.broker_port or 5672)
    worker = template.WorkerSettings(
        amqp_url=f"{scheme}://{args.user}@{broker}:{port}/%2F",
        password_file=str(Path(args.password_file).resolve()),
        queue=args.queue,
        cost=args.cost,
        network="user" if user_mode else "dhcp",
        egress_probe=EGRESS_PROBE if user_mode else (),
        per_vm_users=not args.shared_user,
        ca=Path(args.ca_file).read_text() if args.ca_file else "",
    )
    return template.Template(
        pool=args.pool,
        image=image(state_dir),
        worker=worker,
        vcpus=args.vcpus,
        memory_mib=args.memory,
        domain_type=domain_type,
        network=args.network,
    )


def parser() -> OneLineParser:
    parser = OneLineParser(prog="deploy/template.py", description=__doc__)
    parser.add_argument("--pool", type=pool_name, default="vm")
    parser.add_argument("--out", metavar="FILE", help="default: var/template/POOL.json")
    parser.add_argument("--domain-type", choices=["auto", "kvm", "qemu"], default="auto")
    parser.add_argument(
        "--network",
        default="user",
        help="'user' (QEMU user-mode, broker at 10.0.2.2) or a libvirt network name",
    )
    parser.add_argument(
        "--broker-host",
        type=host_or_address,
        default="192.168.122.1",
        help="the broker's address as the guests see it on a libvirt network",
    )
    parser.add_argument("--broker-port", type=port_number, help="default: 5671 with --ca-file, else 5672")
    parser.add_argument(
        "--ca-file",
        metavar="FILE",
        help="the broker's CA (make broker TLS=1: var/secrets/tls/ca.pem): guests connect with "
        "amqps:// and verify the broker's certificate against it",
    )
    parser.add_argument(
        "--shared-user",
        action="store_true",
        help="every VM logs in as --user with --password-file, instead of a broker user of its own "
        "made with its domain (which needs the provisioner: the scaler's and vms.py's "
        "--provisioner-password-file)",
    )
    parser.add_argument("--user", default="worker", help="with --shared-user: the guests' broker user")
    parser.add_argument("--password-file", default="var/secrets/worker", help="with --shared-user")
    parser.add_argument("--queue", type=queue_name, default="licenses")
    parser.add_argument("--cost", type=bcrypt_cost, default=12)
    parser.add_argument("--vcpus", type=int, choices=range(1, 65), default=1, metavar="N")
    parser.add_argument("--memory", type=int, default=384, metavar="MIB")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.out = args.out or f"var/template/{args.pool}.json"
    if args.ca_file and not os.access(args.ca_file, os.R_OK):
        parser().error(f"--ca-file {args.ca_file}: no such file, or not readable")
    if args.shared_user and not os.access(args.password_file, os.R_OK):
        parser().error(f"--password-file {args.password_file}: no such file, or not readable")
    made = build(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_suffix(".tmp")
    temporary.write_text(template.dump(made))
    temporary.replace(out)  # the scaler never reads a half-written template
    print(
        f"template: {out} (pool {made.pool}, image {made.image.id}, {made.vcpus} vCPU, {made.memory_mib} MiB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
