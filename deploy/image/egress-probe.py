#!/usr/bin/python3
"""Boot-time self-check, printed on the serial console: which host ports the guest can open.
Only the broker's should be; the others (PostgreSQL, Redis, the management API, SSH on the
host's loopback, reached through QEMU's user-mode network) must be blocked by the egress rule."""

import json
import socket

#: Written by guest-config.py from this VM's settings (no password in it).
PROBES = "/run/virtscale/egress-probe.json"


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


def main() -> None:
    with open(PROBES, encoding="utf-8") as handle:
        probes = json.load(handle)
    results = [f"{host}:{port} {'open' if reachable(host, port) else 'blocked'}" for host, port in probes]
    print("virtscale-egress: " + "; ".join(results), flush=True)


if __name__ == "__main__":
    main()
