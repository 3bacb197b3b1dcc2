"""`virtscale-scaler` and `virtscale-producer` as a user meets them: every bad invocation is exit 2
with one line on stderr naming the flag to fix (checked before anything starts), every --help
ends with examples, --version works everywhere."""

from __future__ import annotations

import json
import socket

import pytest

from tests.conftest import run_module

SCALER, PRODUCER = "virtscale.scaler", "virtscale.producer"
#: libvirt's test driver: no libvirtd needed, and a run that passed its checks would start.
TEST_DRIVER = ["--connect", "test:///default"]
SUBCOMMANDS = ("run", "status", "simulate", "trace")

# (command, argv, environment, what the one line must contain): the bad invocations not yet in
# tests/unit/test_cli_errors.py's CASES (the others are there only).
BAD = [
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
]


@pytest.fixture(scope="module")
def busy_port():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize(("module", "argv", "environment", "message"), BAD)
def test_bad_invocation_is_exit_2_with_one_line_naming_the_flag(
    module, argv, environment, message, busy_port, tmp_path
):
    bad_trace = tmp_path / "bad.csv"
    bad_trace.write_text("seconds,jobs\n0,1\n")
    bad_events = tmp_path / "bad-events.jsonl"
    bad_events.write_text(json.dumps({"time": 1, "publish_rate": 2}) + "\n" + json.dumps([1, 2]) + "\n")
    fill = {"busy_port": busy_port, "tmp": tmp_path, "bad_trace": bad_trace, "bad_events": bad_events}
    run = run_module(module, *[argument.format(**fill) for argument in argv], timeout=60, env=environment)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert message in lines[0]
    assert "secret" not in run.stderr


def test_the_top_level_help_lists_every_subcommand_and_ends_with_examples():
    run = run_module(SCALER, "--help", check=True)
    listed = run.stdout.split("commands:")[-1]
    for command in SUBCOMMANDS:
        assert f"\n    {command} " in listed, run.stdout
    assert "examples:" in run.stdout.rstrip().splitlines()[-4]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_each_subcommand_has_a_description_examples_and_a_version(command):
    run = run_module(SCALER, command, "--help", check=True)
    usage_end = run.stdout.index("\n\n")
    assert not run.stdout[usage_end:].lstrip().startswith("options:"), "a description before the options"
    tail = run.stdout.rstrip().splitlines()
    assert any(line == "examples:" for line in tail[-4:]), run.stdout
    assert all(line.startswith("  virtscale-scaler ") for line in tail[tail.index("examples:") + 1 :])
    version = run_module(SCALER, command, "--version", check=True)
    assert version.stdout.startswith(f"virtscale-scaler {command} ")


@pytest.mark.parametrize("module", [SCALER, PRODUCER])
def test_version_on_the_command_itself(module):
    run = run_module(module, "--version", check=True)
    assert run.stdout.split()[0] == f"virtscale-{module.split('.')[-1]}"


def test_the_producer_help_ends_with_examples_and_names_units():
    run = run_module(PRODUCER, "--help", check=True)
    assert "examples:" in run.stdout.rstrip().splitlines()[-4]
    for metavar in ("--rate JOBS/S", "--delta SECONDS", "--base JOBS/S", "--trace FILE"):
        assert metavar in run.stdout


def test_the_management_url_help_names_its_environment_variable():
    run = run_module(SCALER, "run", "--help", check=True)
    assert "VIRTSCALE_MANAGEMENT_URL" in run.stdout
