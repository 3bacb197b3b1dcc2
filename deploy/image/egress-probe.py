#!/usr/bin/python3
"""Boot-time self-check, printed on the serial console: which host ports the guest can open.
Only the broker's should be; the others (PostgreSQL, Redis, the management API, SSH on the
host's loopback, reached through QEMU's user-mode network) must be blocked by the egress rule."""

import json
import socket

FW_CFG = "/sys/firmware/qemu_fw_cfg/by_name/opt/virtscale/config/raw"


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


def main() -> None:
    with open(FW_CFG, encoding="utf-8") as handle:
        probes = json.load(handle).get("egress_probe", [])
    results = [f"{host}:{port} {'open' if reachable(host, port) else 'blocked'}" for host, port in probes]
    print("virtscale-egress: " + "; ".join(results), flush=True)


if __name__ == "__main__":
    main()
