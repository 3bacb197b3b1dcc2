#!/usr/bin/python3
"""First thing at boot in a worker VM: read this VM's settings and lock the network down.

Settings reach the guest on a small read-only disk of their own (serial "virtscale-config"),
a volume the scaler uploads through libvirt's storage API, so the base image is the same for
every VM and the broker password is in no domain XML. Writes:
  /run/virtscale/worker.env        name, broker URL (no password), queue, cost
  /run/virtscale/password          the broker password (0600), passed as a systemd credential
  /run/virtscale-ca/ca.pem         the CA the broker's TLS certificate must chain to, when given
                                   (public, so readable by the worker's dynamic user)
  /run/virtscale/egress-probe.json the host ports the boot-time egress check tries
  /run/systemd/network/10-virtscale.network   static user-mode address, or DHCP on a bridge
and loads an nftables ruleset that lets the guest open connections to the broker only.
"""

import glob
import json
import os
import subprocess
import sys
import time
import urllib.parse

#: The virtio serial number of the settings disk (the domain XML's <serial>).
SETTINGS_SERIAL = "virtscale-config"
#: The settings are JSON at the start of the disk, padded with zero bytes.
SETTINGS_MAX_BYTES = 65536
RUN = "/run/virtscale"
CA_DIR = "/run/virtscale-ca"

EGRESS = """flush ruleset
table inet virtscale {{
  chain output {{
    type filter hook output priority 0; policy drop;
    oif "lo" accept
    ct state established,related accept
    ip daddr {host} tcp dport {port} accept comment "the broker, and nothing else"
    meta l4proto tcp reject with tcp reset comment "fail fast rather than hang"
    reject
  }}
}}
"""

USER_MODE_NETWORK = """[Match]
Name=en* eth*
[Network]
Address=10.0.2.15/24
Gateway=10.0.2.2
LinkLocalAddressing=no
IPv6AcceptRA=no
"""

DHCP_NETWORK = """[Match]
Name=en* eth*
[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no
"""


def read_settings() -> dict:
    """The JSON on the virtio disk whose serial is SETTINGS_SERIAL (devtmpfs names it vdX)."""
    for block in sorted(glob.glob("/sys/block/vd*")):
        try:
            with open(f"{block}/serial", encoding="ascii") as handle:
                serial = handle.read().strip()
        except OSError:
            continue
        if serial == SETTINGS_SERIAL:
            with open(f"/dev/{os.path.basename(block)}", "rb") as disk:
                return json.loads(disk.read(SETTINGS_MAX_BYTES).rstrip(b"\0"))
    raise OSError(f"no disk with serial {SETTINGS_SERIAL}")


def main() -> int:
    started = time.clock_gettime(time.CLOCK_BOOTTIME)
    try:
        config = read_settings()
    except (OSError, ValueError) as exc:
        # No settings: keep everything closed rather than run with guesses.
        subprocess.run(
            ["nft", "-f", "-"], input=EGRESS.format(host="127.0.0.1", port=1), text=True, check=False
        )
        print(f"virtscale-config: no usable settings disk: {exc}", file=sys.stderr)
        return 1
    url = urllib.parse.urlsplit(config["amqp_url"])
    os.makedirs(RUN, mode=0o700, exist_ok=True)
    with open("/proc/sys/kernel/hostname", "w", encoding="ascii") as handle:
        handle.write(config["name"])
    env = {
        "VIRTSCALE_WORKER_NAME": config["name"],
        "VIRTSCALE_AMQP_URL": config["amqp_url"],
        "VIRTSCALE_QUEUE": config.get("queue", "licenses"),
        "VIRTSCALE_COST": str(config.get("cost", 12)),
        "VIRTSCALE_LOG_LEVEL": config.get("log_level", "INFO"),
    }
    if config.get("ca"):
        os.makedirs(CA_DIR, mode=0o755, exist_ok=True)
        with open(f"{CA_DIR}/ca.pem", "w", encoding="ascii") as handle:
            handle.write(config["ca"])
        env["VIRTSCALE_CA_FILE"] = f"{CA_DIR}/ca.pem"
    with open(f"{RUN}/worker.env", "w", encoding="utf-8") as handle:
        handle.writelines(f"{key}={value}\n" for key, value in env.items())
    descriptor = os.open(f"{RUN}/password", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(config["password"])
    with open(f"{RUN}/egress-probe.json", "w", encoding="utf-8") as handle:
        json.dump(config.get("egress_probe", []), handle)
    os.makedirs("/run/systemd/network", exist_ok=True)
    network = DHCP_NETWORK if config.get("network") == "dhcp" else USER_MODE_NETWORK
    with open("/run/systemd/network/10-virtscale.network", "w", encoding="ascii") as handle:
        handle.write(network)
    port = url.port or (5671 if url.scheme == "amqps" else 5672)
    egress = EGRESS.format(host=url.hostname, port=port)
    subprocess.run(["nft", "-f", "-"], input=egress, text=True, check=True)
    uptime = time.clock_gettime(time.CLOCK_BOOTTIME)
    print(
        f"virtscale-config: {config['name']}, egress only to {url.hostname}:{port} "
        f"(uptime {started:.1f} -> {uptime:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
