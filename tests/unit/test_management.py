"""The management API of a cluster through whichever node answers (a local stand-in for each
node): a node that is down or failing hands over to the next, and the one that answered is
asked first next time."""

from __future__ import annotations

import pytest
import requests

from tests.support.management_stub import ManagementStub
from virtscale.management import ManagementApi, ManagementError


@pytest.fixture
def nodes():
    """Three stand-in nodes; a test closes or breaks the ones it wants down."""
    stubs = [ManagementStub({"node": n}) for n in range(3)]
    yield stubs
    for stub in stubs:
        stub.close()


def api_of(stubs) -> ManagementApi:
    return ManagementApi([stub.url for stub in stubs], ("guest", "s3cret"))


def test_a_node_that_is_down_or_failing_hands_over_to_the_next(nodes):
    nodes[0].close()
    nodes[1].status = 503
    api = api_of(nodes)
    assert api.get("/api/overview").json() == {"node": 2}
    assert api.get("/api/overview").json() == {"node": 2}
    assert nodes[1].requests == 1, "the node that answered is asked first from then on"


def test_every_node_down_is_one_error_naming_each(nodes):
    for stub in nodes:
        stub.close()
    with pytest.raises(requests.ConnectionError) as caught:
        api_of(nodes).get("/api/overview")
    assert all(stub.url in str(caught.value) for stub in nodes)


def test_every_node_failing_returns_the_last_answer(nodes):
    for stub in nodes:
        stub.status = 500
    assert api_of(nodes).get("/api/overview").status_code == 500


def test_a_refusal_is_an_answer_not_a_reason_to_ask_another_node(nodes):
    nodes[0].status = 401
    assert api_of(nodes).get("/api/overview").status_code == 401
    assert nodes[1].requests == 0


def test_a_change_sends_its_body_and_says_why_the_broker_refused_it(nodes):
    api = api_of(nodes)
    api.change("PUT", "/api/policies/%2F/p", "setting policy p", json={"pattern": "^q$"})
    assert nodes[0].calls == [("PUT", "/api/policies/%2F/p", {"pattern": "^q$"})]
    nodes[0].status, nodes[0].body = 400, {"error": "bad_request", "reason": "unknown key\nfoo"}
    with pytest.raises(
        ManagementError, match="setting policy p: the management API said 400 unknown key foo"
    ):
        api.change("PUT", "/api/policies/%2F/p", "setting policy p", json={})
    nodes[0].status = 403
    with pytest.raises(ManagementError, match="policymaker") as caught:
        api.change("PUT", "/api/policies/%2F/p", "setting policy p", json={})
    assert "s3cret" not in str(caught.value)


def test_a_delete_of_what_is_not_there_is_fine_only_when_asked(nodes):
    nodes[0].status = 404
    api = api_of(nodes)
    assert api.change("DELETE", "/api/policies/%2F/p", "deleting", missing_ok=True).status_code == 404
    with pytest.raises(ManagementError):
        api.change("PUT", "/api/policies/%2F/p", "setting", json={})
