"""deploy/ scripts that write files other programs parse: cloud-init user-data (YAML) and libvirt
domain XML. Whatever characters a value holds, the output parses back to exactly that value."""

from __future__ import annotations

import base64
import io
import subprocess
import tarfile
from xml.etree import ElementTree

import pytest
import yaml

from tests.support.deploy_scripts import load
from virtscale.scaler import template

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
        cloud_init,
        tmp_path,
        NASTY_PASSWORD,
        "--port",
        "5673",
        "--queue",
        "jobs.a",
        "--cost",
        "10",
        capsys=capsys,
    )
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


#: Debian 12's /etc/nftables.conf as the nftables package installs it (abridged).
DEBIAN_NFTABLES_CONF = """#!/usr/sbin/nft -f

flush ruleset

table inet filter {
\tchain input {
\t\ttype filter hook input priority filter;
\t}
}
"""


def test_the_egress_rule_is_loaded_at_every_boot_too(cloud_init, tmp_path, capsys):
    document = cloud_config(cloud_init, tmp_path, "pw", capsys=capsys)
    steps = document["runcmd"]
    load_now = steps.index(["nft", "-f", "/etc/nftables.d/virtscale.nft"])
    persist = steps.index(cloud_init.persist_rules_command())
    enable = steps.index(["systemctl", "enable", "nftables.service"])
    start_worker = steps.index(["systemctl", "enable", "--now", "virtscale-worker.service"])
    assert load_now < persist < enable < start_worker
    assert "/etc/nftables.conf" in " ".join(steps[persist])


def test_the_include_is_added_to_nftables_conf_once_and_keeps_what_was_there(cloud_init, tmp_path):
    conf = tmp_path / "nftables.conf"
    conf.write_text(DEBIAN_NFTABLES_CONF)
    for _ in range(2):  # cloud-init runs runcmd once per instance; a second run changes nothing
        subprocess.run(cloud_init.persist_rules_command(str(conf)), check=True, timeout=30)
    text = conf.read_text()
    assert text.startswith(DEBIAN_NFTABLES_CONF)
    assert text[len(DEBIAN_NFTABLES_CONF) :] == 'include "/etc/nftables.d/*.nft"\n'


def test_the_rule_file_replaces_its_own_table_so_it_can_be_loaded_again(cloud_init):
    rules = cloud_init.egress_rules("10.0.0.5", 5672).splitlines()
    assert rules[:3] == ["table inet virtscale", "delete table inet virtscale", "table inet virtscale {"]


# -- scaler/template.py: the domain XML of a pool VM ---------------------------------------------

#: Every character with a meaning in XML markup.
NASTY_NETWORK = "we\"ird<>&'net"


def pool_template(network="user", domain_type="qemu", vcpus=2) -> template.Template:
    image = template.Image("c0ffee", "/images/rootfs.qcow2", 2**30, "/images/vmlinuz", "/images/initrd.img")
    worker = template.WorkerSettings("amqp://worker@10.0.2.2:5672/%2F", "/secrets/worker", "licenses", 10)
    return template.Template("vm", image, worker, vcpus=vcpus, domain_type=domain_type, network=network)


def domain(name="vm-1", network="user", domain_type="qemu", uuid=None, folder="/pool") -> ElementTree.Element:
    files = template.DomainFiles(
        f"{folder}/vmlinuz",
        f"{folder}/initrd",
        "virtscale",
        f"{name}.qcow2",
        f"{name}.settings",
        f"{folder}/{name}.log",
    )
    made = pool_template(network, domain_type)
    return ElementTree.fromstring(template.domain_xml(name, made, files, made.tag("a password"), uuid))


def test_a_network_name_with_markup_characters_is_escaped():
    source = domain(network=NASTY_NETWORK).find("devices/interface/source")
    assert source.get("network") == NASTY_NETWORK
    assert domain(network=NASTY_NETWORK).find("devices/interface").get("type") == "network"


def test_a_name_and_a_folder_with_markup_characters_are_escaped():
    root = domain(name="vm-<&>", folder="/images/a&b<c>'\"d")
    assert root.findtext("name") == "vm-<&>"
    assert root.find("devices/disk/source").get("volume") == "vm-<&>.qcow2"
    assert root.findtext("os/kernel") == "/images/a&b<c>'\"d/vmlinuz"


def test_a_normal_domain_has_the_elements_the_scaler_and_the_guest_rely_on():
    root = domain(name="vm-2")
    assert root.tag == "domain" and root.get("type") == "qemu" and root.findtext("name") == "vm-2"
    assert root.find("uuid") is None and root.find("cpu") is None
    assert (root.findtext("memory"), root.find("memory").get("unit"), root.findtext("vcpu")) == (
        "384",
        "MiB",
        "2",
    )
    overlay, settings = root.findall("devices/disk")
    assert overlay.find("source").get("pool") == "virtscale" and overlay.find("target").get("dev") == "vda"
    assert settings.findtext("serial") == "virtscale-config", "the guest finds its settings by this serial"
    assert settings.find("readonly") is not None
    interface = root.find("devices/interface")
    assert interface.get("type") == "user" and interface.find("source") is None
    assert interface.find("model").get("type") == "virtio"
    assert root.find("devices/serial/source").get("path") == "/pool/vm-2.log"
    tag = root.find("metadata/{http://virtscale.org/xmlns/pool/1}pool")
    assert (tag.get("name"), tag.get("origin"), tag.get("image")) == ("vm", "template", "c0ffee")


def test_no_secret_is_in_the_domain_xml():
    xml = ElementTree.tostring(domain())
    assert b"password" not in xml and b"/secrets/" not in xml


def test_kvm_passes_the_host_cpu_through_and_a_redefinition_keeps_its_uuid():
    root = domain(domain_type="kvm", uuid="0b6e1f3c-5d35-4b1e-9f3a-2c9f0d7e1a11")
    assert root.get("type") == "kvm"
    assert root.find("cpu").get("mode") == "host-passthrough"
    assert root.findtext("uuid") == "0b6e1f3c-5d35-4b1e-9f3a-2c9f0d7e1a11"


@pytest.mark.libvirt
def test_libvirt_accepts_the_domain_and_keeps_the_escaped_network_and_the_tag():
    libvirt = pytest.importorskip("libvirt")
    connection = libvirt.open("test:///default")
    try:
        made = pool_template(NASTY_NETWORK, vcpus=1)
        files = template.DomainFiles("/k", "/i", "default-pool", "a.qcow2", "a.settings", "/a.log")
        defined = connection.defineXML(template.domain_xml("vm-escape", made, files, made.tag("a password")))
        source = ElementTree.fromstring(defined.XMLDesc()).find("devices/interface/source")
        assert source.get("network") == NASTY_NETWORK
        tag = defined.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, "http://virtscale.org/xmlns/pool/1")
        assert 'name="vm"' in tag
        defined.undefine()
    finally:
        connection.close()
