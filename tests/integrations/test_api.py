"""Integrations: credentials are write-only and encrypted at rest."""
from __future__ import annotations

import logging

import pytest
from django.db import connection

from integrations.models import Integration
from tests.factories import make_integration

pytestmark = pytest.mark.django_db

SECRET = "7000000001:AAH-very-secret-bot-token"


def raw_credentials(integration_id: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT credentials FROM integrations_integration WHERE id = %s", [integration_id])
        return cursor.fetchone()[0]


def test_credentials_are_accepted_but_never_returned(api, agent, caplog):
    caplog.set_level(logging.DEBUG)
    created = api.post(
        "/api/integrations/",
        {"agent": agent.id, "integration_type": "telegram", "config": {}, "credentials": {"bot_token": SECRET}},
        format="json",
    )
    assert created.status_code == 201, created.json()
    integration_id = created.json()["id"]

    responses = [
        created,
        api.get(f"/api/integrations/{integration_id}/"),
        api.get("/api/integrations/"),
        api.patch(f"/api/integrations/{integration_id}/", {"active": False}, format="json"),
        api.get("/api/schema/"),
    ]

    for response in responses:
        assert SECRET not in response.content.decode()
    assert created.json()["credentials_set"] == ["bot_token"]
    assert "credentials" not in created.json()
    assert SECRET not in caplog.text
    assert Integration.objects.get(id=integration_id).credentials == {"bot_token": SECRET}


def test_credentials_are_not_stored_in_plaintext(agent):
    integration = make_integration(agent=agent, credentials={"bot_token": SECRET})

    raw = raw_credentials(integration.id)

    assert raw.startswith("enc:v1:t2:")
    assert SECRET not in raw and "bot_token" not in raw


def test_patch_without_credentials_keeps_them_and_with_credentials_replaces_them(api, agent):
    integration = make_integration(agent=agent, credentials={"bot_token": SECRET})

    api.patch(f"/api/integrations/{integration.id}/", {"config": {"base_url": "http://127.0.0.1:9"}}, format="json")
    integration.refresh_from_db()
    assert integration.credentials == {"bot_token": SECRET}

    api.patch(f"/api/integrations/{integration.id}/", {"credentials": {"bot_token": "new"}}, format="json")
    integration.refresh_from_db()
    assert integration.credentials == {"bot_token": "new"}


def test_bad_credentials_are_a_field_error_that_does_not_echo_the_secret(api, agent):
    response = api.post(
        "/api/integrations/",
        {"agent": agent.id, "integration_type": "telegram", "credentials": {"bot_token": 12345678987654321, "x": ""}},
        format="json",
    )

    assert response.status_code == 400
    assert response.json() == {
        "credentials": [
            "credentials.bot_token: expected a string",
            "credentials.x: must not be empty (leave the key out instead)",
        ]
    }
    assert "12345678987654321" not in response.content.decode()


def test_config_is_checked_for_its_integration_type(api, agent):
    response = api.post(
        "/api/integrations/",
        {"agent": agent.id, "integration_type": "kommo", "config": {"base_url": "ftp://example"}},
        format="json",
    )

    assert response.status_code == 400
    assert response.json() == {"config": ['config.base_url: expected an http(s) URL, got "ftp://example"']}


def test_config_must_be_an_object(api, agent):
    response = api.post(
        "/api/integrations/", {"agent": agent.id, "integration_type": "kommo", "config": [1]}, format="json"
    )

    assert response.status_code == 400
    assert response.json() == {"config": ["config: expected an object, got [1]"]}


def test_unknown_integration_type_is_refused(api, agent):
    response = api.post("/api/integrations/", {"agent": agent.id, "integration_type": "slack"}, format="json")

    assert response.status_code == 400
    assert response.json() == {"integration_type": ['"slack" is not a valid choice.']}


def test_a_filter_value_the_filter_cannot_read_is_a_field_error(api, agent):
    make_integration(agent)

    response = api.get("/api/integrations/", {"active": "null"})

    assert response.status_code == 400
    assert list(response.json()) == ["active"]


def test_the_schema_documents_what_the_google_endpoints_answer_when_google_says_no(api):
    paths = api.get("/api/schema/?format=json").json()["paths"]

    calendars = paths["/api/integrations/{integration_id}/google/calendars"]["get"]["responses"]
    start = paths["/api/integrations/{integration_id}/google/oauth/start"]["post"]["responses"]
    assert {"400", "404", "409", "503"} <= set(calendars)
    assert {"400", "404"} <= set(start)


def test_json_with_a_nul_character_is_a_field_error_not_a_crash(api, agent):
    """PostgreSQL cannot store \\u0000 in jsonb: found by the API fuzz test as a 500."""
    created = api.post(
        "/api/integrations/",
        {"agent": agent.id, "integration_type": "kommo", "config": {"base_url": "https://a.kommo.com\u0000"}},
        format="json",
    )

    assert created.status_code == 400
    assert created.json()["config"] == ["config.base_url: text may not contain the NUL character (\\u0000)"]
