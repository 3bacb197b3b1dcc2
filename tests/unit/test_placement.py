"""Placement (pure) and the fleet's view of the hosts: which host takes a new domain, how many
fit, why no more do, the --host-max flag, the names new domains get, and the template read again
when its file changes."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from virtscale.scaler import placement, template
from virtscale.scaler.fleet import SPARE_NAMES, Fleet, FleetConfig
from virtscale.scaler.hypervisor import DomainSample, HostSample
from virtscale.scaler.placement import MEMORY_RESERVE, PACK, SPREAD, HostRoom, choose, room, room_note
from virtscale.scaler.template import TemplateError

GIB = 2**30
MIB = 2**20
VCPUS, MEMORY = 1, 384 * MIB


def host(uri, cpus=4, committed=0, free=None, domains=0, cap=None, reachable=True):
    return HostRoom(uri, reachable, domains, cap, cpus, committed, free)


def placements(hosts, count, mode):
    """The URIs ``count`` successive placements choose, each one taken before the next."""
    chosen = []
    for _ in range(count):
        picked = choose(hosts, VCPUS, MEMORY, mode)
        if picked is None:
            break
        picked.take(VCPUS, MEMORY)
        chosen.append(picked.uri)
    return chosen


# -- one host's room -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("room_of_host", "why"),
    [
        (host("a"), None),
        (host("a", reachable=False), "unreachable"),
        (host("a", domains=2, cap=2), "at its cap (2/2)"),
        (host("a", domains=1, cap=2), None),
        (host("a", free=MEMORY + MEMORY_RESERVE), None),
        (host("a", free=MEMORY + MEMORY_RESERVE - 1), f"{(MEMORY + MEMORY_RESERVE - 1) // MIB} MiB free"),
        (host("a", free=None), None),
        (host("a", cpus=1, committed=8), None),
    ],
    ids=[
        "empty",
        "unreachable",
        "at-cap",
        "below-cap",
        "memory-just-fits",
        "memory-short",
        "memory-unknown",
        "cpu-overcommit-allowed",
    ],
)
def test_why_a_host_is_full(room_of_host, why):
    assert room_of_host.why_full(VCPUS, MEMORY) == why


def test_taking_a_domain_counts_it_its_vcpus_and_its_memory():
    room_of_host = host("a", cpus=4, committed=1, free=4 * GIB, domains=1)
    room_of_host.take(2, GIB)
    assert (room_of_host.domains, room_of_host.committed_vcpus, room_of_host.free_memory) == (2, 3, 3 * GIB)
    assert room_of_host.cpu_free_share() == pytest.approx(0.25)
    unknown = host("b", free=None)
    unknown.take(1, GIB)
    assert unknown.free_memory is None, "an unknown free memory stays unknown, never a negative guess"


# -- choosing among hosts ------------------------------------------------------------------


def test_spread_picks_the_host_with_the_largest_free_share_of_its_cpus():
    hosts = [host("busy", cpus=8, committed=6), host("idle", cpus=2), host("half", cpus=4, committed=2)]
    assert choose(hosts, VCPUS, MEMORY, SPREAD).uri == "idle"
    assert choose(hosts, VCPUS, MEMORY, PACK).uri == "busy"


def test_free_memory_breaks_a_tie_in_cpu_share():
    hosts = [host("small", free=2 * GIB), host("large", free=8 * GIB)]
    assert choose(hosts, VCPUS, MEMORY, SPREAD).uri == "large"
    assert choose(hosts, VCPUS, MEMORY, PACK).uri == "small"


def test_spread_over_hosts_of_different_sizes_follows_their_free_share():
    hosts = [host("big", cpus=4), host("small", cpus=2)]
    # big 4/4 = small 2/2 free: the first listed; then small (1.0 > 0.75), then big (0.75 > 0.5),
    # then the tie at 0.5 again to the first listed.
    assert placements(hosts, 6, SPREAD) == ["big", "small", "big", "big", "small", "big"]


def test_pack_fills_one_host_before_the_next():
    hosts = [host("a", cpus=4, cap=2), host("b", cpus=4, cap=2), host("c", cpus=4, cap=2)]
    chosen = placements(hosts, 6, PACK)
    assert len(chosen) == 6
    assert [chosen[i] == chosen[i + 1] for i in range(0, 6, 2)] == [True, True, True], chosen
    assert sorted(chosen) == ["a", "a", "b", "b", "c", "c"]


def test_no_host_is_chosen_beyond_caps_memory_or_reach():
    hosts = [
        host("capped", domains=3, cap=3),
        host("full", free=MEMORY),
        host("gone", reachable=False),
    ]
    assert choose(hosts, VCPUS, MEMORY, SPREAD) is None
    assert choose(hosts, VCPUS, MEMORY, PACK) is None


def test_an_unreachable_host_is_never_chosen_however_free():
    hosts = [host("gone", cpus=64, free=256 * GIB, reachable=False), host("small", cpus=1, committed=4)]
    assert choose(hosts, VCPUS, MEMORY, SPREAD).uri == "small"


# -- how many fit, and why not more --------------------------------------------------------


def test_room_counts_caps_and_memory_over_all_hosts_without_changing_them():
    hosts = [
        host("a", domains=1, cap=3),
        host("b", free=2 * MEMORY + MEMORY_RESERVE),
        host("c", reachable=False),
    ]
    before = [dataclasses.replace(h) for h in hosts]
    assert room(hosts, VCPUS, MEMORY, limit=100) == 2 + 2
    assert hosts == before, "counting the room places nothing"


def test_room_stops_at_the_limit():
    assert room([host("a"), host("b")], VCPUS, MEMORY, limit=3) == 3
    assert room([host("a")], VCPUS, MEMORY, limit=0) == 0


def test_room_note_names_each_full_host_and_why():
    hosts = [host("qemu+ssh://a/system", domains=2, cap=2), host("qemu+ssh://b/system", reachable=False)]
    assert room_note(hosts, VCPUS, MEMORY) == (
        "no host has room (qemu+ssh://a/system at its cap (2/2); qemu+ssh://b/system unreachable)"
    )
    assert room_note([host("a")], VCPUS, MEMORY) == ""


# -- --host-max ----------------------------------------------------------------------------

SESSION = "qemu+unix:///session?socket=/run/user/1001/libvirt/libvirt-sock"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], (None, {})),
        (["2"], (2, {})),
        (["2", "3"], (3, {})),
        (["qemu:///system=4"], (None, {"qemu:///system": 4})),
        (["1", f"{SESSION}=2"], (1, {SESSION: 2})),
    ],
)
def test_host_max_gives_a_default_and_per_uri_caps(values, expected):
    assert placement.parse_host_max(values, ["qemu:///system", SESSION]) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "give N or URI=N"),
        ("-1", "give N or URI=N"),
        ("two", "give N or URI=N"),
        ("qemu:///system=0", "give N or URI=N"),
        ("qemu:///system", "give N or URI=N"),
        ("qemu+ssh://elsewhere/system=2", "is not one of the --connect URIs"),
    ],
)
def test_a_bad_host_max_says_what_to_fix(value, message):
    with pytest.raises(ValueError, match=message):
        placement.parse_host_max([value], ["qemu:///system"])


# -- the fleet -----------------------------------------------------------------------------


def sample(name, uri, state="running"):
    return DomainSample(name, uri, state, 1, None, 1, 0.0, "template", "img")


def host_sample(uri, states=(), cpus=4, committed=0, free=None, others=()):
    domains = [sample(f"vm-{i}", uri, state) for i, state in enumerate(states, 1)]
    return HostSample(uri, domains, frozenset([*(d.name for d in domains), *others]), free, cpus, committed)


def fleet(**config):
    return Fleet(FleetConfig("vm", **config))


def test_rooms_count_active_pool_domains_against_the_cap_and_mark_silent_hosts():
    fleet_ = fleet(host_max=2, host_max_per_uri={"b": 5})
    rooms = fleet_.rooms(
        {"a": host_sample("a", ["running", "shutoff", "paused"], cpus=8, committed=3, free=GIB), "b": None}
    )
    a, b = rooms
    assert (a.uri, a.reachable, a.domains, a.cap, a.cpus, a.committed_vcpus, a.free_memory) == (
        "a",
        True,
        2,
        2,
        8,
        3,
        GIB,
    ), "a shut-off domain holds no place under the cap"
    assert (b.uri, b.reachable, b.cap) == ("b", False, 5)


def test_room_without_a_template_is_zero():
    fleet_ = fleet()
    assert fleet_.room(fleet_.rooms({"a": host_sample("a")}), None, 4) == (0, "")


def test_room_and_its_note_with_a_template(tmp_path):
    chosen = make_template(tmp_path)
    fleet_ = fleet(host_max=1)
    rooms = fleet_.rooms({"a": host_sample("a"), "b": host_sample("b", ["running"])})
    count, note = fleet_.room(rooms, chosen, 4)
    assert count == 1 and "b at its cap (1/1)" in note
    assert fleet_.room(rooms, chosen, 1) == (1, ""), "no note when the limit, not the hosts, bounds it"


def test_place_takes_the_room_so_the_next_placement_sees_it(tmp_path):
    chosen = make_template(tmp_path)
    fleet_ = fleet(host_max=1)
    rooms = fleet_.rooms({"a": host_sample("a"), "b": host_sample("b")})
    assert [fleet_.place(rooms, chosen).uri for _ in range(2)] == ["a", "b"]
    assert fleet_.place(rooms, chosen) is None


def test_new_names_skip_every_taken_name_lowest_first():
    names = fleet().new_names({"vm-1", "vm-3", "vm-9"}, 2)
    assert names[:4] == ("vm-2", "vm-4", "vm-5", "vm-6")
    assert len(names) == 2 + SPARE_NAMES
    assert not {"vm-1", "vm-3", "vm-9"} & set(names)


def test_the_cap_of_a_uri_is_its_own_or_the_default():
    fleet_ = fleet(host_max=2, host_max_per_uri={"b": 7})
    assert (fleet_.cap("a"), fleet_.cap("b")) == (2, 7)
    assert fleet().cap("a") is None


# -- the template file, read again when it changes -----------------------------------------


def make_template(tmp_path: Path, pool="vm", image_id="aaaa", **fields) -> template.Template:
    return template.Template(
        pool=pool,
        image=template.Image(image_id, str(tmp_path / f"rootfs-{image_id}.qcow2"), GIB, "/k", "/i"),
        worker=template.WorkerSettings("amqp://worker@10.0.2.2:5672/%2F", str(tmp_path / "pw"), "q", 4),
        **fields,
    )


def write(path: Path, made: template.Template) -> None:
    """As `make template` writes it: a new file renamed over the old one."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(template.dump(made))
    temporary.replace(path)


def test_the_template_is_read_again_when_its_file_changes(tmp_path):
    path = tmp_path / "vm.json"
    write(path, make_template(tmp_path, image_id="aaaa"))
    fleet_ = fleet(template_path=str(path))
    assert fleet_.template().image.id == "aaaa"
    assert not fleet_.template_changed, "the first template read is no change"
    write(path, make_template(tmp_path, image_id="bbbbbb"))
    assert fleet_.template().image.id == "bbbbbb"
    assert fleet_.template_changed


def test_a_broken_or_missing_template_keeps_the_last_good_one(tmp_path, caplog):
    path = tmp_path / "vm.json"
    write(path, make_template(tmp_path))
    fleet_ = fleet(template_path=str(path))
    good = fleet_.template()
    path.write_text("{ half a templ")
    assert fleet_.template() is good
    assert "keeping the template read before" in caplog.text
    os.unlink(path)
    assert fleet_.template() is good


def test_no_template_at_all_is_an_error_that_says_what_to_run(tmp_path):
    with pytest.raises(TemplateError, match="make template"):
        fleet(template_path=str(tmp_path / "none.json")).template()
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(TemplateError, match="make template"):
        fleet(template_path=str(tmp_path / "bad.json")).template()
    assert fleet().template() is None, "no template path: no template, no error"


def test_another_pools_template_is_refused(tmp_path):
    path = tmp_path / "other.json"
    write(path, make_template(tmp_path, pool="other"))
    with pytest.raises(TemplateError, match="template of pool 'other', not of --pool 'vm'"):
        fleet(template_path=str(path)).template()


def test_settings_read_the_password_when_a_domain_is_made(tmp_path):
    chosen = make_template(tmp_path)
    (tmp_path / "pw").write_text("first\n")
    fleet_ = fleet()
    assert b'"password": "first"' in fleet_.settings("vm-1", chosen)[0]
    (tmp_path / "pw").write_text("rotated\n")
    assert b'"password": "rotated"' in fleet_.settings("vm-2", chosen)[0], (
        "a rotated password reaches new VMs"
    )
