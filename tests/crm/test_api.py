"""The CRM metadata and OAuth start endpoints: what they answer matches what the schema says."""
from __future__ import annotations

import pytest
import responses
from django.utils import timezone

from crm.models import CrmSnapshot
from tests.factories import make_integration

pytestmark = pytest.mark.django_db

BASE = "https://acme.kommo.com"


@pytest.fixture
def kommo(agent):
    return make_integration(
        agent,
        integration_type="kommo",
        config={"base_url": BASE},
        credentials={"access_token": "LONG-LIVED-TOKEN", "client_id": "cid", "client_secret": "cs"},
    )


def schema_paths(api) -> dict:
    return api.get("/api/schema/?format=json").json()["paths"]


@pytest.mark.parametrize("body", [[1], "1", 5])
def test_oauth_start_with_a_body_that_is_not_an_object_is_a_400(api, kommo, body):
    # request.data.get() on a list was an AttributeError: a 500
    response = api.post("/api/crm/oauth/start", body, format="json")

    assert response.status_code == 400


def test_oauth_start_refuses_an_integration_that_is_not_a_number_field_by_field(api, kommo):
    response = api.post("/api/crm/oauth/start", {"integration": "first"}, format="json")

    assert response.status_code == 400
    assert list(response.json()) == ["integration"]


def test_oauth_start_without_an_integration_uses_the_only_one(api, kommo):
    response = api.post("/api/crm/oauth/start", {}, format="json")

    assert response.status_code == 200
    assert response.json()["authorize_url"].startswith("https://www.kommo.com/oauth?client_id=cid")


def test_tags_with_an_empty_entity_are_the_leads_tags(api, kommo):
    CrmSnapshot.objects.create(integration=kommo, lead_tags=[{"id": 1, "name": "vip", "color": None}],
                               synced_at=timezone.now())

    with responses.RequestsMock() as crm:
        crm.get(f"{BASE}/api/v4/leads/tags", status=503, headers={"Retry-After": "3600"})
        response = api.get("/api/crm/tags", {"entity": ""})

    assert response.status_code == 200
    assert response.json() == [{"id": 1, "name": "vip", "color": None}]
    assert response["X-CRM-Stale"] == "1"


@pytest.mark.parametrize(
    "path, item",
    [
        ("/api/crm/fields/leads/", "CustomField"),
        ("/api/crm/fields/contacts/", "CustomField"),
        ("/api/crm/pipelines/", "Pipeline"),
        ("/api/crm/users/", "CrmUser"),
        ("/api/crm/tags/", "Tag"),
    ],
)
def test_metadata_is_documented_as_the_list_it_is_with_the_crms_errors(api, path, item):
    operation = schema_paths(api)[path]["get"]

    ok = operation["responses"]["200"]
    assert ok["content"]["application/json"]["schema"] == {
        "type": "array",
        "items": {"$ref": f"#/components/schemas/{item}"},
    }
    assert "X-CRM-Stale" in ok["headers"]
    assert {"400", "401", "404", "409", "503"} <= set(operation["responses"])


def test_oauth_start_documents_that_an_unknown_integration_is_a_404(api):
    assert "404" in schema_paths(api)["/api/crm/oauth/start"]["post"]["responses"]
