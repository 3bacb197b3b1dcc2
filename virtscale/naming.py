"""Queue names derive from one base name, so every component agrees on them."""

from dataclasses import dataclass


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
