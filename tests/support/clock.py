"""A clock the test sets by hand, for whatever takes a ``clock`` callable (time.monotonic's shape)."""


class FakeClock:
    """Reads ``now``; a test moves time by assigning or adding to it."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now
