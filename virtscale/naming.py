"""Names that several components (and the broker's management UI) must agree on.

Queue names derive from one base name. Connection names and consumer tags say which
component holds them, on which host or VM, for which queue, so an operator can tell
them apart in the management UI and the scaler can tell which VMs are consuming.
"""

from dataclasses import dataclass

#: A worker's consumer tag is this prefix, its name (the domain name in a VM) and a random
#: suffix after a colon, so the scaler can tell from the broker which VMs are consuming.
WORKER_TAG_PREFIX = "virtscale-worker:"

#: A collector's consumer tag is this prefix, its host name and a random suffix after a colon.
COLLECTOR_TAG_PREFIX = "virtscale-collector:"


def worker_consumer_tag(name: str, suffix: str) -> str:
    return f"{WORKER_TAG_PREFIX}{name}:{suffix}"


def worker_from_consumer_tag(tag: str) -> str | None:
    """The worker name in a consumer tag made by worker_consumer_tag, else None."""
    if not tag.startswith(WORKER_TAG_PREFIX) or ":" not in tag[len(WORKER_TAG_PREFIX) :]:
        return None
    return tag[len(WORKER_TAG_PREFIX) :].rsplit(":", 1)[0]


def collector_consumer_tag(host: str, suffix: str) -> str:
    return f"{COLLECTOR_TAG_PREFIX}{host}:{suffix}"


#: The queue whose exclusive holder leads a pool's scalers is this prefix, then the job queue and
#: the pool, each after a "/" (which no job queue's name holds, so no two pairs share a lease);
#: topology_spec grants the scaler the right to declare names of this form.
LEASE_PREFIX = "virtscale.scaler.lease"


def lease_queue(queue: str, pool: str) -> str:
    """The queue the scalers of ``pool`` (serving job queue ``queue``) hold in turn: the one that
    declared it leads."""
    return f"{LEASE_PREFIX}/{queue}/{pool}"


def connection_name(component: str, who: str, queue: str) -> str:
    """The name a connection shows in the management UI: ``virtscale-<component> <who> <queue>``,
    where ``who`` is the host (or, for a worker, its name) and ``queue`` the job queue."""
    return f"virtscale-{component} {who} {queue}"


@dataclass(frozen=True)
class QueueNames:
    """Jobs on ``jobs``, results on ``<jobs>.hashed``, dead letters on ``<jobs>.dead``."""

    jobs: str

    @property
    def results(self) -> str:
        return f"{self.jobs}.hashed"

    @property
    def dead(self) -> str:
        return f"{self.jobs}.dead"
