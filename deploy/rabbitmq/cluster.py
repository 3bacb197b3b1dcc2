"""make cluster / make cluster-stop: a 3-node RabbitMQ cluster on this machine, beside the main
broker (rabbit@localhost, 5672/15672), which it never touches.

Nodes virtscale-cluster-1..3@localhost, AMQP 5681-5683, management 15681-15683, distribution
25681-25683, data and logs under var/cluster/node-N. `start` launches the nodes that are not
running, joins to the first those that are not yet in its cluster, creates the component users
(deploy/broker_accounts.py, with the passwords in var/secrets, as on the main broker) and
declares the queues and the job queue's policy (`virtscale-broker declare`), then writes what a
client needs: var/cluster/amqp-urls and var/cluster/management-urls (one URL a line, as guest,
which works from this machine) and var/cluster/nodes (names for `rabbitmqctl -n`). `stop` stops
the nodes and keeps their data, so that the next `start` brings the same cluster back. Both are
idempotent. One process at a time changes the cluster (a lock in the system's temp folder).

    python -m deploy.rabbitmq.cluster start [--queue QUEUE] [--secrets-dir DIR]
    python -m deploy.rabbitmq.cluster stop
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from deploy import broker_accounts
from deploy.rabbitmq.node import RABBITMQ_BIN, NodeError, RabbitNode
from virtscale.config import OneLineParser, queue_name

ROOT = Path(__file__).resolve().parent.parent.parent
PROG = "deploy/rabbitmq/cluster.py"
#: Nodes of the cluster: three, the smallest number for which a quorum queue survives one loss.
SIZE = 3
#: Node N listens on AMQP 5680+N and management 15680+N.
AMQP_BASE, MANAGEMENT_BASE = 5680, 15680
#: Held while a process starts or stops the cluster, or a test runs on it: the node names and
#: ports are the machine's, whichever checkout runs them.
LOCK_PATH = Path(tempfile.gettempdir()) / "virtscale-cluster.lock"
#: Seconds a node has to boot before the next is launched: one boots alone in about 10 here.
BOOT_ALONE = 40


def node_name(number: int) -> str:
    return f"virtscale-cluster-{number}@localhost"


class Cluster:
    """The three nodes and the files that tell clients where they are."""

    def __init__(self, base: Path = ROOT / "var" / "cluster"):
        self.base = base
        self.nodes = [
            RabbitNode(base / f"node-{n}", node_name(n), AMQP_BASE + n, MANAGEMENT_BASE + n)
            for n in range(1, SIZE + 1)
        ]

    @property
    def amqp_urls(self) -> list[str]:
        return [node.amqp_url for node in self.nodes]

    @property
    def management_urls(self) -> list[str]:
        return [node.management_url for node in self.nodes]

    def node(self, name: str) -> RabbitNode:
        return next(node for node in self.nodes if node.name == name)

    def running(self) -> bool:
        return all(node.running() for node in self.nodes)

    def start(self, queue: str, secrets_dir: str) -> None:
        """Every node up and in one cluster, the users and the queues of ``queue`` there."""
        self._start_nodes()
        first = self.nodes[0]
        for node in self.nodes[1:]:
            if node.name not in first.cluster_nodes():
                say(f"joining {node.name} to {first.name}")
                node.join(first)
        self._declare(queue, secrets_dir)
        self._write_client_files()
        say(f"cluster of {', '.join(first.cluster_nodes())} ready; clients: {self.base}/amqp-urls")

    def _start_nodes(self) -> None:
        """Launch the stopped nodes one after the other. Two nodes booting at the same moment can
        fail on RabbitMQ 3.10's feature-flag exchange, so each waits until the one before has
        booted; but a node that did not stop last waits for a peer that did, so after
        BOOT_ALONE seconds the next is launched anyway."""
        stopped = [node for node in self.nodes if not node.running()]
        for node in stopped:
            say(f"starting {node.name} (AMQP {node.amqp_port}, management {node.management_port})")
            node.prepare(fresh=False)
            node.launch()
            try:
                node.await_ready(BOOT_ALONE)
            except NodeError:
                say(f"{node.name} waits for its peers; starting the next")
        for node in stopped:
            node.await_ready()

    def _declare(self, queue: str, secrets_dir: str) -> None:
        management = self.nodes[0].management_url
        accounts = ["--management-url", management, "--queue", queue, "--secrets-dir", secrets_dir]
        if broker_accounts.main(accounts) != 0:
            raise NodeError("the broker users could not be created (see above)")
        nodes = [flag for node in self.nodes for flag in ("--amqp-url", node.amqp_url)]
        nodes += [flag for node in self.nodes for flag in ("--management-url", node.management_url)]
        declare = [sys.executable, "-m", "virtscale.topology", "declare", "--queue", queue, *nodes]
        if subprocess.run(declare, check=False).returncode != 0:
            raise NodeError("the queues could not be declared (see above)")

    def _write_client_files(self) -> None:
        for name, lines in (
            ("amqp-urls", self.amqp_urls),
            ("management-urls", self.management_urls),
            ("nodes", [node.name for node in self.nodes]),
        ):
            (self.base / name).write_text("".join(f"{line}\n" for line in lines))

    def stop(self) -> None:
        """Stop every node that runs, the others together, then the first: the node that stopped
        last boots alone, so it is the one to start first next time. Their data stays."""
        first, others = self.nodes[0], self.nodes[1:]
        with ThreadPoolExecutor(len(others)) as pool:
            list(pool.map(self._stop_node, others))
        self._stop_node(first)

    @staticmethod
    def _stop_node(node: RabbitNode) -> None:
        if node.running():
            say(f"stopping {node.name}")
            node.stop()


def say(text: str) -> None:
    print(f"cluster: {text}", flush=True)


@contextlib.contextmanager
def exclusive(path: Path = LOCK_PATH) -> Iterator[None]:
    """The cluster to ourselves: wait until no other process starts, stops or tests it."""
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another process that holds {path}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__)
    parser.add_argument("command", choices=["start", "stop"])
    parser.add_argument("--queue", type=queue_name, default="licenses", metavar="QUEUE")
    parser.add_argument("--secrets-dir", default="var/secrets", metavar="DIR")
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or not (RABBITMQ_BIN / "rabbitmq-server").exists():
        parser.exit(1, f"{PROG}: needs root and the rabbitmq-server package (make setup installs it)\n")
    cluster = Cluster()
    try:
        with exclusive():
            if args.command == "start":
                cluster.start(args.queue, args.secrets_dir)
            else:
                cluster.stop()
    except NodeError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
