"""Every bad invocation, as a new user would type it: exit 2, one line on stderr that names what
to fix, never a traceback. Across the five commands; none of these reaches a broker or libvirtd.

``{busy_port}`` stands for a port another socket holds, ``{bad_trace}`` for a CSV trace with the
wrong header, ``{tmp}`` for a scratch folder, the others for the files ``odd_files`` makes.
"""

from __future__ import annotations

import socket
import sqlite3

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
    (
        PRODUCER,
        ["--trace", "{bad_trace}"],
        {},
        "--trace {bad_trace}: first line must be the header 'time,rate'",
    ),
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
    (
        SCALER,
        ["run", *TEST_DRIVER, "--metrics-port", "{busy_port}"],
        {},
        "--metrics-port {busy_port} on 127.0.0.1: address already in use",
    ),
    (SCALER, ["run", *TEST_DRIVER, "--min", "5", "--max", "2"], {}, "--min 5 is more than --max 2"),
    (SCALER, ["run", *TEST_DRIVER, "--queue", "q" * 200, "--pool", "p" * 48], {}, "its lease queue's name"),
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
    (SCALER, ["simulate", "--initial-vms", "10", "--max", "2"], {}, "--initial-vms 10 is more than --max 2"),
    (SCALER, ["simulate", "--policy", "psychic"], {}, "invalid choice: 'psychic'"),
    (
        SCALER,
        ["simulate", "--trace", "{bad_trace}"],
        {},
        "--trace {bad_trace}: first line must be the header 'time,rate'",
    ),
    (SCALER, ["simulate", "--service-time", "0"], {}, "--service-time"),
    (SCALER, ["trace", "/nonexistent/events.jsonl"], {}, "/nonexistent/events.jsonl"),
    (SCALER, ["trace", "{bad_trace}"], {}, "{bad_trace}:1"),
    (BROKER, [], {}, "required"),
    (BROKER, ["frobnicate"], {}, "invalid choice: 'frobnicate'"),
    (BROKER, ["declare", "--delivery-limit", "0"], {}, "--delivery-limit"),
    (BROKER, ["delete"], {}, "--yes"),
    # URLs: malformed IPv6, query options pika refuses; the same answer in all five commands.
    (WORKER, ["--amqp-url", "amqp://u:p@[::1/"], {}, "--amqp-url: malformed URL"),
    (PRODUCER, ["--amqp-url", "amqp://u:p@[::1/"], {}, "--amqp-url: malformed URL"),
    (BROKER, ["declare", "--amqp-url", "amqp://u:p@[::1/"], {}, "--amqp-url: malformed URL"),
    (SCALER, ["run", *TEST_DRIVER, "--amqp-url", "amqp://u:p@[::1/"], {}, "--amqp-url: malformed URL"),
    (SCALER, ["status", *TEST_DRIVER, "--management-url", "http://[::1/"], {}, "--management-url: malformed"),
    (COLLECTOR, ["stats", "--amqp-url", "amqp://u:p@[::1/"], {}, "--amqp-url: malformed URL"),
    (PRODUCER, ["--amqp-url", "amqp://h/?frobnicate=1"], {}, "Unknown URL parameter"),
    (BROKER, ["declare", "--amqp-url", "amqp://h/?frobnicate=1"], {}, "Unknown URL parameter"),
    (SCALER, ["run", *TEST_DRIVER, "--amqp-url", "amqp://h/?heartbeat=abc"], {}, "Invalid heartbeat"),
    (SCALER, ["status", *TEST_DRIVER, "--amqp-url", "amqp://h/?heartbeat=abc"], {}, "Invalid heartbeat"),
    (WORKER, [], {"VIRTSCALE_AMQP_URL": "amqp://h/?heartbeat=abc"}, "VIRTSCALE_AMQP_URL"),
    # Values from the environment name their variable; empty names are errors.
    (WORKER, [], {"VIRTSCALE_QUEUE": "bad q"}, "(the flag or VIRTSCALE_QUEUE)"),
    (PRODUCER, [], {"VIRTSCALE_LOG_FORMAT": "xml"}, "(the flag or VIRTSCALE_LOG_FORMAT)"),
    (WORKER, [], {"VIRTSCALE_AMQP_PASSWORD_FILE": "/nonexistent/pw"}, "VIRTSCALE_AMQP_PASSWORD_FILE"),
    (WORKER, ["--password-file", ""], {}, "--password-file: the file name is empty"),
    (SCALER, ["simulate", "--trace", ""], {}, "--trace: the file name is empty"),
    (SCALER, ["run", *TEST_DRIVER, "--pool", ""], {}, "--pool: must be 1-48 letters"),
    (SCALER, ["run", *TEST_DRIVER, "--pool", "vm-*"], {}, "--pool: names a pool, not a glob"),
    (SCALER, ["run", *TEST_DRIVER, "--host-max", "0"], {}, "--host-max '0': give N or URI=N"),
    (
        SCALER,
        ["run", *TEST_DRIVER, "--host-max", "qemu:///nowhere=2"],
        {},
        "is not one of the --connect URIs",
    ),
    (
        SCALER,
        ["run", *TEST_DRIVER, "--template", "/nonexistent.json"],
        {},
        "--template /nonexistent.json: no such",
    ),
    (SCALER, ["run", *TEST_DRIVER, "--placement", "random"], {}, "argument --placement: invalid choice"),
    # Traces that are not text, or lines over the csv module's limit.
    (SCALER, ["simulate", "--trace", "{binary_trace}"], {}, "not UTF-8 text"),
    (SCALER, ["simulate", "--trace", "{huge_trace}"], {}, "{huge_trace}:2: not a CSV line"),
    (SCALER, ["simulate", "--trace", "{long_trace}"], {}, "more than the simulator's 2592000"),
    # Bounds: values that would overflow a wait or never finish.
    (SCALER, ["simulate", "--length", "1e12"], {}, "--length: must be at most 2592000"),
    (SCALER, ["run", *TEST_DRIVER, "--interval", "1e10"], {}, "--interval: must be at most 86400"),
    (SCALER, ["run", *TEST_DRIVER, "--idle-to-zero", "1e10"], {}, "--idle-to-zero: must be at most"),
    (SCALER, ["run", *TEST_DRIVER, "--drain-timeout", "1e300"], {}, "--drain-timeout: must be at most"),
    (SCALER, ["simulate", "--interval", "1e-9"], {}, "--interval: must be at least 0.1"),
    (SCALER, ["simulate", "--max", "1000000"], {}, "--max: must be a whole number from 1 to 1000"),
    (SCALER, ["simulate", "--vcpus", "100000000"], {}, "--vcpus: must be a whole number from 1 to 256"),
    (SCALER, ["simulate", "--profile", "bursty", "--period", "1e-9"], {}, "--period: must be at least 1"),
    (BROKER, ["definitions", "--delivery-limit", "100000000000"], {}, "--delivery-limit: must be a whole"),
    (BROKER, ["definitions", "--delivery-limit", "1e11"], {}, "--delivery-limit: must be a whole number"),
    # Local files before any connection: no WARNING line about the broker comes first.
    (SCALER, ["run", *TEST_DRIVER, "--events", "/proc/version"], {}, "--events /proc/version: cannot open"),
    (COLLECTOR, ["stats", "--store", "sqlite:///{lookalike_store}"], {}, "not a virtscale store"),
    (SCALER, ["run", *TEST_DRIVER, "--events", "{tmp}"], {}, "--events"),
    (SCALER, ["run", *TEST_DRIVER, "--metrics-port", "0"], {}, "--metrics-port"),
    (SCALER, ["run", *TEST_DRIVER, "--management-ca", "/nonexistent/ca.pem"], {}, "--management-ca"),
    (SCALER, ["run", *TEST_DRIVER, "--management-url", "http://x:99999"], {}, "--management-url"),
    (SCALER, ["run", *TEST_DRIVER], {"VIRTSCALE_MANAGEMENT_URL": "ftp://x"}, "VIRTSCALE_MANAGEMENT_URL"),
    (
        SCALER,
        ["run", *TEST_DRIVER, "--amqp-url", "amqp://x:99999/"],
        {"VIRTSCALE_AMQP_PASSWORD": "secret"},
        "--amqp-url",
    ),
    (SCALER, ["status", *TEST_DRIVER, "--management-url", "ftp://x"], {}, "--management-url"),
    (SCALER, ["simulate", "--seed", "-1"], {}, "--seed"),
    (SCALER, ["simulate", "--base", "-1"], {}, "--base"),
    (SCALER, ["trace", "{bad_events}"], {}, "bad-events.jsonl:2"),
    (PRODUCER, ["--seed", "-1", "--profile", "bursty"], {}, "--seed"),
    (PRODUCER, ["--profile", "step", "--period", "0"], {}, "--period"),
    (PRODUCER, ["--amqp-url", "amqp://x:99999/"], {"VIRTSCALE_AMQP_PASSWORD": "secret"}, "--amqp-url"),
    # Several nodes of a cluster: any bad one is the same one line, whichever way they are given.
    (
        PRODUCER,
        ["--amqp-url", "amqp://h1/", "--amqp-url", "ftp://h2/"],
        {},
        "--amqp-url must look like amqp://",
    ),
    (WORKER, ["--amqp-url", "amqp://h1/,amqp://u:secret@h2:0/"], {}, "--amqp-url: the port must be 1-65535"),
    (COLLECTOR, [], {"VIRTSCALE_AMQP_URL": "amqp://h1/,amqp://u:secret@[::1/"}, "VIRTSCALE_AMQP_URL"),
    (
        SCALER,
        ["status", *TEST_DRIVER, "--management-url", "http://h1:15672", "--management-url", "ftp://h2"],
        {},
        "--management-url must be http(s)://host:port, got 'ftp://h2'",
    ),
    (
        SCALER,
        ["run", *TEST_DRIVER],
        {"VIRTSCALE_MANAGEMENT_URL": "http://h1,http://h2:0"},
        "--management-url",
    ),
    (BROKER, ["declare", "--management-url", "ftp://x"], {}, "--management-url must be http(s)://host:port"),
    (BROKER, ["delete", "--yes", "--management-url", "http://[::1"], {}, "--management-url: malformed URL"),
]


@pytest.fixture(scope="module")
def busy_port():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def odd_files(folder) -> dict[str, str]:
    """Files a user might pass by mistake: a binary trace, a trace with a 200 KB field, one that
    lasts 1e15 seconds, and a SQLite file whose tables have the store's names, not its columns."""
    names = ("binary.csv", "huge.csv", "long.csv", "lookalike.db", "bad-events.jsonl")
    files = {name: folder / name for name in names}
    files["binary.csv"].write_bytes(b"time,rate\n\xff\xfe\x00\x81\n")
    files["huge.csv"].write_text("time,rate\n" + "1" * 200_000 + ",1\n")
    files["long.csv"].write_text("time,rate\n0,1\n1e15,2\n")
    files["bad-events.jsonl"].write_text('{"time": 1, "publish_rate": 2}\n[1, 2]\n')
    with sqlite3.connect(files["lookalike.db"]) as lookalike:
        lookalike.execute("CREATE TABLE hashes (license TEXT)")
        lookalike.execute("CREATE TABLE counters (label TEXT)")
    lookalike.close()
    return {
        "binary_trace": str(files["binary.csv"]),
        "huge_trace": str(files["huge.csv"]),
        "long_trace": str(files["long.csv"]),
        "lookalike_store": str(files["lookalike.db"]),
        "bad_events": str(files["bad-events.jsonl"]),
    }


def test_there_are_enough_cases():
    assert len(CASES) >= 40
    assert {case[0] for case in CASES} == {PRODUCER, WORKER, COLLECTOR, SCALER, BROKER}


@pytest.mark.parametrize(("module", "argv", "environment", "message"), CASES)
def test_bad_invocation_exits_2_with_one_line(module, argv, environment, message, busy_port, tmp_path):
    bad_trace = tmp_path / "bad.csv"
    bad_trace.write_text("seconds,jobs\n0,1\n")
    fill = {"busy_port": str(busy_port), "bad_trace": str(bad_trace), "tmp": str(tmp_path)}
    fill.update(odd_files(tmp_path))
    argv = [argument.format(**fill) for argument in argv]
    run = run_module(module, *argv, timeout=60, env=environment)
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert message.format(**fill) in lines[0]
    assert run.stdout == ""
    assert "secret" not in run.stderr, "a password never reaches an error line"
