"""The real work, with no I/O: bcrypt one license."""

import time
from typing import NamedTuple

import bcrypt


class Hashed(NamedTuple):
    digest: str
    #: Wall milliseconds of the call: the result's hash_ms.
    ms: float
    #: CPU seconds of the hashing thread. Unlike wall time, not stretched by a wait for the GIL
    #: after bcrypt (up to Python's 5 ms switch interval) or for a CPU, so the prefetch sized
    #: from it stays put (measured at cost 4 here: 1 ms of CPU, 2-17 ms of wall time).
    cpu_seconds: float


def hash_license(license_number: str, cost: int) -> Hashed:
    """The bcrypt $2b$ hash of ``license_number``, and the time it took."""
    started, cpu_started = time.perf_counter(), time.thread_time()
    digest = bcrypt.hashpw(license_number.encode("utf-8"), bcrypt.gensalt(rounds=cost, prefix=b"2b"))
    cpu = time.thread_time() - cpu_started
    return Hashed(digest.decode("ascii"), (time.perf_counter() - started) * 1000.0, cpu)
