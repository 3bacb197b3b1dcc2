"""Log output of every command: dated text or JSON lines, license numbers scrubbed everywhere,
tracebacks included, and pika's own per-attempt errors kept out."""

from __future__ import annotations

import json
import logging
import re

import pytest

from virtscale.config import configure_logging, redact_url, scrub_licenses

LICENSE = "KL-07-AB-1234"


class Captured:
    """What the root handler wrote to stderr (capsys swaps sys.stderr per test phase, so the
    handler must be made during the test)."""

    def __init__(self, capsys):
        self._capsys = capsys
        self._text = ""

    def getvalue(self) -> str:
        self._text += self._capsys.readouterr().err
        return self._text


@pytest.fixture
def captured(capsys):
    yield Captured(capsys)
    logging.getLogger().handlers[:] = []


def log_with_traceback(logger: logging.Logger) -> None:
    try:
        raise ValueError(f"cannot hash {LICENSE}")
    except ValueError:
        logger.exception("job for %s failed", LICENSE)


def test_text_lines_carry_the_date_and_no_license(captured):
    configure_logging("INFO", "text")
    log_with_traceback(logging.getLogger("virtscale.test"))
    output = captured.getvalue()
    assert re.match(
        r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} ERROR virtscale.test: job for \[license\] failed", output
    )
    assert "Traceback" in output  # the traceback is there, scrubbed
    assert LICENSE not in output


def test_json_lines_are_objects_with_a_scrubbed_traceback(captured):
    configure_logging("INFO", "json")
    log_with_traceback(logging.getLogger("virtscale.test"))
    lines = captured.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["level"] == "ERROR"
    assert entry["logger"] == "virtscale.test"
    assert entry["message"] == "job for [license] failed"
    assert "ValueError: cannot hash [license]" in entry["traceback"]
    assert re.match(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+00:00$", entry["time"])
    assert LICENSE not in captured.getvalue()


def test_pika_errors_are_silenced_unless_debugging(captured):
    configure_logging("INFO", "text")
    logging.getLogger("pika.adapters.utils.connection_workflow").error("connection workflow failed")
    assert captured.getvalue() == ""
    configure_logging("DEBUG", "text")
    logging.getLogger("pika.adapters.utils.connection_workflow").error("connection workflow failed")
    logging.getLogger("pika.channel").debug("frame with a body")
    assert "connection workflow failed" in captured.getvalue()
    assert "frame with a body" not in captured.getvalue()


def test_our_own_lines_pass_at_their_level(captured):
    configure_logging("WARNING", "text")
    logging.getLogger("virtscale.test").info("quiet")
    logging.getLogger("virtscale.test").warning("loud")
    assert "quiet" not in captured.getvalue()
    assert "loud" in captured.getvalue()


@pytest.mark.parametrize(
    "variant",
    [
        "KL-07-AB-1234",
        "kl-07-ab-1234",
        "KL07AB1234",
        "kl07ab1234",
        "KL 07 AB 1234",
        "Kl-07-A-1234",
        "kl07a1234",
    ],
)
def test_the_scrubber_matches_any_case_and_separator(variant):
    assert scrub_licenses(f"job for {variant} failed") == "job for [license] failed"


@pytest.mark.parametrize("text", ["KL-07-ABC-1234", "K-07-AB-1234", "KL-7-AB-1234", "KL-07-AB-123", "vm-12"])
def test_the_scrubber_leaves_other_shapes(text):
    assert scrub_licenses(text) == text


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        ("KL-07-AB-1234", "[license]"),
        ("KL-07-AB-1234 then kl 08 c 0001.", "[license] then [license]."),
        ("(KL07AB1234)", "([license])"),
        ("KL07AB12345", "KL07AB12345"),  # a longer run of digits is something else
        ("XKL07AB1234", "XKL07AB1234"),
    ],
)
def test_the_scrubber_replaces_every_whole_license_and_nothing_else(text, scrubbed):
    assert scrub_licenses(text) == scrubbed


def log_chained_with_stack(logger: logging.Logger) -> None:
    try:
        try:
            raise KeyError(LICENSE)
        except KeyError as exc:
            raise RuntimeError(f"while hashing {LICENSE.lower()}") from exc
    except RuntimeError:
        logger.error("failed", exc_info=True, stack_info=True)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_chained_traceback_is_scrubbed_in_every_part(captured, log_format):
    configure_logging("INFO", log_format)
    log_chained_with_stack(logging.getLogger("virtscale.test"))
    output = captured.getvalue()
    assert "KeyError: '[license]'" in output and "while hashing [license]" in output
    assert LICENSE not in output and LICENSE.lower() not in output


def test_json_lines_keep_non_ascii_text_readable(captured):
    configure_logging("INFO", "json")
    logging.getLogger("virtscale.test").warning("worker vm-é: Ω")
    line = captured.getvalue()
    assert json.loads(line)["message"] == "worker vm-é: Ω"
    assert "vm-é: Ω" in line, "as UTF-8, not \\u escapes"


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("amqp://worker:s3cret@10.0.2.2:5672/%2F", "amqp://worker:***@10.0.2.2:5672/%2F"),
        ("amqps://u:p%40ss@broker.example/vh?heartbeat=5", "amqps://u:***@broker.example/vh?heartbeat=5"),
        ("amqp://u:@h/", "amqp://u:***@h/"),
        ("amqp://u:p@ss@h/", "amqp://u:***@h/"),  # an "@" in the password itself
        ("amqp://guest@h/", "amqp://guest@h/"),
        ("amqp://h:5672/", "amqp://h:5672/"),
        ("http://[::1/", "http://[::1/"),  # malformed, nothing that could be a password
        ("amqp://u:s3cret@[::1/", "[::1/"),  # malformed: only what follows the "@"
        ("amqp://u:p@ss@[::1/", "[::1/"),  # ... the last "@"
    ],
)
def test_redact_url_hides_the_password_and_keeps_the_rest(url, redacted):
    assert redact_url(url) == redacted


def test_a_password_equal_to_the_user_name_is_redacted_once():
    assert redact_url("amqp://guest:guest@127.0.0.1:5672/%2F") == "amqp://guest:***@127.0.0.1:5672/%2F"
