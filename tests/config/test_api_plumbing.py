"""Schema, docs, CORS and CSRF: what a separate frontend relies on."""
from __future__ import annotations

import pytest
from django.test import Client, override_settings

pytestmark = pytest.mark.django_db


def test_openapi_schema_describes_every_endpoint_and_json_shape(api):
    response = api.get("/api/schema/?format=json")

    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.1")
    for path in ["/api/agents/", "/api/agents/{id}/", "/api/triggers/", "/api/sequences/", "/api/integrations/",
                 "/api/execution-logs/"]:
        assert path in schema["paths"]
    agent = schema["components"]["schemas"]["Agent"]["properties"]
    assert "timezone" in str(agent["schedule"])
    trigger = schema["components"]["schemas"]["TriggerRequest"]["properties"]
    assert "change_stage" in str(trigger["actions"])


def test_interactive_docs_are_served_without_a_cdn(api):
    response = api.get("/api/docs/")

    assert response.status_code == 200
    assert "swagger-ui" in response.content.decode()
    assert "cdn.jsdelivr.net" not in response.content.decode()


@override_settings(CORS_ALLOWED_ORIGINS=["https://app.example.com"])
def test_cors_allows_configured_origins_only():
    client = Client()
    allowed = client.options(
        "/api/agents/", HTTP_ORIGIN="https://app.example.com", HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET"
    )
    refused = client.options(
        "/api/agents/", HTTP_ORIGIN="https://evil.example.com", HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET"
    )

    assert allowed["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert allowed["Access-Control-Allow-Credentials"] == "true"
    assert "Access-Control-Allow-Origin" not in refused


def test_session_auth_still_requires_csrf(user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)

    response = client.post("/api/agents/", {"name": "x"}, content_type="application/json")

    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]


def test_token_auth_works_for_api_clients(user):
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=user)
    response = Client().get("/api/agents/", HTTP_AUTHORIZATION=f"Token {token.key}")

    assert response.status_code == 200


def test_token_is_obtained_with_username_and_password(user):
    from tests.factories import PASSWORD

    response = Client().post("/api/auth/token/", {"username": user.username, "password": PASSWORD})
    wrong = Client().post("/api/auth/token/", {"username": user.username, "password": "nope"})

    assert response.status_code == 200 and response.json()["token"]
    assert wrong.status_code == 400


def test_schema_generates_without_warnings(tmp_path):
    from django.core.management import call_command

    # --fail-on-warn turns every drf-spectacular warning (an untyped field, a guessed
    # path parameter) into an error, so the frontend's schema stays complete
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yml"))

    assert "openapi: 3.1.0" in (tmp_path / "schema.yml").read_text()
