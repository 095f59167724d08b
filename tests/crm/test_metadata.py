"""CRM metadata for editors: cached for an hour, per the user's own Kommo integration."""
from __future__ import annotations

import pytest
import responses
from django.core.management import CommandError, call_command

from crm.models import CrmSnapshot
from tests.factories import make_agent, make_integration

pytestmark = pytest.mark.django_db

BASE = "https://acme.kommo.com"
LEAD_FIELDS = {
    "_embedded": {
        "custom_fields": [
            {"id": 101, "name": "Budget", "type": "numeric", "code": None, "is_predefined": False, "enums": None},
            {
                "id": 102,
                "name": "Source",
                "type": "select",
                "code": None,
                "is_predefined": False,
                "enums": [{"id": 1, "value": "Site", "sort": 1}, {"id": 2, "value": "Ads", "sort": 2}],
            },
        ]
    },
    "_links": {"self": {"href": f"{BASE}/api/v4/leads/custom_fields?page=1&limit=250"}},
}
PIPELINES = {
    "_embedded": {
        "pipelines": [
            {
                "id": 5,
                "name": "Sales",
                "is_main": True,
                "_embedded": {
                    "statuses": [
                        {"id": 10, "name": "New", "sort": 10, "type": 1},
                        {"id": 142, "name": "Won", "sort": 10000, "type": 0},
                        {"id": 143, "name": "Lost", "sort": 11000, "type": 0},
                    ]
                },
            }
        ]
    }
}


def kommo(agent=None, **overrides):
    return make_integration(
        agent=agent,
        integration_type="kommo",
        config={"base_url": BASE},
        credentials={"access_token": "LONG-LIVED-TOKEN"},
        **overrides,
    )


@responses.activate
def test_lead_fields_are_served_and_cached(api, agent):
    kommo(agent)
    crm = responses.get(f"{BASE}/api/v4/leads/custom_fields", json=LEAD_FIELDS)

    first = api.get("/api/crm/fields/leads")
    second = api.get("/api/crm/fields/leads")

    assert first.status_code == 200, first.content
    assert [(f["id"], f["name"]) for f in first.json()] == [(101, "Budget"), (102, "Source")]
    assert first.json()[1]["enums"] == [{"id": 1, "value": "Site"}, {"id": 2, "value": "Ads"}]
    assert second.json() == first.json()
    assert crm.call_count == 1  # the second answer came from the cache


@responses.activate
def test_pipelines_carry_their_statuses(api, agent):
    kommo(agent)
    responses.get(f"{BASE}/api/v4/leads/pipelines", json=PIPELINES)

    response = api.get("/api/crm/pipelines")

    assert response.status_code == 200
    assert [s["id"] for s in response.json()[0]["statuses"]] == [10, 142, 143]


@responses.activate
def test_the_integration_is_chosen_by_parameter_when_the_user_has_several(api, user):
    first, second = kommo(make_agent(owner=user)), kommo(make_agent(owner=user))
    responses.get(f"{BASE}/api/v4/users", json={"_embedded": {"users": [{"id": 1, "name": "Ann"}]}})

    ambiguous = api.get("/api/crm/users")
    chosen = api.get(f"/api/crm/users?integration={second.id}")

    assert ambiguous.status_code == 400
    assert "choose one with ?integration=<id>" in ambiguous.json()["integration"][0]
    assert chosen.status_code == 200 and chosen.json()[0]["name"] == "Ann"
    assert first.id != second.id


@responses.activate
def test_another_users_integration_is_a_404_and_the_crm_is_not_called(other_api, agent):
    integration = kommo(agent)
    crm = responses.get(f"{BASE}/api/v4/users", json={"_embedded": {"users": []}})

    response = other_api.get(f"/api/crm/users?integration={integration.id}")
    without = other_api.get("/api/crm/users")

    assert response.status_code == 404
    assert without.status_code == 404
    assert crm.call_count == 0


def test_a_bad_integration_parameter_is_a_400(api, agent):
    response = api.get("/api/crm/fields/contacts?integration=abc")

    assert response.status_code == 400
    assert response.json() == {"integration": ["expected an integration id (a whole number)"]}


@responses.activate
def test_tags_of_contacts_are_asked_for_with_entity(api, agent):
    kommo(agent)
    responses.get(f"{BASE}/api/v4/contacts/tags", json={"_embedded": {"tags": [{"id": 3, "name": "vip"}]}})

    response = api.get("/api/crm/tags?entity=contacts")
    bad = api.get("/api/crm/tags?entity=deals")

    assert response.json() == [{"id": 3, "name": "vip", "color": None}]
    assert bad.status_code == 400


@responses.activate
def test_an_unreachable_crm_serves_the_snapshot_marked_stale(api, agent):
    integration = kommo(agent)
    responses.get(f"{BASE}/api/v4/leads/custom_fields", json=LEAD_FIELDS)
    api.get("/api/crm/fields/leads")
    from django.core.cache import cache

    cache.clear()
    responses.replace(responses.GET, f"{BASE}/api/v4/leads/custom_fields", status=503)

    response = api.get("/api/crm/fields/leads")

    assert response.status_code == 200
    assert response["X-CRM-Stale"] == "1"
    assert [f["id"] for f in response.json()] == [101, 102]
    assert CrmSnapshot.objects.get(integration=integration).synced_at


@responses.activate
def test_a_revoked_token_is_a_409_that_says_to_reconnect(api, agent):
    kommo(agent)
    responses.get(f"{BASE}/api/v4/users", status=401)

    response = api.get("/api/crm/users")

    assert response.status_code == 409
    assert "reconnect" in response.json()["detail"]


def stub_everything():
    responses.get(f"{BASE}/api/v4/leads/custom_fields", json=LEAD_FIELDS)
    responses.get(f"{BASE}/api/v4/contacts/custom_fields", status=204)
    responses.get(f"{BASE}/api/v4/leads/pipelines", json=PIPELINES)
    responses.get(f"{BASE}/api/v4/users", json={"_embedded": {"users": [{"id": 1, "name": "Ann"}]}})
    responses.get(f"{BASE}/api/v4/leads/tags", json={"_embedded": {"tags": [{"id": 3, "name": "vip"}]}})
    responses.get(f"{BASE}/api/v4/contacts/tags", status=204)
    responses.get(f"{BASE}/api/v4/account", json={"id": 3141592, "name": "Acme", "subdomain": "acme"})


@responses.activate
def test_sync_command_refreshes_cache_and_snapshot(agent, capsys):
    integration = kommo(agent)
    stub_everything()

    call_command("sync_crm_fields", "--integration", str(integration.id))

    snapshot = CrmSnapshot.objects.get(integration=integration)
    assert [f["name"] for f in snapshot.lead_fields] == ["Budget", "Source"]
    assert snapshot.contact_fields == [] and snapshot.pipelines[0]["name"] == "Sales"
    integration.refresh_from_db()
    assert integration.config["account_id"] == 3141592
    out = capsys.readouterr().out
    assert f"[1/1] integration {integration.id}" in out and "2 lead fields" in out


@responses.activate
def test_sync_command_fails_with_one_line_per_failed_account(agent):
    good = kommo(agent)
    bad = make_integration(integration_type="kommo", config={"base_url": "https://broken.kommo.com"},
                           credentials={"access_token": "T"})
    stub_everything()
    responses.get("https://broken.kommo.com/api/v4/leads/custom_fields", status=401)

    with pytest.raises(CommandError) as error:
        call_command("sync_crm_fields", "--all")

    lines = str(error.value).splitlines()
    assert lines[0] == "1 of 2 integrations failed:"
    assert lines[1].startswith(f"integration {bad.id}: ")
    assert CrmSnapshot.objects.filter(integration=good).exists()


def test_sync_command_names_an_unknown_integration():
    with pytest.raises(CommandError, match="no Kommo integration with id 999"):
        call_command("sync_crm_fields", "--integration", "999")
