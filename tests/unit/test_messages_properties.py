"""Properties of the message parsers: any body is a Job (or Result) or an InvalidMessage, never
another exception, and a refusal never repeats the job's license."""

from __future__ import annotations

import json
import string

from hypothesis import example, given, settings
from hypothesis import strategies as st

from virtscale.messages import InvalidMessage, Job, Result, parse_job, parse_result

#: Reproducible in CI (derandomize), no example database written into the tree, no timing.
PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, database=None)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(10**308, 10**400),  # beyond float range: JSON has no limit
    st.floats(),  # NaN and the infinities too: json writes them and reads them back
    st.text(),  # lone surrogates too: json escapes them as \ud800 and reads them back
)

json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12,
)


#: Any name; ASCII's printable characters; or a few letters and the white space (newlines too)
#: that a log line or a message header must not be broken by.
field_names = st.one_of(
    st.text(max_size=50), st.text(string.printable, max_size=50), st.text("ab \t\r\n", max_size=5)
)


@st.composite
def message_like(draw, fields: dict[str, st.SearchStrategy]) -> dict:
    """An object with these fields, now and then one missing and now and then one of any name:
    what reaches the field checks rather than stopping at the object's shape."""
    # Each field its likely kind of value three times in four, else any JSON value: most
    # messages get past the first field check, so that every check is reached.
    value = {
        name: draw(strategy if draw(st.integers(0, 3)) else json_values) for name, strategy in fields.items()
    }
    if draw(st.integers(0, 3)) == 0:
        del value[draw(st.sampled_from(sorted(fields)))]
    if draw(st.integers(0, 3)) == 0:
        value.setdefault(draw(field_names), draw(json_values))
    return value


ids = st.uuids().map(str)
times = st.floats(0, 2e9)
bcrypt_hashes = st.text(string.ascii_letters + string.digits + "./", min_size=53, max_size=53).map(
    lambda salt_and_hash: "$2b$12$" + salt_and_hash
)
job_like = message_like({"id": ids, "license": st.text(), "produced_at": times})
result_like = message_like(
    {
        "id": ids,
        "hash": bcrypt_hashes,
        "worker": st.text(),
        "produced_at": times,
        "hashed_at": times,
        "hash_ms": times,
    }
)
messages_like = st.one_of(json_values, job_like, result_like)


def encoded(value, ensure_ascii: bool) -> bytes:
    """``value`` as a body; without ensure_ascii a lone surrogate becomes bytes that are not UTF-8."""
    return json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8", errors="surrogatepass")


def parsed_or_refused(body: bytes) -> None:
    """Both parsers give their message or InvalidMessage (any other exception fails the test);
    what they accept is valid by their own rules and reads back the same after to_json."""
    for parse, kind in ((parse_job, Job), (parse_result, Result)):
        try:
            message = parse(body)
        except InvalidMessage:
            continue
        assert isinstance(message, kind)
        assert parse(message.to_json()) == message
    try:
        job = parse_job(body)
    except InvalidMessage:
        return
    assert 0 < len(job.license.encode("utf-8")) <= 72 and "\x00" not in job.license


VALID_JOB = {"id": "0c3fa49e-5d38-4a4e-9a4c-8b7f1e1d2a10", "license": "KL-07-AB-1234", "produced_at": 1.0}


def job_body_with(**fields) -> bytes:
    return json.dumps({**VALID_JOB, **fields}).encode()


@PROPERTY
@given(body=st.binary(max_size=600))
@example(body=b"")
@example(body=b"{}")
@example(body=b"\xff")
# Nested deeper than json's parser goes (RecursionError), well within MAX_BODY_BYTES:
@example(body=b"[" * 4000)
@example(body=b'{"id": ' + b'{"a": ' * 1500 + b"1" + b"}" * 1500 + b"}")
# An integer beyond float range (math.isfinite raises OverflowError on it):
@example(body=job_body_with(produced_at=10**400))
def test_any_bytes_are_a_message_or_refused(body):
    parsed_or_refused(body)


@PROPERTY
@given(value=messages_like, ensure_ascii=st.booleans())
def test_any_json_value_is_a_message_or_refused(value, ensure_ascii):
    parsed_or_refused(encoded(value, ensure_ascii))


@PROPERTY
@given(value=messages_like, ensure_ascii=st.booleans())
@example(value={**VALID_JOB, "x\nWARNING forged log line": 1}, ensure_ascii=True)
def test_a_refusal_is_one_line(value, ensure_ascii):
    """The reason goes as it is into a log line and a dead-letter header."""
    for parse in (parse_job, parse_result):
        try:
            parse(encoded(value, ensure_ascii))
        except InvalidMessage as exc:
            assert "\n" not in str(exc) and "\r" not in str(exc), repr(str(exc))


# -- a license is never repeated ---------------------------------------------------------

#: A license no reason could contain by chance: LIC and 20 random letters.
licenses = st.text(string.ascii_letters, min_size=20, max_size=20).map(lambda letters: "LIC" + letters)


@st.composite
def jobs_with_one_fault(draw) -> tuple[str, bytes]:
    """(license, body): a valid job but for one fault, the license often at the fault."""
    lic = draw(licenses)
    job = {"id": str(draw(st.uuids())), "license": lic, "produced_at": draw(st.floats(0, 2e9))}
    fault = draw(st.sampled_from(["id", "produced_at", "license", "extra", "missing", "body"]))
    somewhere = st.sampled_from([lic, [lic], {lic: lic}, {"license": lic}, f"{lic} {lic}"])
    if fault == "id":
        job["id"] = draw(somewhere | st.sampled_from([42, None, job["id"] + lic, "{" + job["id"] + "}"]))
    elif fault == "produced_at":
        job["produced_at"] = draw(
            somewhere | st.sampled_from([-1.0, True, None, "1.5", float("nan"), float("inf"), 10**400])
        )
    elif fault == "license":
        job["license"] = draw(
            somewhere
            | st.sampled_from([12345, None, True, lic * 4, lic + "\x00", lic + "\ud800", lic + "é" * 30])
        )
    elif fault == "extra":
        job[draw(field_names | st.sampled_from(["licence", "license_number", lic]))] = lic
    elif fault == "missing":
        del job[draw(st.sampled_from(["id", "produced_at"]))]
    else:
        return lic, draw(
            st.sampled_from(
                [
                    json.dumps(job)[:-1].encode(),  # cut short: not JSON
                    json.dumps([job]).encode(),  # not an object
                    json.dumps(job).encode() + b"\xff",  # not UTF-8
                    json.dumps({**job, "padding": "x" * 5000}).encode(),  # too large
                ]
            )
        )
    return lic, json.dumps(job).encode("utf-8", errors="surrogatepass")


def refusals(body: bytes) -> list[str]:
    reasons = []
    for parse in (parse_job, parse_result):
        try:
            parse(body)
        except InvalidMessage as exc:
            reasons.append(str(exc))
    return reasons


@PROPERTY
@given(case=jobs_with_one_fault())
# The license as a field name: a reason that names unexpected fields would repeat it.
@example(case=("KL-07-AB-1234", job_body_with(**{"KL-07-AB-1234": "KL-07-AB-1234"})))
def test_a_refusal_never_repeats_the_license(case):
    lic, body = case
    for reason in refusals(body):
        assert lic not in reason, reason
