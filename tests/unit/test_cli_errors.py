"""A bad flag or value exits 2 with one line saying what to fix, for every command."""

import pytest

from tests.conftest import run_module

CASES = [
    ("virtscale.worker", ["--cost", "3"], "--cost: must be between 4 and 31"),
    ("virtscale.worker", ["--cost", "twelve"], "--cost: must be a whole number"),
    ("virtscale.worker", ["--concurrency", "0"], "--concurrency: must be a whole number above 0"),
    ("virtscale.worker", ["--amqp-url", "http://x"], "--amqp-url must look like amqp://"),
    ("virtscale.worker", ["--queue", "bad queue!"], "--queue: must be 1-200 letters"),
    (
        "virtscale.worker",
        ["--password-file", "/nonexistent/pw"],
        "--password-file '/nonexistent/pw' cannot be read",
    ),
    ("virtscale.worker", ["--bogus"], "unrecognized arguments: --bogus"),
    ("virtscale.producer", ["--delta", "-1"], "--delta: must be greater than 0"),
    ("virtscale.producer", ["--rate", "5", "--delta", "1"], "not allowed with argument"),
    ("virtscale.producer", ["--profile", "zigzag"], "invalid choice: 'zigzag'"),
    ("virtscale.producer", ["--trace", "/nonexistent.csv"], "/nonexistent.csv: cannot read"),
    ("virtscale.producer", ["--count", "-5"], "--count: must be a whole number, 0 or more"),
    ("virtscale.producer", ["--rate", "inf"], "must be a finite number"),
    ("virtscale.collector", ["--store", "mysql://x"], "--store must look like sqlite:///"),
    ("virtscale.collector", ["--batch", "0"], "--batch: must be a whole number above 0"),
]


@pytest.mark.parametrize(("module", "argv", "message"), CASES)
def test_bad_flag_exits_2_with_one_line(module, argv, message):
    run = run_module(module, *argv, timeout=60)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert message in lines[0]
    assert run.stdout == ""
