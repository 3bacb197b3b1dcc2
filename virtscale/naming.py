"""Queue names derive from one base name, so every component agrees on them."""

from dataclasses import dataclass

#: AMQP connection name of a worker is this prefix plus its name (the domain name in a VM),
#: so the scaler can tell from the broker which VMs are consuming.
WORKER_CONNECTION_PREFIX = "virtscale-worker:"


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
