"""A RabbitMQ node of our own beside the machine's main one (rabbit@localhost on 5672/15672):
its own node name, AMQP, management and distribution ports, its data, logs and pid file under a
folder of ours. make chaos runs one (virtscale-chaos@localhost, 5690/15690), make cluster three
clustered together (5681-5683/15681-15683). The main node is never touched: every rabbitmqctl
call names its node (-n).

All nodes run as the Debian package's rabbitmq account with its HOME, so they share its Erlang
cookie (which clustering needs) and the one epmd on 127.0.0.1:4369 that the main node started.
"""

from __future__ import annotations

import json
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
#: The distribution (inter-node) port is the AMQP port plus this, as RabbitMQ's own default
#: (5672 -> 25672): distinct for every node as long as the AMQP ports are.
DIST_PORT_OFFSET = 20000

CONFIG = """\
listeners.tcp.local = 127.0.0.1:{amqp_port}
management.tcp.ip = 127.0.0.1
management.tcp.port = {management_port}
# Queue stats every second (default 5): a harness sees consumers and leaders change sooner.
collect_statistics_interval = 1000
"""


class RabbitNode:
    """Start, stop and restart the node; ask its management API about the queues."""

    def __init__(self, base: Path, name: str, amqp_port: int, management_port: int):
        self.base = base.resolve()  # the tools run in RABBITMQ_HOME: a relative path would land there
        self.name = name
        self.amqp_port = amqp_port
        self.management_port = management_port
        self.dist_port = amqp_port + DIST_PORT_OFFSET
        self.http = requests.Session()
        self.http.auth = ("guest", "guest")

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/%2F"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    def prepare(self, fresh: bool = True) -> None:
        """Config, plugins (management only) and data and log folders, owned by rabbitmq; with
        ``fresh`` the data of an earlier run goes first."""
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
            f"RABBITMQ_DIST_PORT={self.dist_port}",
            f"RABBITMQ_CONFIG_FILE={self.base / 'rabbitmq.conf'}",
            f"RABBITMQ_ENABLED_PLUGINS_FILE={self.base / 'enabled_plugins'}",
            f"RABBITMQ_MNESIA_BASE={self.base / 'mnesia'}",
            f"RABBITMQ_LOG_BASE={self.base / 'log'}",
            f"RABBITMQ_PID_FILE={self.base / 'rabbitmq.pid'}",
            "ERL_FLAGS=-kernel inet_dist_use_interface {127,0,0,1}",
        ]

    def _as_rabbitmq(self, tool: str, *args: str, timeout: float = STARTUP_TIMEOUT + 30) -> str:
        command = [
            "runuser",
            "-u",
            RABBITMQ_USER,
            "--",
            "env",
            *self._environment(),
            str(RABBITMQ_BIN / tool),
        ]
        try:
            done = subprocess.run(
                [*command, *args],
                check=True,
                cwd=RABBITMQ_HOME,
                timeout=timeout,
                capture_output=True,
                text=True,
            )
        except subprocess.CalledProcessError as exc:
            said = " ".join((exc.stderr or exc.stdout or "").split())[:300]
            raise NodeError(f"{self.name}: {tool} {' '.join(args)} failed: {said}") from None
        except subprocess.TimeoutExpired:
            raise NodeError(f"{self.name}: {tool} {' '.join(args)} took over {timeout:.0f} s") from None
        return done.stdout

    def ctl(self, *args: str, timeout: float = STARTUP_TIMEOUT + 30) -> str:
        return self._as_rabbitmq("rabbitmqctl", "-n", self.name, *args, timeout=timeout)

    def start(self) -> None:
        """Start detached and wait until the node and its management API answer."""
        self.launch()
        self.await_ready()

    def launch(self) -> None:
        """Start detached, without waiting: nodes of a cluster restarted together wait for each
        other, so all are launched before any is awaited."""
        self._as_rabbitmq("rabbitmq-server", "-detached")

    def await_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait until the node has booted and its management API answers; NodeError after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        # A node just launched detached needs a moment before await_startup can find it.
        while not self.running():
            if time.monotonic() > deadline:
                raise NodeError(f"{self.name}: did not start within {timeout:.0f} s (see {self.base}/log)")
            time.sleep(1)
        left = max(1, round(deadline - time.monotonic()))
        self.ctl("await_startup", "--timeout", str(left), timeout=left + 30)
        while self.get("/api/overview") is None:
            if time.monotonic() > deadline:
                raise NodeError(f"{self.name}: management API did not answer on {self.management_url}")
            time.sleep(1)

    def stop(self) -> None:
        self.ctl("stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def running(self) -> bool:
        """Whether the Erlang node is up (booted or still booting)."""
        try:
            self.ctl("ping", timeout=30)
        except NodeError:
            return False
        return True

    def cluster_nodes(self) -> list[str]:
        """The names of every node in this node's cluster, itself included, running or not."""
        status = json.loads(self.ctl("cluster_status", "--formatter", "json"))
        return sorted(status.get("disk_nodes", []) + status.get("ram_nodes", []))

    def join(self, other: RabbitNode) -> None:
        """Make this node a member of ``other``'s cluster (its own data is reset)."""
        self.ctl("stop_app")
        self.ctl("reset")
        self.ctl("join_cluster", other.name)
        self.ctl("start_app")
        self.await_ready()

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


class NodeError(RuntimeError):
    """A node did not start, stop or join: the message names the node and what it said."""
