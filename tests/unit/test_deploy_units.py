"""The systemd units in deploy/: the scaler's and the collector's hardened host units, their env
files, and the worker's restart rules. Parsed as systemd reads them (key=value in sections), and
checked by `systemd-analyze` where it is installed."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from virtscale.collector.cli import build_parser as collector_parser
from virtscale.scaler.cli import build_parser as scaler_parser

DEPLOY = Path(__file__).resolve().parent.parent.parent / "deploy"
SYSTEMD = DEPLOY / "systemd"
HOST_UNITS = {
    "virtscale-scaler.service": SYSTEMD / "scaler.env",
    "virtscale-collector.service": SYSTEMD / "collector.env",
}
WORKER_UNIT = DEPLOY / "virtscale-worker.service"
#: Where the host units expect the project installed (their set-up comments say how).
INSTALLED = "/opt/virtscale/venv/bin/"


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # systemd's keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def env_file(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


@pytest.fixture(params=sorted(HOST_UNITS))
def host_unit(request) -> tuple[str, configparser.SectionProxy, dict[str, str]]:
    name = request.param
    return name, unit(SYSTEMD / name)["Service"], env_file(HOST_UNITS[name])


def test_host_units_are_hardened(host_unit):
    _name, service, _env = host_unit
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ProtectHome"] == "yes"
    assert service["PrivateTmp"] == "yes"
    assert service["PrivateDevices"] == "yes"
    assert service["CapabilityBoundingSet"] == ""
    # AF_UNIX: libvirtd's socket (scaler), PostgreSQL's local socket (collector), journald.
    assert service["RestrictAddressFamilies"].split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert service["SystemCallFilter"] == "@system-service"


def test_host_units_write_only_to_their_state_directory(host_unit):
    _name, service, env = host_unit
    state = f"/var/lib/{service['StateDirectory']}"
    assert service["WorkingDirectory"] == state
    assert "ReadWritePaths" not in service, "ProtectSystem=strict leaves only the state directory"
    written = re.findall(r"(?:--events |sqlite:///)(\S+)", " ".join(env.values()))
    assert written, "the env file names the file the service writes"
    assert all(path.startswith(state + "/") for path in written), written


def test_the_password_travels_as_a_credential_never_in_the_environment(host_unit):
    _name, service, env = host_unit
    credential, source = service["LoadCredential"].split(":", 1)
    assert credential == "password" and source.startswith("/etc/virtscale/")
    assert "VIRTSCALE_AMQP_PASSWORD_FILE=%d/password" in service["Environment"].split()
    assert service["EnvironmentFile"].startswith("/etc/virtscale/")
    assert service["EnvironmentFile"].endswith(".env")
    assert "VIRTSCALE_AMQP_PASSWORD" not in env
    assert "@" in env["VIRTSCALE_AMQP_URL"]
    assert ":" not in env["VIRTSCALE_AMQP_URL"].split("//", 1)[1].split("@", 1)[0], "no password in the URL"


def test_a_configuration_error_is_not_restarted(host_unit):
    _name, service, _env = host_unit
    assert service["Restart"] == "on-failure"
    assert "2" in service["RestartPreventExitStatus"].split()


def test_a_restart_loop_stops_at_the_worker_units_start_limit(host_unit):
    name, _service, _env = host_unit
    limits = unit(SYSTEMD / name)["Unit"]
    worker = unit(WORKER_UNIT)["Unit"]
    assert limits["StartLimitIntervalSec"] == worker["StartLimitIntervalSec"] == "5min"
    assert limits["StartLimitBurst"] == worker["StartLimitBurst"]


def test_the_command_line_takes_the_flags_the_env_file_gives(host_unit):
    name, service, env = host_unit
    program, command, variable = service["ExecStart"].split()
    assert program.startswith(INSTALLED) and command == "run"
    flags = env[variable.removeprefix("$")].split()
    if "scaler" in name:
        args = scaler_parser().parse_args([command, *flags])
        assert args.metrics_port is not None and args.events
    else:
        args = collector_parser().parse_args([command, *flags])
        assert args.store.startswith("sqlite:////var/lib/")


def test_the_scaler_runs_as_its_own_user_in_the_libvirt_group():
    service = unit(SYSTEMD / "virtscale-scaler.service")["Service"]
    assert service["User"] == "virtscale"
    assert "DynamicUser" not in service, "polkit grants libvirt to /etc/group members only"
    assert "libvirt" in service["SupplementaryGroups"].split()
    assert service["StateDirectory"] == "virtscale-scaler"


def test_the_collector_runs_as_a_dynamic_user():
    service = unit(SYSTEMD / "virtscale-collector.service")["Service"]
    assert service["DynamicUser"] == "yes"
    assert "User" not in service
    assert service["StateDirectory"] == "virtscale"


def test_the_worker_stops_restarting_on_a_configuration_error_and_on_a_loop():
    worker = unit(WORKER_UNIT)
    assert worker["Service"]["Restart"] == "always"
    assert worker["Service"]["RestartPreventExitStatus"].split() == ["2"]
    assert int(worker["Unit"]["StartLimitBurst"]) > 1
    assert worker["Unit"]["StartLimitIntervalSec"] == "5min"


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (package systemd); the parsed checks above still ran")
    return path


@pytest.mark.parametrize("path", [*(SYSTEMD / name for name in HOST_UNITS), WORKER_UNIT])
def test_systemd_analyze_verify_finds_nothing_but_the_uninstalled_program(path):
    """Unknown keys and bad values are reported; the one complaint allowed is that the project
    is not installed in /opt/virtscale on this machine."""
    run = subprocess.run(
        [systemd_analyze(), "verify", str(path)], capture_output=True, text=True, timeout=60, cwd=path.parent
    )
    complaints = [
        line
        for line in (run.stdout + run.stderr).splitlines()
        if line.strip() and not re.search(rf"Command {re.escape(INSTALLED)}\S+ is not executable", line)
    ]
    assert complaints == []


@pytest.mark.parametrize("name", sorted(HOST_UNITS))
def test_systemd_rates_the_host_units_exposure_low(name):
    """`systemd-analyze security` scores 0 (locked down) to 10 (exposed); --threshold is in tenths."""
    run = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--threshold=20", str(SYSTEMD / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr
