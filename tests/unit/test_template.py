"""The pool's template (scaler/template.py): the file, its id, the domain XML and a VM's settings;
and `make template` (deploy/template.py) that writes it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import pytest

from tests.support.deploy_scripts import load as load_deploy_script
from virtscale.scaler import ownership, template
from virtscale.scaler.fleet import Fleet, FleetConfig
from virtscale.scaler.template import (
    KERNEL_CMDLINE,
    SETTINGS_BYTES,
    SETTINGS_SERIAL,
    DomainFiles,
    TemplateError,
)

PASSWORD = "a-test-password-0123"
NS = {"virtscale": ownership.NAMESPACE}


def made(tmp_path: Path, **fields) -> template.Template:
    worker = template.WorkerSettings(
        amqp_url="amqp://worker@10.0.2.2:5672/%2F",
        password_file=str(tmp_path / "password"),
        queue="licenses",
        cost=10,
        egress_probe=(("10.0.2.2", 5672), ("10.0.2.2", 15672)),
    )
    image = template.Image(
        "0123456789abcdef", "/images/rootfs-1.qcow2", 2 * 2**30, "/images/vmlinuz", "/images/initrd"
    )
    return template.Template(pool="vm", image=image, worker=worker, **fields)


FILES = DomainFiles(
    kernel="/pool/image-0123456789abcdef-vmlinuz",
    initrd="/pool/image-0123456789abcdef-initrd.img",
    storage_pool="virtscale",
    overlay_volume="vm-3.qcow2",
    settings_volume="vm-3.settings",
    console_log="/pool/vm-3.console.log",
)


# -- the file ------------------------------------------------------------------------------


def test_a_dumped_template_loads_as_the_same_template(tmp_path):
    original = made(tmp_path, vcpus=2, memory_mib=512, domain_type="kvm", network="default")
    path = tmp_path / "vm.json"
    path.write_text(template.dump(original))
    again = template.load(path)
    assert again == original
    assert again.id == original.id
    assert PASSWORD not in path.read_text()


def test_optional_fields_take_their_defaults(tmp_path):
    data = json.loads(template.dump(made(tmp_path)))
    for key in ("vcpus", "memory_mib", "domain_type", "network"):
        del data[key]
    del data["worker"]["egress_probe"]
    path = tmp_path / "vm.json"
    path.write_text(json.dumps(data))
    loaded = template.load(path)
    assert (loaded.vcpus, loaded.memory_mib, loaded.domain_type, loaded.network) == (1, 384, "qemu", "user")
    assert loaded.worker.egress_probe == ()


CHANGES = {
    "vcpus": lambda t: dataclasses.replace(t, vcpus=2),
    "memory": lambda t: dataclasses.replace(t, memory_mib=1024),
    "domain-type": lambda t: dataclasses.replace(t, domain_type="kvm"),
    "network": lambda t: dataclasses.replace(t, network="default"),
    "image": lambda t: dataclasses.replace(t, image=dataclasses.replace(t.image, id="fedcba9876543210")),
    "worker": lambda t: dataclasses.replace(t, worker=dataclasses.replace(t.worker, cost=12)),
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_the_template_id_changes_with_anything_a_vm_is_made_of(tmp_path, change):
    original = made(tmp_path)
    assert change(original).id != original.id
    assert made(tmp_path).id == original.id, "and only then"


def test_the_tag_of_a_template_domain_names_its_pool_origin_image_and_generation(tmp_path):
    chosen = made(tmp_path)
    tag = chosen.tag("a password")
    assert tag == ownership.PoolTag("vm", ownership.FROM_TEMPLATE, "0123456789abcdef", tag.generation)
    assert tag.generation == template.generation(chosen, "a password")
    assert chosen.tag("rotated").generation != tag.generation, "new credentials: a new generation"
    assert "a password" not in tag.metadata_xml()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such template; run `make template`"),
        ("{not json", "not a usable template"),
        ('{"pool": "vm"}', "not a usable template"),
        ("[]", "not a usable template"),
    ],
    ids=["missing", "not-json", "incomplete", "not-an-object"],
)
def test_an_unusable_template_says_to_run_make_template(tmp_path, content, message):
    path = tmp_path / "vm.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(TemplateError, match=message) as raised:
        template.load(path)
    assert "make template" in str(raised.value)


def test_an_unknown_field_is_refused_rather_than_ignored(tmp_path):
    data = json.loads(template.dump(made(tmp_path)))
    data["image"]["colour"] = "blue"
    path = tmp_path / "vm.json"
    path.write_text(json.dumps(data))
    with pytest.raises(TemplateError, match="not a usable template"):
        template.load(path)


# -- a VM's settings -----------------------------------------------------------------------


def test_settings_hold_what_the_guest_needs_and_fit_the_settings_volume(tmp_path):
    data = template.settings("vm-3", made(tmp_path), PASSWORD)
    assert len(data) <= SETTINGS_BYTES
    assert json.loads(data) == {
        "name": "vm-3",
        "amqp_url": "amqp://worker@10.0.2.2:5672/%2F",
        "password": PASSWORD,
        "queue": "licenses",
        "cost": 10,
        "network": "user",
        "egress_probe": [["10.0.2.2", 5672], ["10.0.2.2", 15672]],
        "ca": "",
    }


def test_a_vm_of_its_own_user_logs_in_as_that_user_over_tls_with_the_templates_ca(tmp_path):
    original = made(tmp_path)
    tls = dataclasses.replace(
        original,
        worker=dataclasses.replace(
            original.worker, amqp_url="amqps://worker@10.0.2.2:5671/%2F", per_vm_users=True, ca="PEM"
        ),
    )
    data = json.loads(template.settings("vm-3", tls, "its-own", user="worker.vm-3"))
    assert data["amqp_url"] == "amqps://worker.vm-3@10.0.2.2:5671/%2F"
    assert (data["password"], data["ca"]) == ("its-own", "PEM")


def test_a_template_of_per_vm_users_has_no_shared_password_in_its_generation(tmp_path):
    original = made(tmp_path)
    per_vm = dataclasses.replace(original, worker=dataclasses.replace(original.worker, per_vm_users=True))
    (tmp_path / "password").write_text("shared\n")
    assert Fleet(FleetConfig("vm")).password(per_vm) == ""
    assert Fleet(FleetConfig("vm")).password(original) == "shared"
    with pytest.raises(TemplateError, match="provisioner"):
        Fleet(FleetConfig("vm")).settings("vm-3", per_vm)


def test_settings_on_a_libvirt_network_ask_for_dhcp(tmp_path):
    data = json.loads(template.settings("vm-3", made(tmp_path, network="default"), PASSWORD))
    assert data["network"] == "dhcp"


def test_settings_larger_than_the_volume_are_refused(tmp_path):
    original = made(tmp_path)
    huge = dataclasses.replace(
        original, worker=dataclasses.replace(original.worker, queue="q" * SETTINGS_BYTES)
    )
    with pytest.raises(TemplateError, match=f"more than {SETTINGS_BYTES}"):
        template.settings("vm-3", huge, PASSWORD)


# -- the domain XML ------------------------------------------------------------------------


def domain(tmp_path, tag=None, **fields) -> ElementTree.Element:
    chosen = made(tmp_path, **fields)
    return ElementTree.fromstring(template.domain_xml("vm-3", chosen, FILES, tag or chosen.tag("a password")))


def test_the_domain_xml_carries_the_pool_tag_in_its_metadata(tmp_path):
    xml = domain(tmp_path)
    tag = xml.find("metadata/virtscale:pool", NS)
    assert tag is not None
    assert ownership.parse(ElementTree.tostring(tag, encoding="unicode")) == made(tmp_path).tag("a password")


def test_the_domain_xml_has_the_templates_sizes_and_boots_the_images_kernel(tmp_path):
    xml = domain(tmp_path, vcpus=2, memory_mib=768)
    assert xml.get("type") == "qemu" and xml.findtext("name") == "vm-3"
    assert (xml.findtext("vcpu"), xml.findtext("memory"), xml.find("memory").get("unit")) == (
        "2",
        "768",
        "MiB",
    )
    assert xml.findtext("os/kernel") == FILES.kernel and xml.findtext("os/initrd") == FILES.initrd
    assert xml.findtext("os/cmdline") == KERNEL_CMDLINE
    assert xml.find("cpu") is None, "host-passthrough only under KVM"
    assert domain(tmp_path, domain_type="kvm").find("cpu").get("mode") == "host-passthrough"


def test_the_disks_are_volumes_of_the_storage_pool_and_the_settings_disk_is_read_only(tmp_path):
    overlay, settings_disk = domain(tmp_path).findall("devices/disk")
    assert overlay.get("type") == "volume" and overlay.find("driver").get("type") == "qcow2"
    assert overlay.find("source").attrib == {"pool": "virtscale", "volume": "vm-3.qcow2"}
    assert overlay.find("readonly") is None
    assert settings_disk.find("source").attrib == {"pool": "virtscale", "volume": "vm-3.settings"}
    assert settings_disk.findtext("serial") == SETTINGS_SERIAL
    assert settings_disk.find("readonly") is not None


def test_user_mode_or_a_libvirt_network(tmp_path):
    user = domain(tmp_path).find("devices/interface")
    assert user.get("type") == "user" and user.find("source") is None
    bridged = domain(tmp_path, network="default").find("devices/interface")
    assert bridged.get("type") == "network" and bridged.find("source").get("network") == "default"


def test_the_password_is_never_in_the_domain_xml(tmp_path):
    (tmp_path / "password").write_text(PASSWORD)
    chosen = made(tmp_path)
    xml = template.domain_xml(
        "vm-3", chosen, FILES, chosen.tag("a password"), uuid="6c1b5e0b-2c0e-4f6e-9d2b-2a3c0f0e9a11"
    )
    assert PASSWORD not in xml and "password" not in xml.lower()


# -- make template (deploy/template.py) ----------------------------------------------------


@pytest.fixture
def deploy_template():
    return load_deploy_script("template")


def test_content_hash_is_the_files_sha256_and_is_remembered(deploy_template, tmp_path):
    files = [tmp_path / "a", tmp_path / "b"]
    files[0].write_bytes(b"root")
    files[1].write_bytes(b"kernel")
    cache = tmp_path / "state" / "hashes.json"
    expected = hashlib.sha256(b"rootkernel").hexdigest()[:16]
    assert deploy_template.content_hash(files, cache) == expected
    stat = files[0].stat()
    files[0].write_bytes(b"ROOT")  # same size; the same mtime given back: the cache answers
    os.utime(files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert deploy_template.content_hash(files, cache) == expected
    os.utime(files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert deploy_template.content_hash(files, cache) == hashlib.sha256(b"ROOTkernel").hexdigest()[:16]


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")
def test_make_template_writes_a_template_the_scaler_loads(deploy_template, tmp_path, monkeypatch, capsys):
    images = tmp_path / "images"
    images.mkdir()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(images / "rootfs-1.qcow2"), "1G"], check=True
    )
    (images / "rootfs.qcow2").symlink_to("rootfs-1.qcow2")
    (images / "vmlinuz").write_bytes(b"kernel")
    (images / "initrd.img").write_bytes(b"initrd")
    monkeypatch.setattr(deploy_template, "IMAGE_DIR", images)
    password = tmp_path / "password"
    password.write_text(PASSWORD)
    out = tmp_path / "template" / "pool-a.json"
    argv = ["--pool", "pool-a", "--out", str(out), "--domain-type", "qemu", "--password-file", str(password)]
    assert deploy_template.main([*argv, "--vcpus", "2", "--memory", "512", "--cost", "10"]) == 0
    loaded = template.load(out)
    assert (loaded.pool, loaded.vcpus, loaded.memory_mib, loaded.domain_type) == ("pool-a", 2, 512, "qemu")
    assert loaded.image.rootfs == str(images / "rootfs-1.qcow2"), "the build, not the moving link"
    assert loaded.image.rootfs_virtual_size == 2**30
    assert loaded.worker.amqp_url == "amqp://worker@10.0.2.2:5672/%2F" and loaded.worker.cost == 10
    assert loaded.worker.password_file == str(password)
    assert PASSWORD not in out.read_text()
    assert loaded.worker.per_vm_users and not loaded.worker.ca
    assert f"image {loaded.image.id}" in capsys.readouterr().out
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert deploy_template.main([*argv, "--ca-file", str(ca), "--shared-user"]) == 0
    loaded = template.load(out)
    assert loaded.worker.amqp_url == "amqps://worker@10.0.2.2:5671/%2F"
    assert loaded.worker.ca == ca.read_text() and not loaded.worker.per_vm_users
