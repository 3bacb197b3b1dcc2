"""Queue names derive from one base name, so every component agrees on them."""

from dataclasses import dataclass

#: A worker's consumer tag is this prefix, its name (the domain name in a VM) and a random
#: suffix after a colon, so the scaler can tell from the broker which VMs are consuming.
WORKER_TAG_PREFIX = "virtscale-worker:"


def worker_consumer_tag(name: str, suffix: str) -> str:
    return f"{WORKER_TAG_PREFIX}{name}:{suffix}"


def worker_from_consumer_tag(tag: str) -> str | None:
    """The worker name in a consumer tag made by worker_consumer_tag, else None."""
    if not tag.startswith(WORKER_TAG_PREFIX) or ":" not in tag[len(WORKER_TAG_PREFIX) :]:
        return None
    return tag[len(WORKER_TAG_PREFIX) :].rsplit(":", 1)[0]


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
