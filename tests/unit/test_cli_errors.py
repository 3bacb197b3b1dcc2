"""A bad flag or value exits 2 with one line saying what to fix, for every command."""

import pytest

from tests.conftest import run_module

CASES = [
    ("worker", ["--cost", "3"], "--cost: must be between 4 and 31"),
    ("worker", ["--cost", "twelve"], "--cost: must be a whole number"),
    ("worker", ["--concurrency", "0"], "--concurrency: must be a whole number above 0"),
    ("worker", ["--amqp-url", "http://x"], "--amqp-url must look like amqp://"),
    ("worker", ["--queue", "bad queue!"], "--queue: must be 1-200 letters"),
    (
        "worker",
        ["--password-file", "/nonexistent/pw"],
        "--password-file '/nonexistent/pw' cannot be read",
    ),
    ("worker", ["--bogus"], "unrecognized arguments: --bogus"),
    ("producer", ["--delta", "-1"], "--delta: must be greater than 0"),
    ("producer", ["--rate", "5", "--delta", "1"], "not allowed with argument"),
    ("producer", ["--profile", "zigzag"], "invalid choice: 'zigzag'"),
    ("producer", ["--trace", "/nonexistent.csv"], "/nonexistent.csv: cannot read"),
    ("producer", ["--count", "-5"], "--count: must be a whole number, 0 or more"),
    ("producer", ["--rate", "inf"], "must be a finite number"),
    ("producer.collector_cli", ["--store", "mysql://x"], "--store must look like sqlite:///"),
    ("producer.collector_cli", ["--batch", "0"], "--batch: must be a whole number above 0"),
]


@pytest.mark.parametrize(("module", "argv", "message"), CASES)
def test_bad_flag_exits_2_with_one_line(module, argv, message):
    run = run_module(module, *argv, timeout=60)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert message in lines[0]
    assert run.stdout == ""
