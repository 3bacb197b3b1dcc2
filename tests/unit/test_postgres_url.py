"""--store postgresql://...: what libpq is given, how it shows in logs and errors (never with a
password), the flags that exit 2 with one line, and make postgres's password verifier."""

import base64
import hashlib
import hmac

import pytest

from tests.conftest import run_module
from tests.support.deploy_scripts import load
from virtscale.collector.postgres_store import (
    CONNECTION_DEFAULTS,
    PostgresStore,
    connection_settings,
    description,
)
from virtscale.collector.store import StoreError
from virtscale.collector.store_url import open_store


def test_the_password_file_wins_over_the_url_and_libpq_is_left_its_own_sources():
    url = "postgresql://virtscale:in-url@db1:5433/hashes"
    assert connection_settings(url, "from-file")["password"] == "from-file"
    assert connection_settings(url, None)["password"] == "in-url"
    assert "password" not in connection_settings("postgresql://virtscale@db1/hashes", None)


def test_the_url_overrides_the_connection_defaults():
    settings = connection_settings("postgresql://u@h/db?connect_timeout=3&options=-csearch_path%3Dx", None)
    assert settings["connect_timeout"] == "3"
    assert settings["options"] == "-csearch_path=x"
    assert settings["keepalives_idle"] == CONNECTION_DEFAULTS["keepalives_idle"]
    assert (settings["user"], settings["host"], settings["dbname"]) == ("u", "h", "db")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:s3cret@h:5432/db", "postgresql://u@h:5432/db"),
        (
            "postgres://u:s3cret@h1:5432,h2:5433/db?sslmode=require",
            "postgres://u@h1:5432,h2:5433/db?sslmode=require",
        ),
        ("postgresql://u@h/db?password=s3cret&application_name=x", "postgresql://u@h/db?application_name=x"),
        ("postgresql://u:s3cret@[::1/db", "postgresql://[::1/db"),
    ],
)
def test_a_url_shows_without_its_password(url, shown):
    assert description(url) == shown


def test_the_server_is_named_to_postgres_by_the_collector():
    store = PostgresStore("postgresql://u@h/db", name="virtscale-collector host-1 licenses")
    assert store._settings["application_name"] == "virtscale-collector host-1 licenses"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--store", "postgresql://u:s3cret@h/"], "--store must name one database"),
        (["--store", "postgresql://u:s3cret@h:99999/db"], "--store: the port must be 1-65535"),
        (["--store", "postgresql://u:s3cret@h:5432,h2:0/db"], "--store: the port must be 1-65535"),
        (["--store", "postgresql://u:s3cret@[::1/db"], "is not a PostgreSQL URL libpq accepts"),
        (["--store", "postgresql://u:s3cret@h/db?colour=blue"], 'invalid URI query parameter: "colour"'),
        (["--store", "postgresql://u@h/db?password=s3cret&colour=blue"], "invalid URI query parameter"),
        (["--store", "mysql://u:s3cret@h/db"], "--store must look like sqlite:///"),
        (["--store", "sqlite:///h.db", "--store-password-file", "/etc/hostname"], "only for a postgresql://"),
        (["--store", "postgresql://u@h/db", "--store-password-file", "/no/such/file"], "cannot be read"),
    ],
)
def test_a_bad_store_flag_exits_2_with_one_line_and_no_password(argv, message):
    run = run_module("virtscale.collector", "run", *argv, timeout=60)
    assert run.returncode == 2, run.stderr
    [line] = run.stderr.strip().splitlines()
    assert message in line
    assert "s3cret" not in line


def test_open_store_picks_the_backend_by_scheme(tmp_path):
    assert type(open_store("postgresql://u@h/db")).__name__ == "PostgresStore"
    assert type(open_store("postgres://u@h/db")).__name__ == "PostgresStore"
    assert type(open_store(f"sqlite:///{tmp_path}/h.db")).__name__ == "SQLiteStore"
    with pytest.raises(StoreError, match="only for a postgresql://"):
        open_store(f"sqlite:///{tmp_path}/h.db", password="x")


def test_the_verifier_make_postgres_sets_is_rfc_7677s():
    """RFC 7677's example exchange (user "user", password "pencil") checks out against the verifier:
    the client's proof opens to a key whose hash is the StoredKey, and the server's signature
    comes from the ServerKey."""
    verifier = load("postgres_account").scram_verifier(
        "pencil", base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), 4096
    )
    iterations_salt, keys = verifier.removeprefix("SCRAM-SHA-256$").split("$")
    stored_key, server_key = (base64.b64decode(key) for key in keys.split(":"))
    assert iterations_salt == "4096:W22ZaJ0SNY7soEsUEjb6gQ=="
    nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    auth_message = (
        f"n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r={nonce}"
    )
    proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    client_signature = hmac.digest(stored_key, auth_message.encode(), "sha256")
    client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
    assert hashlib.sha256(client_key).digest() == stored_key
    server_signature = hmac.digest(server_key, auth_message.encode(), "sha256")
    assert base64.b64encode(server_signature).decode() == "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
