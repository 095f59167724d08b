"""A user sees and changes only their own agents and what hangs off them, on every endpoint."""
from __future__ import annotations

import pytest

from agents.models import Agent
from integrations.models import Integration
from sequences.models import Sequence
from tests.factories import make_agent, make_integration, make_log, make_sequence, make_trigger
from triggers.models import Trigger

pytestmark = pytest.mark.django_db


@pytest.fixture
def owned_objects(user):
    agent = make_agent(owner=user)
    return {
        "agents": agent,
        "triggers": make_trigger(agent=agent),
        "sequences": make_sequence(agent=agent),
        "integrations": make_integration(agent=agent),
        "execution-logs": make_log(agent=agent),
    }


ENDPOINTS = ["agents", "triggers", "sequences", "integrations", "execution-logs"]
WRITABLE = ["agents", "triggers", "sequences", "integrations"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_owner_sees_own_objects(api, owned_objects, endpoint):
    listing = api.get(f"/api/{endpoint}/")
    detail = api.get(f"/api/{endpoint}/{owned_objects[endpoint].id}/")

    assert [row["id"] for row in listing.json()["results"]] == [owned_objects[endpoint].id]
    assert detail.status_code == 200


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_another_user_sees_nothing_in_lists(other_api, owned_objects, endpoint):
    response = other_api.get(f"/api/{endpoint}/")

    assert response.status_code == 200
    assert response.json()["count"] == 0
    assert response.json()["results"] == []


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
def test_another_users_object_is_a_404(other_api, owned_objects, endpoint, method):
    url = f"/api/{endpoint}/{owned_objects[endpoint].id}/"

    response = getattr(other_api, method)(url, {"name": "taken over"}, format="json")

    expected = 404 if (method == "get" or endpoint in WRITABLE) else 405
    assert response.status_code == expected
    assert "taken over" not in str(response.content)


def test_another_users_object_is_untouched_after_attempts(other_api, owned_objects):
    for endpoint in WRITABLE:
        url = f"/api/{endpoint}/{owned_objects[endpoint].id}/"
        other_api.patch(url, {"name": "taken over", "active": False}, format="json")
        other_api.delete(url)

    assert Agent.objects.filter(id=owned_objects["agents"].id, active=True).exists()
    assert Trigger.objects.filter(id=owned_objects["triggers"].id).exists()
    assert Sequence.objects.filter(id=owned_objects["sequences"].id).exists()
    assert Integration.objects.filter(id=owned_objects["integrations"].id, active=True).exists()


def test_agent_duplicate_of_another_users_agent_is_a_404(other_api, owned_objects):
    response = other_api.post(f"/api/agents/{owned_objects['agents'].id}/duplicate/")

    assert response.status_code == 404
    assert Agent.objects.count() == 1


@pytest.mark.parametrize(
    ("endpoint", "payload"),
    [
        ("triggers", {"name": "t"}),
        ("sequences", {"name": "s"}),
        ("integrations", {"integration_type": "telegram"}),
    ],
)
def test_objects_cannot_be_attached_to_another_users_agent(other_api, owned_objects, endpoint, payload):
    agent_id = owned_objects["agents"].id

    response = other_api.post(f"/api/{endpoint}/", payload | {"agent": agent_id}, format="json")

    assert response.status_code == 400
    # the same answer as for an id that does not exist: nothing confirms the agent exists
    assert response.json()["agent"] == [f'Invalid pk "{agent_id}" - object does not exist.']


@pytest.mark.parametrize("endpoint", ["triggers", "sequences", "integrations"])
def test_objects_cannot_be_moved_to_another_users_agent(api, other_user, owned_objects, endpoint):
    foreign_agent = make_agent(owner=other_user)

    response = api.patch(
        f"/api/{endpoint}/{owned_objects[endpoint].id}/", {"agent": foreign_agent.id}, format="json"
    )

    assert response.status_code == 400
    assert "agent" in response.json()


@pytest.mark.parametrize("endpoint", ["triggers", "sequences", "integrations", "execution-logs"])
def test_filtering_by_another_users_agent_looks_like_an_unknown_agent(other_api, owned_objects, endpoint):
    foreign = other_api.get(f"/api/{endpoint}/?agent={owned_objects['agents'].id}")
    unknown = other_api.get(f"/api/{endpoint}/?agent=987654")

    assert foreign.status_code == unknown.status_code == 200
    assert foreign.json()["results"] == unknown.json()["results"] == []
