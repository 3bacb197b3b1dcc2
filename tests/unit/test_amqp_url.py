"""Where the broker password comes from: --password-file (flag or its variable), else a password
in an --amqp-url given as a flag, else VIRTSCALE_AMQP_PASSWORD, else the URL in
VIRTSCALE_AMQP_URL. Nothing here connects."""

from __future__ import annotations

import pytest

from virtscale.cli_support import resolve_and_check_amqp_url
from virtscale.config import OneLineParser, add_common_options, resolve_amqp_url


def resolved(argv, monkeypatch, **environment):
    for name in ("VIRTSCALE_AMQP_URL", "VIRTSCALE_AMQP_PASSWORD", "VIRTSCALE_AMQP_PASSWORD_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    parser = OneLineParser(prog="test")
    add_common_options(parser)  # reads the environment for its defaults
    return resolve_amqp_url(parser, parser.parse_args(argv))


def test_a_password_in_the_url_flag_wins_over_the_password_variable(monkeypatch):
    url = resolved(["--amqp-url", "amqp://u:flag@h/"], monkeypatch, VIRTSCALE_AMQP_PASSWORD="env")
    assert url == "amqp://u:flag@h/"


def test_the_password_variable_wins_over_the_url_variable(monkeypatch):
    url = resolved([], monkeypatch, VIRTSCALE_AMQP_URL="amqp://u:url@h/", VIRTSCALE_AMQP_PASSWORD="env")
    assert url == "amqp://u:env@h/"


def test_the_password_variable_fills_a_url_flag_without_a_password(monkeypatch):
    url = resolved(["--amqp-url", "amqp://u@h/"], monkeypatch, VIRTSCALE_AMQP_PASSWORD="env")
    assert url == "amqp://u:env@h/"


def test_the_password_file_wins_over_the_url_flag(monkeypatch, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("file\n")
    argv = ["--amqp-url", "amqp://u:flag@h/", "--password-file", str(secret)]
    assert resolved(argv, monkeypatch, VIRTSCALE_AMQP_PASSWORD="env") == "amqp://u:file@h/"


@pytest.mark.parametrize("url", ["amqp://u:p@[::1/", "amqp://h/?frobnicate=1", "amqp://h/?heartbeat=abc"])
def test_an_unusable_url_is_one_flag_error(url, capsys):
    parser = OneLineParser(prog="test")
    add_common_options(parser)
    with pytest.raises(SystemExit) as exit_:
        resolve_and_check_amqp_url(parser, parser.parse_args(["--amqp-url", url]))
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "VIRTSCALE_AMQP_URL" in error
