import json
import uuid

import pytest

from virtscale import defaults
from virtscale.messages import InvalidMessage, Job, Result, loggable_id, new_job, parse_job, parse_result
from virtscale.naming import (
    collector_consumer_tag,
    connection_name,
    worker_consumer_tag,
    worker_from_consumer_tag,
)

GOOD_ID = str(uuid.uuid4())


def job_body(**fields) -> bytes:
    data = {"id": GOOD_ID, "license": "KL-07-AB-1234", "produced_at": 1700000000.5}
    data.update(fields)
    return json.dumps({k: v for k, v in data.items() if v is not ...}).encode()


def test_a_good_job_round_trips():
    job = new_job("KL-07-AB-1234", 12.5)
    assert parse_job(job.to_json()) == job


def test_72_byte_license_is_accepted():
    assert parse_job(job_body(license="é" * 36)).license == "é" * 36


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "body is not JSON"),
        (b"\xff\xfe\x00binary", "body is not UTF-8 text"),
        (b"[1, 2]", "body is a JSON list, not an object"),
        (b'"text"', "body is a JSON str, not an object"),
        (job_body(license=...), "missing field(s): license"),
        (job_body(id=..., produced_at=...), "missing field(s): id, produced_at"),
        (job_body(extra=1), "1 unexpected field(s); expected exactly id, license, produced_at"),
        (job_body(id="not-a-uuid"), "id is not a UUID"),
        (job_body(id=GOOD_ID.replace("-", "")), "id is not a UUID in canonical form"),
        (job_body(id=42), "id is not a string"),
        (job_body(license=""), "license is empty"),
        (job_body(license="x" * 73), "license is 73 bytes in UTF-8, more than bcrypt's 72"),
        (job_body(license="é" * 37), "license is 74 bytes in UTF-8, more than bcrypt's 72"),
        (job_body(license=12345), "license is not a string"),
        (job_body(license=None), "license is not a string"),
        (job_body(license="a\x00b"), "license contains a NUL character"),
        (job_body(license="a\ud800b"), "license contains a lone surrogate"),
        (job_body(produced_at="yesterday"), "produced_at is not a finite number"),
        (job_body(produced_at=True), "produced_at is not a finite number"),
        (job_body(produced_at=-1), "produced_at is negative"),
        (
            b'{"id": "%s", "license": "x", "produced_at": NaN}' % GOOD_ID.encode(),
            "produced_at is not a finite number",
        ),
        (b" " * 5000, "body is 5000 bytes, more than 4096"),
    ],
)
def test_bad_jobs_are_refused_with_a_reason(body, reason):
    with pytest.raises(InvalidMessage) as caught:
        parse_job(body)
    assert str(caught.value) == reason


def test_a_body_of_the_largest_size_is_read():
    body = job_body()
    padded = body[:-1] + b" " * (defaults.MAX_BODY_BYTES - len(body)) + b"}"
    assert len(padded) == defaults.MAX_BODY_BYTES
    assert parse_job(padded).id == GOOD_ID


@pytest.mark.parametrize("produced_at", [0, 0.5, 1700000000])
def test_any_time_from_zero_on_is_a_time(produced_at):
    assert parse_job(job_body(produced_at=produced_at)).produced_at == produced_at


def test_a_refusal_never_quotes_the_license():
    secret = "KL-07-AB-1234" * 6
    with pytest.raises(InvalidMessage) as caught:
        parse_job(job_body(license=secret))
    assert "KL-07" not in str(caught.value)


HASH = "$2b$12$" + "a" * 53


def result_body(**fields) -> bytes:
    data = {"id": GOOD_ID, "hash": HASH, "worker": "vm-1", "produced_at": 1.5, "hashed_at": 2, "hash_ms": 0}
    data.update(fields)
    return json.dumps({k: v for k, v in data.items() if v is not ...}).encode()


def test_a_good_result_round_trips_with_every_field():
    result = Result(GOOD_ID, HASH, "w" * 255, 1.5, 2.0, 0.25)
    assert parse_result(result.to_json()) == result
    parsed = parse_result(result_body(worker="x", hashed_at=3))
    assert parsed == Result(GOOD_ID, HASH, "x", 1.5, 3.0, 0.0)
    assert isinstance(parsed.hashed_at, float)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (result_body(hash="sha256$" + "a" * 53), "hash is not a bcrypt $2b$ string"),
        (result_body(hash="$2a$12$" + "a" * 53), "hash is not a bcrypt $2b$ string"),
        (result_body(hash=HASH + "a"), "hash is not a bcrypt $2b$ string"),
        (result_body(hash=HASH[:-1]), "hash is not a bcrypt $2b$ string"),
        (result_body(hash=60), "hash is not a bcrypt $2b$ string"),
        (result_body(worker=""), "worker is not a name of 1-255 characters"),
        (result_body(worker="w" * 256), "worker is not a name of 1-255 characters"),
        (result_body(worker=7), "worker is not a name of 1-255 characters"),
        (result_body(id="x"), "id is not a UUID"),
        (result_body(produced_at=-1), "produced_at is negative"),
        (result_body(hashed_at=-1), "hashed_at is negative"),
        (result_body(hash_ms=-1), "hash_ms is negative"),
        (result_body(produced_at="now"), "produced_at is not a finite number"),
        (result_body(hashed_at="now"), "hashed_at is not a finite number"),
        (result_body(hash_ms="now"), "hash_ms is not a finite number"),
        (result_body(hash_ms=...), "missing field(s): hash_ms"),
    ],
)
def test_bad_results_are_refused_with_a_reason(body, reason):
    with pytest.raises(InvalidMessage) as caught:
        parse_result(body)
    assert str(caught.value) == reason


def test_job_json_has_exactly_the_contract_fields():
    assert set(json.loads(Job("i", "l", 1.0).to_json())) == {"id", "license", "produced_at"}


def test_consumer_tag_carries_the_worker_name():
    assert worker_from_consumer_tag(worker_consumer_tag("vm-1:odd", "ab12")) == "vm-1:odd"
    assert worker_from_consumer_tag("ctag1.abc") is None


def test_a_collector_tag_is_never_read_as_a_worker():
    assert collector_consumer_tag("host-1", "ab12") == "virtscale-collector:host-1:ab12"
    assert worker_from_consumer_tag(collector_consumer_tag("host-1", "ab12")) is None
    assert connection_name("worker", "vm-1", "licenses") == "virtscale-worker vm-1 licenses"


def test_a_job_repr_never_shows_the_license():
    job = new_job("LIC-98765432", 1.0)
    assert "LIC-98765432" not in repr(job)
    assert job.id in repr(job)


def test_only_a_canonical_uuid_is_logged_as_a_message_id():
    canonical = str(uuid.uuid4())
    assert loggable_id(canonical, 7) == canonical
    assert loggable_id("LIC-98765432", 7) == "#7"
    assert loggable_id(canonical.upper(), 7) == "#7"
    assert loggable_id(None, 7) == "#7"
    assert loggable_id(None) == "without a usable id"
    assert loggable_id("LIC-98765432") == "without a usable id"
    assert "LIC" not in loggable_id("LIC-98765432")
