"""A RabbitMQ node of make chaos's own (virtscale-chaos@localhost, AMQP 5690, management 15690),
data and logs under var/chaos/rabbitmq, so that restarting it as a fault never touches the
node on 5672 that everything else on this machine uses."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import requests

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
#: The Debian package's account; the node runs as it and shares its Erlang cookie.
RABBITMQ_USER = "rabbitmq"
RABBITMQ_HOME = "/var/lib/rabbitmq"
#: Seconds the node has to come up (a cold start with the management plugin takes about 10).
STARTUP_TIMEOUT = 120

CONFIG = """\
listeners.tcp.local = 127.0.0.1:{amqp_port}
management.tcp.ip = 127.0.0.1
management.tcp.port = {management_port}
# Queue stats every second (default 5): the harness sees consumers come back sooner.
collect_statistics_interval = 1000
"""


class ChaosNode:
    """Start, stop and restart the node; ask its management API about the queues."""

    def __init__(self, base: Path, name: str, amqp_port: int, management_port: int):
        self.base = base
        self.name = name
        self.amqp_port = amqp_port
        self.management_port = management_port
        self.http = requests.Session()
        self.http.auth = ("guest", "guest")

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/%2F"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    def prepare(self, fresh: bool = True) -> None:
        """Config, plugins (management only) and empty data and log folders, owned by rabbitmq."""
        if fresh and self.base.exists():
            shutil.rmtree(self.base)
        for folder in ("mnesia", "log"):
            (self.base / folder).mkdir(parents=True, exist_ok=True)
        (self.base / "rabbitmq.conf").write_text(
            CONFIG.format(amqp_port=self.amqp_port, management_port=self.management_port)
        )
        (self.base / "enabled_plugins").write_text("[rabbitmq_management].\n")
        # Our own env file, so that the system's (NODENAME=rabbit@localhost) is not read.
        (self.base / "rabbitmq-env.conf").write_text("ERL_EPMD_ADDRESS=127.0.0.1\n")
        shutil.chown(self.base, RABBITMQ_USER, RABBITMQ_USER)
        for path in self.base.rglob("*"):
            shutil.chown(path, RABBITMQ_USER, RABBITMQ_USER)

    def _environment(self) -> list[str]:
        return [
            f"HOME={RABBITMQ_HOME}",
            f"RABBITMQ_CONF_ENV_FILE={self.base / 'rabbitmq-env.conf'}",
            f"RABBITMQ_NODENAME={self.name}",
            f"RABBITMQ_NODE_PORT={self.amqp_port}",
            f"RABBITMQ_DIST_PORT={self.amqp_port + 20000}",
            f"RABBITMQ_CONFIG_FILE={self.base / 'rabbitmq.conf'}",
            f"RABBITMQ_ENABLED_PLUGINS_FILE={self.base / 'enabled_plugins'}",
            f"RABBITMQ_MNESIA_BASE={self.base / 'mnesia'}",
            f"RABBITMQ_LOG_BASE={self.base / 'log'}",
            "ERL_FLAGS=-kernel inet_dist_use_interface {127,0,0,1}",
        ]

    def _as_rabbitmq(self, tool: str, *args: str, timeout: float = STARTUP_TIMEOUT + 30) -> None:
        command = [
            "runuser",
            "-u",
            RABBITMQ_USER,
            "--",
            "env",
            *self._environment(),
            str(RABBITMQ_BIN / tool),
        ]
        subprocess.run(
            [*command, *args], check=True, cwd=RABBITMQ_HOME, timeout=timeout, capture_output=True, text=True
        )

    def ctl(self, *args: str) -> None:
        self._as_rabbitmq("rabbitmqctl", "-n", self.name, *args)

    def start(self) -> None:
        """Start detached and wait until the node and its management API answer."""
        self._as_rabbitmq("rabbitmq-server", "-detached")
        time.sleep(1)  # the detached node needs a moment before await_startup can find it
        self.ctl("await_startup", "--timeout", str(STARTUP_TIMEOUT))
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.get("/api/overview") is not None:
                return
            time.sleep(1)
        raise RuntimeError(f"{self.name}: management API did not answer on {self.management_url}")

    def stop(self) -> None:
        self.ctl("stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def running(self) -> bool:
        try:
            self.ctl("status")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            return False
        return True

    def get(self, path: str) -> dict | list | None:
        """A management API answer, or None if the node did not give one."""
        try:
            response = self.http.get(self.management_url + path, timeout=3)
        except requests.RequestException:
            return None
        return response.json() if response.ok else None

    def queue(self, name: str) -> dict | None:
        """The queue's consumers and messages; None if the node did not report both (a node
        that has just started answers before its queues are back)."""
        queue = self.get(f"/api/queues/%2F/{name}")
        if not isinstance(queue, dict) or not {"consumers", "messages"} <= queue.keys():
            return None
        return queue

    def connection_names(self) -> list[str] | None:
        connections = self.get("/api/connections?columns=user_provided_name,client_properties")
        if connections is None:
            return None
        return [
            c.get("user_provided_name") or (c.get("client_properties") or {}).get("connection_name") or ""
            for c in connections
        ]
