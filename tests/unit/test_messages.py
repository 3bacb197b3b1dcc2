import json
import uuid

import pytest

from virtscale.messages import InvalidMessage, Job, loggable_id, new_job, parse_job, parse_result
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
        (b"not json", "not JSON"),
        (b"\xff\xfe\x00binary", "not UTF-8"),
        (b"[1, 2]", "not an object"),
        (b'"text"', "not an object"),
        (job_body(license=...), "missing field(s): license"),
        (job_body(id=...), "missing field(s): id"),
        (job_body(extra=1), "1 unexpected field(s); expected exactly id, license, produced_at"),
        (job_body(id="not-a-uuid"), "id is not a UUID"),
        (job_body(id=42), "id is not a string"),
        (job_body(license=""), "license is empty"),
        (job_body(license="x" * 73), "more than bcrypt's 72"),
        (job_body(license="é" * 37), "74 bytes"),
        (job_body(license=12345), "license is not a string"),
        (job_body(license=None), "license is not a string"),
        (job_body(license="a\x00b"), "NUL"),
        (job_body(produced_at="yesterday"), "produced_at is not a finite number"),
        (job_body(produced_at=True), "produced_at is not a finite number"),
        (job_body(produced_at=-1), "negative"),
        (b'{"id": "%s", "license": "x", "produced_at": NaN}' % GOOD_ID.encode(), "finite"),
        (b" " * 5000, "more than 4096"),
    ],
)
def test_bad_jobs_are_refused_with_a_reason(body, reason):
    with pytest.raises(InvalidMessage) as caught:
        parse_job(body)
    assert reason in str(caught.value)


def test_a_refusal_never_quotes_the_license():
    secret = "KL-07-AB-1234" * 6
    with pytest.raises(InvalidMessage) as caught:
        parse_job(job_body(license=secret))
    assert "KL-07" not in str(caught.value)


def test_result_must_carry_a_bcrypt_hash():
    body = json.dumps(
        {
            "id": GOOD_ID,
            "hash": "sha256$abc",
            "worker": "vm-1",
            "produced_at": 1,
            "hashed_at": 2,
            "hash_ms": 3,
        }
    ).encode()
    with pytest.raises(InvalidMessage, match="bcrypt"):
        parse_result(body)


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
    assert "LIC" not in loggable_id("LIC-98765432")
