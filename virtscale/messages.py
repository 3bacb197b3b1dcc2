"""The job and result messages: their JSON shape and strict validation.

Validation never echoes a license in its error text: reasons name the field and
the rule, so they can go to a log line and a dead-letter header as they are.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field

from virtscale import defaults

JOB_FIELDS = frozenset({"id", "license", "produced_at"})
RESULT_FIELDS = frozenset({"id", "hash", "worker", "produced_at", "hashed_at", "hash_ms"})


class InvalidMessage(ValueError):
    """A message that can never be processed: dead-letter it with ``str(exc)`` as the reason."""


@dataclass(frozen=True)
class Job:
    id: str
    #: Out of the repr: a Job in a log line or a traceback must not show the license.
    license: str = field(repr=False)
    produced_at: float

    def to_json(self) -> bytes:
        return json.dumps(
            {"id": self.id, "license": self.license, "produced_at": self.produced_at},
            separators=(",", ":"),
        ).encode()


@dataclass(frozen=True)
class Result:
    id: str
    hash: str
    worker: str
    produced_at: float
    hashed_at: float
    hash_ms: float

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, separators=(",", ":")).encode()


def loggable_id(message_id: str | None, delivery_tag: int | None = None) -> str:
    """``message_id`` for a log line if it is a canonical UUID (as new_job makes them), else the
    delivery tag: the sender chooses the id and could put anything in it, a license included."""
    if message_id is not None:
        try:
            if str(uuid.UUID(message_id)) == message_id:
                return message_id
        except (ValueError, TypeError, AttributeError):
            pass
    return f"#{delivery_tag}" if delivery_tag is not None else "without a usable id"


def new_job(license_number: str, produced_at: float) -> Job:
    return Job(id=str(uuid.uuid4()), license=license_number, produced_at=produced_at)


def _load_object(body: bytes, expected: frozenset[str]) -> dict:
    if len(body) > defaults.MAX_BODY_BYTES:
        raise InvalidMessage(f"body is {len(body)} bytes, more than {defaults.MAX_BODY_BYTES}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidMessage("body is not UTF-8 text") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        raise InvalidMessage("body is not JSON") from None
    if not isinstance(data, dict):
        raise InvalidMessage(f"body is a JSON {type(data).__name__}, not an object")
    missing = expected - data.keys()
    if missing:
        raise InvalidMessage(f"missing field(s): {', '.join(sorted(missing))}")
    unexpected = data.keys() - expected
    if unexpected:
        # Counted, not named: a field name is sender-chosen text and could be a license number.
        raise InvalidMessage(
            f"{len(unexpected)} unexpected field(s); expected exactly {', '.join(sorted(expected))}"
        )
    return data


def _check_uuid(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidMessage("id is not a string")
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise InvalidMessage("id is not a UUID") from None
    if str(parsed) != value.lower():
        raise InvalidMessage("id is not a UUID in canonical form")
    return value


def _finite(value: int | float) -> bool:
    """math.isfinite, for a JSON integer too large for a float as well (it raises there)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _check_time(name: str, value: object) -> float:
    # bool is an int subclass; true is not a time.
    if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
        raise InvalidMessage(f"{name} is not a finite number")
    if value < 0:
        raise InvalidMessage(f"{name} is negative")
    return float(value)


def parse_job(body: bytes) -> Job:
    """The job in ``body``, or InvalidMessage saying which rule it breaks."""
    data = _load_object(body, JOB_FIELDS)
    job_id = _check_uuid(data["id"])
    produced_at = _check_time("produced_at", data["produced_at"])
    license_number = data["license"]
    if not isinstance(license_number, str):
        raise InvalidMessage("license is not a string")
    size = len(license_number.encode("utf-8", errors="surrogatepass"))
    if size == 0:
        raise InvalidMessage("license is empty")
    if size > defaults.LICENSE_MAX_BYTES:
        raise InvalidMessage(
            f"license is {size} bytes in UTF-8, more than bcrypt's {defaults.LICENSE_MAX_BYTES}"
        )
    if "\x00" in license_number:
        raise InvalidMessage("license contains a NUL character")
    try:
        license_number.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidMessage("license contains a lone surrogate") from None
    return Job(id=job_id, license=license_number, produced_at=produced_at)


def parse_result(body: bytes) -> Result:
    """The result in ``body``, or InvalidMessage saying which rule it breaks."""
    data = _load_object(body, RESULT_FIELDS)
    job_id = _check_uuid(data["id"])
    digest = data["hash"]
    if not isinstance(digest, str) or not digest.startswith("$2b$") or len(digest) != 60:
        raise InvalidMessage("hash is not a bcrypt $2b$ string")
    worker = data["worker"]
    if not isinstance(worker, str) or not 0 < len(worker) <= 255:
        raise InvalidMessage("worker is not a name of 1-255 characters")
    return Result(
        id=job_id,
        hash=digest,
        worker=worker,
        produced_at=_check_time("produced_at", data["produced_at"]),
        hashed_at=_check_time("hashed_at", data["hashed_at"]),
        hash_ms=_check_time("hash_ms", data["hash_ms"]),
    )
