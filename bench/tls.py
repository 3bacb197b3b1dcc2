"""What TLS costs (make broker TLS=1): the worker's and the producer's throughput over amqps://
against plaintext amqp://, on the same broker in one run, as ratios."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from bench.pipeline import BENCH_CONNECTION, URL, confirmed_publish_rate, pipeline_rate, purge
from virtscale import defaults
from virtscale.broker import Nodes, declare_topology, delete_topology
from virtscale.naming import QueueNames
from virtscale.worker.consumer import default_concurrency

CA_FILE = os.environ.get(
    "VIRTSCALE_CA_FILE", str(Path(__file__).resolve().parents[1] / "var/secrets/tls/ca.pem")
)
TLS_URL = os.environ.get("VIRTSCALE_TLS_AMQP_URL", "amqps://guest:guest@127.0.0.1:5671/%2F")
#: Rounds per figure, alternating plaintext and TLS so that a drift of the machine hits both.
ROUNDS = 2


def run() -> None:
    if not Path(CA_FILE).exists():
        print(f"\nTLS: no CA at {CA_FILE}; make broker TLS=1 first")
        return
    slots = default_concurrency()
    print(f"\nTLS cost ({slots} slots; {ROUNDS} rounds each, best kept): amqps:// rate / amqp:// rate")
    print(f"{'what':>18} {'amqp/s':>9} {'amqps/s':>9} {'ratio':>6}")
    for cost, jobs in ((10, 300), (4, 3000)):
        plain = tls = 0.0
        for _ in range(ROUNDS):
            plain = max(plain, pipeline_rate(cost, jobs, slots, [])[0])
            tls = max(tls, pipeline_rate(cost, jobs, slots, ["--ca-file", CA_FILE], worker_url=TLS_URL)[0])
        print(f"{f'worker cost {cost}':>18} {plain:>9.1f} {tls:>9.1f} {tls / plain:>6.2f}")
    names = QueueNames(f"bench-{uuid.uuid4().hex[:8]}")
    declare_topology(URL, names, defaults.DELIVERY_LIMIT, BENCH_CONNECTION)
    try:
        plain = tls = 0.0
        for _ in range(ROUNDS):
            plain = max(plain, confirmed_publish_rate(names, 5000))
            purge(names)
            tls = max(tls, confirmed_publish_rate(names, 5000, Nodes([TLS_URL], CA_FILE)))
            purge(names)
        print(f"{'producer':>18} {plain:>9.1f} {tls:>9.1f} {tls / plain:>6.2f}")
    finally:
        delete_topology(URL, names, BENCH_CONNECTION)
