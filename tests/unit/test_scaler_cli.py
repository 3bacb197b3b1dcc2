"""`virtscale-scaler` and `virtscale-producer` as a user meets them: every --help ends with
examples, --version works everywhere (their bad invocations are in test_cli_errors.py)."""

from __future__ import annotations

import pytest

from tests.conftest import run_module

SCALER, PRODUCER = "virtscale.scaler", "virtscale.producer"
#: libvirt's test driver: no libvirtd needed, and a run that passed its checks would start.
TEST_DRIVER = ["--connect", "test:///default"]
SUBCOMMANDS = ("run", "status", "simulate", "trace", "tag")


def test_the_top_level_help_lists_every_subcommand_and_ends_with_examples():
    run = run_module(SCALER, "--help", check=True)
    listed = run.stdout.split("commands:")[-1]
    for command in SUBCOMMANDS:
        assert f"\n    {command} " in listed, run.stdout
    assert "examples:" in run.stdout.rstrip().splitlines()[-5:]


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
    assert "examples:" in run.stdout.rstrip().splitlines()[-5:]
    for metavar in ("--rate JOBS/S", "--delta SECONDS", "--base JOBS/S", "--trace FILE"):
        assert metavar in run.stdout


def test_the_management_url_help_names_its_environment_variable():
    run = run_module(SCALER, "run", "--help", check=True)
    assert "VIRTSCALE_MANAGEMENT_URL" in run.stdout


def test_the_scaler_reads_the_queue_and_holds_its_lease_verifying_against_the_ca_file(monkeypatch):
    from virtscale.scaler import cli
    from virtscale.scaler.commands import run
    from virtscale.scaler.commands.pool import queue_monitor

    ca_file = "/etc/ssl/certs/ca-certificates.crt"
    url = "amqp://guest:guest@127.0.0.1:5672/%2F"
    args = cli.build_parser().parse_args(["run", "--amqp-url", url, "--ca-file", ca_file])
    parser = args.handler.args[0]
    monitor = queue_monitor(parser, args)
    assert monitor.amqp_nodes.ca_file == ca_file
    leases = []

    class Lease:
        refusal = None

        def __init__(self, nodes, *_args, **_options):
            leases.append(nodes)

        def start(self):
            pass

        def wait_settled(self, _timeout):
            return True

    monkeypatch.setattr(run, "Leadership", Lease)
    run.stand_for_lease(parser, args, monitor)
    [nodes] = leases
    assert nodes.ca_file == ca_file and nodes.urls == (url,)
    assert nodes is not monitor.amqp_nodes, "the lease fails over on its own"
