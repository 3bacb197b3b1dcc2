"""The broker topology written once (virtscale.topology_spec) and what is derived from it: the
queues' arguments, the users' rights, the committed definitions file, virtscale-broker's CLI."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.deploy_scripts import load
from virtscale import defaults, topology, topology_spec
from virtscale.naming import QueueNames

ROOT = Path(__file__).resolve().parent.parent.parent
NAMES = QueueNames("licenses")


def by_name(items) -> dict:
    return {item.name: item for item in items}


def test_the_job_queue_is_quorum_with_a_delivery_limit_and_dead_letters_to_its_dead_queue():
    queues = by_name(topology_spec.queues(NAMES, delivery_limit=7))
    assert queues["licenses"].arguments == {
        "x-queue-type": "quorum",
        "x-delivery-limit": 7,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "licenses.dead",
    }
    assert queues["licenses.hashed"].arguments == {"x-queue-type": "quorum"}
    assert queues["licenses.dead"].arguments == {"x-queue-type": "quorum"}
    assert all(queue.durable and not queue.auto_delete for queue in queues.values())


def test_the_dead_letter_queue_is_declared_before_the_queue_that_dead_letters_into_it():
    order = [queue.name for queue in topology_spec.queues(NAMES)]
    assert order.index("licenses.dead") < order.index("licenses")


def test_the_delivery_limit_defaults_to_the_project_default():
    jobs = by_name(topology_spec.queues(NAMES))["licenses"]
    assert jobs.arguments["x-delivery-limit"] == defaults.DELIVERY_LIMIT


def test_each_user_has_exactly_its_rights():
    rights = {
        user.name: (user.configure, user.write, user.read, user.tags) for user in topology_spec.users(NAMES)
    }
    assert rights == {
        "producer": ("^$", r"^amq\.default$", "^$", ()),
        "worker": ("^$", r"^licenses\.results$", "^licenses$", ()),
        "collector": ("^$", r"^amq\.default$", r"^(licenses\.hashed|licenses\.dead)$", ()),
        "scaler": (r"^virtscale\.scaler\.lease/.+$", r"^amq\.default$", "^$", ("monitoring",)),
        "provisioner": ("^$", "^$", "^$", ("administrator",)),
    }


def test_a_vm_may_consume_its_jobs_and_publish_to_the_results_exchange_only():
    vm = topology_spec.vm_user_rights(NAMES, "vm-3")
    assert vm.name == "worker.vm-3" and vm.tags == ()
    assert [
        bool(re.search(vm.write, name)) for name in ("licenses.results", "amq.default", "licenses", "")
    ] == [
        True,
        False,
        False,
        False,
    ]
    assert [bool(re.search(vm.read, name)) for name in ("licenses", "licenses.hashed", "licenses.dead")] == [
        True,
        False,
        False,
    ]
    assert not re.search(vm.configure, "licenses") and not re.search(vm.configure, "anything")


def test_the_results_exchange_routes_to_the_results_and_dead_letter_queues_only():
    (exchange,) = topology_spec.exchanges(NAMES)
    assert (exchange.name, exchange.type, exchange.bound) == (
        "licenses.results",
        "direct",
        ("licenses.hashed", "licenses.dead"),
    )


@pytest.mark.parametrize(
    ("resource", "allowed"),
    [
        ("virtscale.scaler.lease/licenses/vm", True),
        ("virtscale.scaler.lease/licenses/vm-*", True),
        ("virtscale.scaler.lease/", False),
        ("virtscale.scaler.lease", False),
        ("virtscaleXscalerXlease/licenses/vm", False),
        ("licenses", False),
        ("licenses.hashed", False),
    ],
)
def test_the_scaler_may_declare_lease_queues_and_nothing_else(resource, allowed):
    configure = by_name(topology_spec.users(NAMES))["scaler"].configure
    assert bool(re.search(configure, resource)) is allowed
    assert not re.search(by_name(topology_spec.users(NAMES))["scaler"].read, resource)


@pytest.mark.parametrize(
    ("user", "resource", "allowed"),
    [
        ("worker", "licenses", True),
        ("worker", "licenses.hashed", False),
        ("worker", "licenses.dead", False),
        ("collector", "licenses.hashed", True),
        ("collector", "licenses.dead", True),
        ("collector", "licensesXhashed", False),
        ("collector", "licenses", False),
        ("producer", "licenses", False),
        ("scaler", "licenses", False),
    ],
)
def test_read_rights_match_only_the_queue_a_component_consumes(user, resource, allowed):
    # RabbitMQ searches for the regex in the resource name, as re.search does.
    read = by_name(topology_spec.users(NAMES))[user].read
    assert bool(re.search(read, resource)) is allowed


def test_a_queue_name_with_regex_characters_is_escaped_in_the_rights():
    worker = by_name(topology_spec.users(QueueNames("a.b")))["worker"]
    assert re.search(worker.read, "a.b")
    assert not re.search(worker.read, "aXb")


def test_the_committed_definitions_file_is_what_the_topology_generates():
    committed = (ROOT / "deploy" / "rabbitmq" / "definitions.json").read_text()
    generated = topology.definitions_text(QueueNames(defaults.QUEUE), defaults.DELIVERY_LIMIT)
    assert committed == generated, (
        "deploy/rabbitmq/definitions.json is stale: "
        "virtscale-broker definitions > deploy/rabbitmq/definitions.json"
    )


def test_definitions_hold_the_queues_users_and_permissions_of_the_topology():
    document = topology_spec.definitions(NAMES, 5, vhost="/v")
    assert [queue["name"] for queue in document["queues"]] == ["licenses.dead", "licenses.hashed", "licenses"]
    assert document["queues"][2]["arguments"]["x-dead-letter-routing-key"] == "licenses.dead"
    assert {user["name"]: user["tags"] for user in document["users"]}["scaler"] == ["monitoring"]
    worker = next(grant for grant in document["permissions"] if grant["user"] == "worker")
    assert worker == {
        "user": "worker",
        "vhost": "/v",
        "configure": "^$",
        "write": r"^licenses\.results$",
        "read": "^licenses$",
    }
    assert document["exchanges"][0]["name"] == "licenses.results"
    assert [(b["source"], b["destination"], b["routing_key"]) for b in document["bindings"]] == [
        ("licenses.results", "licenses.hashed", "licenses.hashed"),
        ("licenses.results", "licenses.dead", "licenses.dead"),
    ]
    assert all(item["vhost"] == "/v" for item in document["queues"] + document["permissions"])


def test_the_definitions_command_prints_json_for_the_queue_and_limit_given(capsys):
    assert topology.main(["definitions", "--queue", "q1", "--delivery-limit", "9"]) == 0
    document = json.loads(capsys.readouterr().out)
    jobs = next(queue for queue in document["queues"] if queue["name"] == "q1")
    assert jobs["arguments"]["x-delivery-limit"] == 9


def third_party_imports(module: str) -> set[str]:
    """Top-level non-standard-library modules that importing ``module`` loads, in a clean process."""
    code = (
        f"import sys, {module}; "
        "loaded = {name.split('.')[0] for name in sys.modules}; "
        "print('\\n'.join(sorted(loaded - set(sys.stdlib_module_names))))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # Leaves out virtscale itself and the import machinery's own (__main__, an editable install's
    # finder, setuptools' _distutils_hack).
    return {
        name for name in output.split() if name != "virtscale" and not name.startswith(("__", "_distutils"))
    }


def test_the_topology_is_pure_data_on_the_standard_library():
    assert third_party_imports("virtscale.topology_spec") == set()


def test_the_broker_module_still_needs_only_what_debian_ships_in_the_vm_image():
    assert third_party_imports("virtscale.broker") == {"pika", "tenacity"}


# -- virtscale-broker's command line --------------------------------------------------------------


def test_help_ends_with_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        topology.main(["--help"])
    assert exit_.value.code == 0
    lines = capsys.readouterr().out.rstrip().splitlines()
    assert lines[-5] == "examples:"
    assert all(line.startswith("  virtscale-broker ") for line in lines[-4:])


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        topology.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("virtscale-broker ")


class Terminal(io.StringIO):
    """Standard input as a terminal where the user types ``typed``."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def deletions(monkeypatch) -> list:
    """Calls of delete_topology, which here deletes nothing and reports what the queues held, and
    of delete_policies, which deletes nothing either."""
    calls = []

    def delete(url, names, connection_name=None):
        calls.append(names)
        return {names.jobs: 3, names.results: 1, names.dead: None}

    def delete_policies(_api, _vhost, names):
        calls.append(f"policy of {names.jobs}")

    monkeypatch.setattr(topology, "delete_topology", delete)
    monkeypatch.setattr(topology, "delete_policies", delete_policies)
    return calls


@pytest.mark.parametrize("typed", ["licenses\n", "yes\n", "  yes  \n"])
def test_delete_on_a_terminal_goes_on_with_the_queue_name_or_yes(typed, monkeypatch, capsys, deletions):
    monkeypatch.setattr(sys, "stdin", Terminal(typed))
    assert topology.main(["delete", "--queue", "licenses"]) == 0
    assert deletions == [NAMES, "policy of licenses"]
    captured = capsys.readouterr()
    assert "licenses, licenses.hashed, licenses.dead" in captured.err
    assert captured.out.splitlines() == [
        "deleted licenses (3 messages)",
        "deleted licenses.hashed (1 message)",
        "licenses.dead: not there, nothing to delete",
    ]


@pytest.mark.parametrize("typed", ["no\n", "licenses.dead\n", "", "y\n"])
def test_delete_on_a_terminal_deletes_nothing_without_confirmation(typed, monkeypatch, capsys, deletions):
    monkeypatch.setattr(sys, "stdin", Terminal(typed))
    assert topology.main(["delete", "--queue", "licenses"]) == 1
    assert deletions == []
    assert "nothing deleted" in capsys.readouterr().err.splitlines()[-1]


def test_delete_with_yes_does_not_ask(monkeypatch, capsys, deletions):
    monkeypatch.setattr(sys, "stdin", Terminal(""))
    assert topology.main(["delete", "--queue", "licenses", "--yes"]) == 0
    assert deletions == [NAMES, "policy of licenses"]
    assert capsys.readouterr().err == ""


def test_delete_without_a_terminal_or_yes_refuses_with_one_line(monkeypatch, capsys, deletions):
    monkeypatch.setattr(sys, "stdin", io.StringIO("yes\n"))
    with pytest.raises(SystemExit) as exit_:
        topology.main(["delete"])
    assert exit_.value.code == 2
    assert deletions == []
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "pass --yes" in err


# -- deploy/broker_accounts.py --------------------------------------------------------------------


class RecordingHttp:
    """Records the management API calls broker_accounts would make."""

    def __init__(self):
        self.puts: list[tuple[str, dict]] = []

    def put(self, url, json, timeout):
        self.puts.append((url, json))
        return self

    def raise_for_status(self):
        return None


def test_broker_accounts_grants_each_user_its_rights_from_the_topology(tmp_path, capsys):
    accounts = load("broker_accounts")
    http = RecordingHttp()
    accounts.create_accounts(http, "http://mq/api", "/", topology_spec.users(NAMES), str(tmp_path))
    grants = {url.rsplit("/", 1)[1]: body for url, body in http.puts if "/permissions/%2F/" in url}
    assert grants == {
        "producer": {"configure": "^$", "write": r"^amq\.default$", "read": "^$"},
        "worker": {"configure": "^$", "write": r"^licenses\.results$", "read": "^licenses$"},
        "collector": {
            "configure": "^$",
            "write": r"^amq\.default$",
            "read": r"^(licenses\.hashed|licenses\.dead)$",
        },
        "scaler": {"configure": r"^virtscale\.scaler\.lease/.+$", "write": r"^amq\.default$", "read": "^$"},
        "provisioner": {"configure": "^$", "write": "^$", "read": "^$"},
    }
    users = {url.rsplit("/", 1)[1]: body for url, body in http.puts if "/users/" in url}
    assert {name: body["tags"] for name, body in users.items()} == {
        "producer": "",
        "worker": "",
        "collector": "",
        "scaler": "monitoring",
        "provisioner": "administrator",
    }
    assert users["worker"]["password"] == (tmp_path / "worker").read_text().strip()


def test_broker_accounts_reuses_an_existing_password(tmp_path):
    accounts = load("broker_accounts")
    (tmp_path / "worker").write_text("kept-password\n")
    http = RecordingHttp()
    accounts.create_accounts(http, "http://mq/api", "/", topology_spec.users(NAMES), str(tmp_path))
    assert dict(http.puts)["http://mq/api/users/worker"]["password"] == "kept-password"
