"""deploy/ scripts that write files other programs parse: cloud-init user-data (YAML) and libvirt
domain XML. Whatever characters a value holds, the output parses back to exactly that value."""

from __future__ import annotations

import base64
import io
import tarfile

import pytest
import yaml

from tests.support.deploy_scripts import load

#: Every character with a meaning in YAML, a newline and a backtick among them.
NASTY_PASSWORD = ": # ' \" { } [ ] \n - & * ! | > % @ ` ,?"


@pytest.fixture(scope="module")
def cloud_init():
    return load("cloud_init")


def cloud_config(cloud_init, tmp_path, password: str, *extra: str, capsys) -> dict:
    password_file = tmp_path / "password"
    password_file.write_text(password + "\n")
    argv = ["--name", "worker-7", "--broker", "10.0.0.5", "--password-file", str(password_file), *extra]
    assert cloud_init.main(argv) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0] == "#cloud-config"
    return yaml.safe_load(text)


def written(document: dict, path: str) -> dict:
    return next(entry for entry in document["write_files"] if entry["path"] == path)


@pytest.mark.parametrize(
    "password", [NASTY_PASSWORD, "- a", "yes", "null", "0644", "'", '"', "{a: b}", "&anchor *alias", "%TAG !"]
)
def test_the_password_round_trips_through_yaml_exactly(cloud_init, tmp_path, capsys, password):
    document = cloud_config(cloud_init, tmp_path, password, capsys=capsys)
    entry = written(document, "/etc/virtscale/password")
    assert entry["content"] == password
    assert entry["permissions"] == "0600"


def test_the_env_file_and_the_egress_rule_hold_the_broker_host_and_port(cloud_init, tmp_path, capsys):
    document = cloud_config(
        cloud_init, tmp_path, NASTY_PASSWORD, "--port", "5673", "--queue", "jobs.a", "--cost", "10",
        capsys=capsys,
    )  # fmt: skip
    env = written(document, "/etc/virtscale/worker.env")["content"].splitlines()
    assert env == [
        "VIRTSCALE_WORKER_NAME=worker-7",
        "VIRTSCALE_AMQP_URL=amqp://worker@10.0.0.5:5673/%2F",
        "VIRTSCALE_QUEUE=jobs.a",
        "VIRTSCALE_COST=10",
    ]
    rules = written(document, "/etc/nftables.d/virtscale.nft")["content"]
    assert "ip daddr 10.0.0.5 tcp dport != 5673 reject" in rules
    assert rules.count("{") == rules.count("}") == 2
    assert document["hostname"] == "worker-7"
    assert ["nft", "-f", "/etc/nftables.d/virtscale.nft"] in document["runcmd"]
    assert "python3-pika" in document["packages"]


def test_the_password_appears_only_in_its_root_only_file(cloud_init, tmp_path, capsys):
    document = cloud_config(cloud_init, tmp_path, "s3cret-XYZ", capsys=capsys)
    holders = [entry["path"] for entry in document["write_files"] if "s3cret-XYZ" in entry["content"]]
    assert holders == ["/etc/virtscale/password"]


def test_the_code_and_the_unit_travel_base64_encoded(cloud_init, tmp_path, capsys):
    document = cloud_config(cloud_init, tmp_path, "pw", capsys=capsys)
    code = written(document, "/opt/virtscale.tar.gz")
    assert code["encoding"] == "b64"
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(code["content"]))) as archive:
        names = archive.getnames()
    assert "virtscale/virtscale/broker.py" in names
    assert "virtscale/virtscale/worker/__main__.py" in names
    unit = base64.b64decode(written(document, "/etc/systemd/system/virtscale-worker.service")["content"])
    assert b"ExecStart=/usr/bin/python3 -m virtscale.worker" in unit


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--name", "worker 1", "--broker", "10.0.0.5"], "--name"),
        (["--name", "w1\nhostname: evil", "--broker", "10.0.0.5"], "--name"),
        (["--name", "w1\n", "--broker", "10.0.0.5"], "--name"),
        (["--name", "w1", "--broker", "10.0.0.5\n"], "--broker"),
        (["--name", "w1", "--broker", '10.0.0.5" accept'], "--broker"),
        (["--name", "w1", "--broker", "10.0.0.999"], "--broker"),
        (["--name", "w1", "--broker", "10.0.0.5", "--port", "0"], "--port"),
        (["--name", "w1", "--broker", "10.0.0.5", "--cost", "3"], "--cost"),
        (["--name", "w1", "--broker", "10.0.0.5", "--queue", "a b"], "--queue"),
        (["--name", "w1", "--broker", "10.0.0.5", "--user", "a@b"], "--user"),
        (["--name", "w1", "--broker", "10.0.0.5", "--password-file", "/nonexistent/pw"], "--password-file"),
    ],
)
def test_a_value_that_would_break_a_generated_file_is_one_line_and_exit_2(cloud_init, capsys, argv, flag):
    with pytest.raises(SystemExit) as exit_:
        cloud_init.main(argv)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert flag in captured.err


@pytest.mark.parametrize("host", ["broker.example.org", "mq-1", "192.168.122.1"])
def test_a_broker_may_be_a_host_name_or_an_ipv4_address(cloud_init, host):
    assert cloud_init.broker_host(host) == host
