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


#: A pool VM's own broker user is this prefix and its domain name: the collector accepts a result
#: from such a user only under that name (virtscale/identity.py).
VM_USER_PREFIX = "worker."

#: The shared account of a worker run on a host (`make worker`), never given to a VM.
HOST_WORKER_USER = "worker"


def vm_user(domain: str) -> str:
    """The broker user of the pool VM ``domain``."""
    return f"{VM_USER_PREFIX}{domain}"


@dataclass(frozen=True)
class QueueNames:
    """Jobs on ``jobs``, results on ``<jobs>.hashed``, dead letters on ``<jobs>.dead``; workers
    publish both through the exchange ``<jobs>.results``."""

    jobs: str

    @property
    def results(self) -> str:
        return f"{self.jobs}.hashed"

    @property
    def dead(self) -> str:
        return f"{self.jobs}.dead"

    @property
    def results_exchange(self) -> str:
        """The exchange workers publish results and dead letters to: it routes to ``results``
        and ``dead`` and nowhere else, so a worker needs no write right on the default exchange."""
        return f"{self.jobs}.results"
