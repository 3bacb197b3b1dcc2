"""Pool membership is the tag in a domain's libvirt metadata, never its name: the tag itself
(scaler/ownership.py), --pool, and the Hypervisor on libvirt's test driver, which lists and acts
on tagged domains only, whatever the others are called."""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest

from tests.support.clock import FakeClock
from virtscale.scaler import cli, ownership
from virtscale.scaler.hypervisor import OWNERSHIP_RECHECK, ActionFailed, Hypervisor, read_tag
from virtscale.scaler.ownership import DEFINED, FROM_TEMPLATE, NAMESPACE, PoolTag, parse, pool_name

# -- the tag -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tag",
    [PoolTag("vm"), PoolTag("vm", FROM_TEMPLATE, "0123456789abcdef"), PoolTag("pool.b_2-x", DEFINED, "ab")],
)
def test_a_tag_reads_back_as_written_both_as_libvirt_stores_it_and_inside_domain_xml(tag):
    assert parse(tag.element()) == tag
    assert parse(tag.metadata_xml()) == tag
    assert f'xmlns:virtscale="{NAMESPACE}"' in tag.metadata_xml()


@pytest.mark.parametrize(
    "xml",
    [
        None,
        "",
        "<pool",
        "<pool/>",
        '<pool name=""/>',
        '<owner name="vm"/>',
        '<x:group xmlns:x="http://example.org/other" name="vm"/>',
    ],
    ids=["none", "empty", "broken", "no-name", "empty-name", "other-element", "other-element-ns"],
)
def test_anything_but_a_named_pool_element_is_no_tag(xml):
    assert parse(xml) is None


def test_a_tag_without_origin_is_an_operators_domain():
    assert parse(f'<pool xmlns="{NAMESPACE}" name="vm"/>') == PoolTag("vm", DEFINED, "")


@pytest.mark.parametrize("name", ["vm", "workers", "pool.b_2-x", "A" * 48])
def test_a_pool_name_is_accepted(name):
    assert pool_name(name) == name


@pytest.mark.parametrize("glob", ["vm-*", "vm-?", "vm-[12]", "*"])
def test_a_glob_is_no_pool_name_and_the_error_says_how_to_tag(glob):
    with pytest.raises(Exception, match="names a pool, not a glob") as raised:
        pool_name(glob)
    assert "make tag" in str(raised.value)


@pytest.mark.parametrize("name", ["", "-vm", "vm pool", "vm/1", "A" * 49, "vm\n"])
def test_a_malformed_pool_name_is_refused(name):
    with pytest.raises(Exception, match="must be 1-48 letters"):
        pool_name(name)


@pytest.mark.parametrize("command", ["run", "status", "tag"])
def test_a_glob_for_pool_exits_2_with_one_line(command, capsys):
    argv = [command, "--pool", "vm-*", "--connect", "test:///default"] + (
        ["vm-1"] if command == "tag" else []
    )
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "names a pool, not a glob" in error[0] and "make tag" in error[0]


# -- the Hypervisor on the test driver -----------------------------------------------------


def tagged(name, pool, origin="defined", running=False, image=""):
    image_attribute = f' image="{image}"' if image else ""
    return (
        f'<domain type="test" xmlns:test="http://libvirt.org/schemas/domain/test/1.0"><name>{name}</name>'
        f'<metadata><virtscale:pool xmlns:virtscale="{NAMESPACE}" name="{pool}" origin="{origin}"'
        f"{image_attribute}/></metadata>"
        f"<memory>524288</memory><vcpu>1</vcpu><os><type>hvm</type></os>"
        f"<test:runstate>{1 if running else 5}</test:runstate></domain>"
    )


def untagged(name, running=True):
    return (
        f'<domain type="test" xmlns:test="http://libvirt.org/schemas/domain/test/1.0"><name>{name}</name>'
        f"<memory>524288</memory><vcpu>1</vcpu><os><type>hvm</type></os>"
        f"<test:runstate>{1 if running else 5}</test:runstate></domain>"
    )


@pytest.fixture
def node(tmp_path: Path) -> str:
    """vm-1 (the pool's, defined, off), vm-2 (the pool's, on demand, running); named like the pool
    but not in it: vm-9 (untagged, running), vm-8 (pool "other", running), vm-7 (untagged, off)."""
    path = tmp_path / "node.xml"
    path.write_text(
        "<node>"
        + tagged("vm-1", "vm")
        + tagged("vm-2", "vm", FROM_TEMPLATE, running=True, image="aaaa")
        + untagged("vm-9")
        + tagged("vm-8", "other", running=True)
        + untagged("vm-7", running=False)
        + "</node>"
    )
    return f"test://{path}"


def states(hypervisor: Hypervisor) -> dict[str, tuple[bool, int]]:
    """Every domain on the connection, the pool's or not: (running, run id)."""
    connection = hypervisor._connect()
    return {d.name(): (bool(d.isActive()), d.ID()) for d in connection.listAllDomains()}


def set_tag(hypervisor: Hypervisor, name: str, tag: PoolTag | None) -> None:
    """Tag or untag a domain behind the Hypervisor's back, as another program would."""
    domain = hypervisor._connect().lookupByName(name)
    flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG | (libvirt.VIR_DOMAIN_AFFECT_LIVE if domain.isActive() else 0)
    element = tag.element() if tag else None
    domain.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, element, ownership.PREFIX, NAMESPACE, flags)


def test_only_tagged_domains_are_sampled_with_their_origin_and_image(node):
    host = Hypervisor(node, "vm").sample_host()
    assert {s.name: (s.state, s.origin, s.image, s.on_demand) for s in host.domains} == {
        "vm-1": ("shutoff", DEFINED, "", False),
        "vm-2": ("running", FROM_TEMPLATE, "aaaa", True),
    }
    assert host.names == {"vm-1", "vm-2", "vm-7", "vm-8", "vm-9"}, "every name is taken, the pool's or not"


@pytest.mark.parametrize("action", ["start", "shutdown", "destroy", "delete"])
@pytest.mark.parametrize("name", ["vm-9", "vm-8", "vm-7"])
def test_no_action_touches_a_domain_outside_the_pool(node, action, name):
    hypervisor = Hypervisor(node, "vm")
    before = states(hypervisor)
    with pytest.raises(ActionFailed, match=f"refusing to {action} {name} on .*not tagged for pool 'vm'"):
        getattr(hypervisor, action)(name)
    assert states(hypervisor) == before


def test_a_domain_an_operator_defined_is_never_deleted(node):
    hypervisor = Hypervisor(node, "vm")
    with pytest.raises(ActionFailed, match="refusing to delete vm-1: defined by an operator"):
        hypervisor.delete("vm-1")
    assert "vm-1" in states(hypervisor)


def test_an_action_reads_the_tag_afresh(node):
    hypervisor = Hypervisor(node, "vm")
    assert "vm-2" in {s.name for s in hypervisor.sample()}
    set_tag(hypervisor, "vm-2", PoolTag("other"))
    with pytest.raises(ActionFailed, match="not tagged for pool 'vm'"):
        hypervisor.shutdown("vm-2")
    assert states(hypervisor)["vm-2"][0], "still running"


def test_a_tag_set_elsewhere_is_noticed_within_the_recheck_time(node):
    clock = FakeClock()
    hypervisor = Hypervisor(node, "vm", clock=clock)
    assert "vm-9" not in {s.name for s in hypervisor.sample()}
    set_tag(hypervisor, "vm-9", PoolTag("vm"))
    clock.now += OWNERSHIP_RECHECK - 1
    assert "vm-9" not in {s.name for s in hypervisor.sample()}, "the tag is cached for a while"
    clock.now += 1
    assert "vm-9" in {s.name for s in hypervisor.sample()}


def test_tagging_makes_a_domain_a_member_persistently_and_refuses_another_pools(node):
    hypervisor = Hypervisor(node, "vm")
    hypervisor.tag("vm-9")
    assert "vm-9" in {s.name for s in hypervisor.sample()}, "noticed at once by the one that tagged it"
    domain = hypervisor._connect().lookupByName("vm-9")
    persistent = domain.metadata(
        libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE, libvirt.VIR_DOMAIN_AFFECT_CONFIG
    )
    assert parse(persistent) == PoolTag("vm", DEFINED)
    with pytest.raises(ActionFailed, match="refusing to tag vm-8: it belongs to pool 'other'"):
        hypervisor.tag("vm-8")
    assert read_tag(hypervisor._connect().lookupByName("vm-8")) == PoolTag("other")


def test_retagging_a_member_keeps_its_image(node):
    hypervisor = Hypervisor(node, "vm")
    hypervisor.tag("vm-2", FROM_TEMPLATE)
    assert read_tag(hypervisor._connect().lookupByName("vm-2")) == PoolTag("vm", FROM_TEMPLATE, "aaaa")


def test_the_tag_command_tags_what_it_may_and_says_what_it_refused(node, capsys):
    assert cli.main(["tag", "--pool", "vm", "--connect", node, "vm-9", "vm-8", "nosuch"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "vm-9: tagged for pool vm"
    assert lines[1].startswith("vm-8: refusing to tag vm-8: it belongs to pool 'other'")
    assert lines[2].startswith("nosuch: ") and len(lines) == 3
