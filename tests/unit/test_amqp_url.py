"""Where the broker password comes from: --password-file (flag or its variable), else a password
in an --amqp-url given as a flag, else VIRTSCALE_AMQP_PASSWORD, else the URL in
VIRTSCALE_AMQP_URL; the same for each node of a cluster (--amqp-url repeated, or the variable
comma-separated). Nothing here connects."""

from __future__ import annotations

import pytest

from virtscale.cli_support import resolve_and_check_amqp_urls
from virtscale.config import OneLineParser, add_common_options, resolve_amqp_urls


def resolved_all(argv, monkeypatch, **environment) -> tuple[str, ...]:
    for name in ("VIRTSCALE_AMQP_URL", "VIRTSCALE_AMQP_PASSWORD", "VIRTSCALE_AMQP_PASSWORD_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    parser = OneLineParser(prog="test")
    add_common_options(parser)  # reads the environment for its defaults
    return resolve_amqp_urls(parser, parser.parse_args(argv))


def resolved(argv, monkeypatch, **environment) -> str:
    [url] = resolved_all(argv, monkeypatch, **environment)
    return url


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
        resolve_and_check_amqp_urls(parser, parser.parse_args(["--amqp-url", url]))
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "VIRTSCALE_AMQP_URL" in error


def test_each_node_of_a_cluster_gets_the_password_by_the_same_rule(monkeypatch, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("file\n")
    argv = [
        "--amqp-url",
        "amqp://u@h1:5681/",
        "--amqp-url",
        "amqp://u:own@h2:5682/",
        "--password-file",
        str(secret),
    ]
    assert resolved_all(argv, monkeypatch) == ("amqp://u:file@h1:5681/", "amqp://u:file@h2:5682/")
    argv = ["--amqp-url", "amqp://u@h1/", "--amqp-url", "amqp://u:flag@h2/"]
    assert resolved_all(argv, monkeypatch, VIRTSCALE_AMQP_PASSWORD="env") == (
        "amqp://u:env@h1/",
        "amqp://u:flag@h2/",
    )


def test_the_url_variable_holds_the_nodes_comma_separated_and_the_flag_replaces_them(monkeypatch):
    nodes = "amqp://u:p@h1:5681/%2F, amqp://u:p@h2:5682/%2F,amqp://u:p@h3:5683/%2F,"
    assert resolved_all([], monkeypatch, VIRTSCALE_AMQP_URL=nodes) == (
        "amqp://u:p@h1:5681/%2F",
        "amqp://u:p@h2:5682/%2F",
        "amqp://u:p@h3:5683/%2F",
    )
    assert resolved_all(["--amqp-url", "amqp://u:p@h9/"], monkeypatch, VIRTSCALE_AMQP_URL=nodes) == (
        "amqp://u:p@h9/",
    )
    assert resolved_all(["--amqp-url", "amqp://a/,amqp://b/"], monkeypatch) == ("amqp://a/", "amqp://b/")


def test_a_comma_inside_a_password_does_not_split_the_url(monkeypatch):
    assert resolved([], monkeypatch, VIRTSCALE_AMQP_URL="amqp://u:a,b@h/") == "amqp://u:a,b@h/"


@pytest.mark.parametrize(
    ("argv", "environment", "words"),
    [
        (["--amqp-url", "amqp://h1/", "--amqp-url", "http://h2/"], {}, "--amqp-url must look like amqp://"),
        ([], {"VIRTSCALE_AMQP_URL": "amqp://u:s3cret@h1/,ftp://u:s3cret@h2/"}, "ftp://u:***@h2/"),
        (["--amqp-url", "amqp://h1/", "--amqp-url", "amqp://h2:0/"], {}, "--amqp-url: the port must be"),
        ([], {"VIRTSCALE_AMQP_URL": ","}, "--amqp-url must look like amqp://"),
        (["--amqp-url", "amqp://h1/", "--amqp-url", "amqp://h2/?heartbeat=x"], {}, "Invalid heartbeat"),
    ],
)
def test_any_bad_node_url_is_one_flag_error_without_a_password(argv, environment, words, monkeypatch, capsys):
    for name, value in {"VIRTSCALE_AMQP_URL": None, **environment}.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    parser = OneLineParser(prog="test")
    add_common_options(parser)
    with pytest.raises(SystemExit) as exit_:
        resolve_and_check_amqp_urls(parser, parser.parse_args(argv))
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and words in error
    assert "s3cret" not in error
