"""Every bad invocation, as a new user would type it: exit 2, one line on stderr that names what
to fix, never a traceback. Across the five commands; none of these reaches a broker or libvirtd.

``{busy_port}`` stands for a port another socket holds, ``{bad_trace}`` for a CSV trace with the
wrong header, ``{tmp}`` for a scratch folder.
"""

from __future__ import annotations

import socket

import pytest

from tests.conftest import run_module

PRODUCER, WORKER, COLLECTOR, SCALER, BROKER = (
    "virtscale.producer",
    "virtscale.worker",
    "virtscale.collector",
    "virtscale.scaler",
    "virtscale.topology",
)
#: The scaler's libvirt connection in these cases: the test driver, so no libvirtd is needed.
TEST_DRIVER = ["--connect", "test:///default"]

# (command, argv, environment, what the one line must contain)
CASES = [
    (PRODUCER, ["--delta", "-1"], {}, "--delta: must be greater than 0"),
    (PRODUCER, ["--rate", "5", "--delta", "1"], {}, "not allowed with argument"),
    (PRODUCER, ["--profile", "zigzag"], {}, "invalid choice: 'zigzag'"),
    (PRODUCER, ["--trace", "/nonexistent.csv"], {}, "/nonexistent.csv: cannot read"),
    (PRODUCER, ["--trace", "{bad_trace}"], {}, "header 'time,rate'"),
    (PRODUCER, ["--count", "-5"], {}, "--count: must be a whole number, 0 or more"),
    (PRODUCER, ["--rate", "inf"], {}, "must be a finite number"),
    (PRODUCER, ["--rate", "nan"], {}, "must be a finite number"),
    (PRODUCER, ["--max-outstanding", "0"], {}, "--max-outstanding"),
    (PRODUCER, ["--profile", "step", "--base", "-1"], {}, "--base"),
    (PRODUCER, ["--profile", "step", "--duration", "0"], {}, "--duration"),
    (PRODUCER, ["--run-for", "0"], {}, "--run-for"),
    (PRODUCER, ["--seed", "abc"], {}, "--seed"),
    (PRODUCER, ["--amqp-url", "amqp://"], {}, "--amqp-url must look like amqp://"),
    (PRODUCER, [], {"VIRTSCALE_AMQP_URL": "ftp://example"}, "--amqp-url must look like amqp://"),
    (WORKER, ["--cost", "3"], {}, "--cost: must be between 4 and 31"),
    (WORKER, ["--cost", "twelve"], {}, "--cost: must be a whole number"),
    (WORKER, ["--concurrency", "0"], {}, "--concurrency: must be a whole number above 0"),
    (WORKER, ["--prefetch-per-slot", "0"], {}, "--prefetch-per-slot"),
    (WORKER, ["--amqp-url", "http://x"], {}, "--amqp-url must look like amqp://"),
    (WORKER, ["--queue", "bad queue!"], {}, "--queue: must be 1-200 letters"),
    (WORKER, ["--queue", "x" * 201], {}, "--queue: must be 1-200 letters"),
    (WORKER, ["--queue", "licenses\n"], {}, "--queue: must be 1-200 letters"),
    (WORKER, ["--password-file", "/nonexistent/pw"], {}, "--password-file '/nonexistent/pw' cannot be read"),
    (WORKER, ["--bogus"], {}, "unrecognized arguments: --bogus"),
    (WORKER, ["--log-level", "loud"], {}, "--log-level: must be one of"),
    (WORKER, [], {"VIRTSCALE_LOG_LEVEL": "bogus"}, "VIRTSCALE_LOG_LEVEL"),
    (WORKER, ["--log-format", "xml"], {}, "--log-format: must be one of"),
    (WORKER, [], {"VIRTSCALE_LOG_FORMAT": "xml"}, "--log-format: must be one of"),
    (COLLECTOR, ["--store", "mysql://x"], {}, "--store must look like sqlite:///"),
    (COLLECTOR, ["--store", "sqlite:///"], {}, "--store must look like sqlite:///"),
    (COLLECTOR, ["--batch", "0"], {}, "--batch: must be a whole number above 0"),
    (COLLECTOR, ["--flush-interval", "0"], {}, "--flush-interval: must be greater than 0"),
    (COLLECTOR, ["frobnicate"], {}, "invalid choice: 'frobnicate'"),
    (COLLECTOR, ["run", "--store", "sqlite:///{tmp}"], {}, "--store"),
    (SCALER, [], {}, "required"),
    (SCALER, ["frobnicate"], {}, "invalid choice: 'frobnicate'"),
    (SCALER, ["run", *TEST_DRIVER, "--events", "/nonexistent/dir/e.jsonl"], {}, "--events"),
    (SCALER, ["run", *TEST_DRIVER, "--metrics-port", "70000"], {}, "--metrics-port"),
    (SCALER, ["run", *TEST_DRIVER, "--metrics-port", "{busy_port}"], {}, "--metrics-port"),
    (SCALER, ["run", *TEST_DRIVER, "--min", "5", "--max", "2"], {}, "--min 5 is more than --max 2"),
    (SCALER, ["run", *TEST_DRIVER, "--cpu-low", "90", "--cpu-high", "80"], {}, "--cpu-low"),
    (SCALER, ["run", *TEST_DRIVER, "--cpu-high", "150"], {}, "--cpu-high"),
    (SCALER, ["run", *TEST_DRIVER, "--interval", "0"], {}, "--interval"),
    (SCALER, ["run", *TEST_DRIVER, "--window", "-1"], {}, "--window"),
    (SCALER, ["run", "--connect", "bogus+nothing:///x"], {}, "--connect"),
    (SCALER, ["run", *TEST_DRIVER, "--management-url", "ftp://x"], {}, "--management-url"),
    (SCALER, ["status", *TEST_DRIVER, "--management-url", "nohost"], {}, "--management-url"),
    (SCALER, ["simulate", "--log-level", "bogus"], {}, "--log-level"),
    (SCALER, ["simulate", "--plot", "/nonexistent/x.png"], {}, "--plot"),
    (SCALER, ["simulate", "--plot", "{tmp}/out.txt"], {}, "--plot"),
    (SCALER, ["simulate", "--initial-vms", "10", "--max", "2"], {}, "--initial-vms"),
    (SCALER, ["simulate", "--policy", "psychic"], {}, "invalid choice: 'psychic'"),
    (SCALER, ["simulate", "--trace", "{bad_trace}"], {}, "header 'time,rate'"),
    (SCALER, ["simulate", "--service-time", "0"], {}, "--service-time"),
    (SCALER, ["trace", "/nonexistent/events.jsonl"], {}, "/nonexistent/events.jsonl"),
    (SCALER, ["trace", "{bad_trace}"], {}, "{bad_trace}"),
    (BROKER, [], {}, "required"),
    (BROKER, ["frobnicate"], {}, "invalid choice: 'frobnicate'"),
    (BROKER, ["declare", "--delivery-limit", "0"], {}, "--delivery-limit"),
    (BROKER, ["delete"], {}, "--yes"),
]


@pytest.fixture(scope="module")
def busy_port():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_there_are_enough_cases():
    assert len(CASES) >= 40
    assert {case[0] for case in CASES} == {PRODUCER, WORKER, COLLECTOR, SCALER, BROKER}


@pytest.mark.parametrize(("module", "argv", "environment", "message"), CASES)
def test_bad_invocation_exits_2_with_one_line(module, argv, environment, message, busy_port, tmp_path):
    bad_trace = tmp_path / "bad.csv"
    bad_trace.write_text("seconds,jobs\n0,1\n")
    fill = {"busy_port": str(busy_port), "bad_trace": str(bad_trace), "tmp": str(tmp_path)}
    argv = [argument.format(**fill) for argument in argv]
    run = run_module(module, *argv, timeout=60, env=environment)
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert message.format(**fill) in lines[0]
    assert run.stdout == ""
