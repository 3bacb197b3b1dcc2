"""The real work, with no I/O: bcrypt one license."""

import time

import bcrypt


def hash_license(license_number: str, cost: int) -> tuple[str, float]:
    """The bcrypt $2b$ hash of ``license_number`` and the milliseconds it took."""
    started = time.perf_counter()
    digest = bcrypt.hashpw(license_number.encode("utf-8"), bcrypt.gensalt(rounds=cost, prefix=b"2b"))
    return digest.decode("ascii"), (time.perf_counter() - started) * 1000.0
