"""Schema, docs, CORS and CSRF: what a separate frontend relies on."""
from __future__ import annotations

import pytest
from django.test import Client, override_settings

from agents.models import Agent

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


def openapi(api) -> dict:
    return api.get("/api/schema/?format=json").json()


@pytest.mark.parametrize("path", ["/api/no-such-thing/", "/api/integrations/1.5/google/calendars"])
def test_an_api_url_that_matches_no_view_answers_json(api, path):
    response = api.get(path)

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Not found."}


def test_pages_outside_the_api_keep_the_html_404(client):
    response = client.get("/no-such-page/")

    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


@pytest.mark.parametrize("page_size", ["0", "-3", "ten", "2.5"])
def test_a_page_size_that_is_not_a_whole_number_from_1_is_a_field_error(api, agent, page_size):
    response = api.get("/api/agents/", {"page_size": page_size})

    assert response.status_code == 400
    assert list(response.json()) == ["page_size"]


def test_an_empty_or_too_large_page_size_is_the_default_or_the_maximum(api, user):
    from tests.factories import make_agent

    for _ in range(3):
        make_agent(owner=user)

    assert len(api.get("/api/agents/", {"page_size": ""}).json()["results"]) == 3
    assert len(api.get("/api/agents/", {"page_size": "100000"}).json()["results"]) == 3


def test_api_bodies_are_json_and_a_form_is_refused(api):
    response = api.post("/api/agents/", {"name": "Form-made"})  # multipart

    assert response.status_code == 415
    assert not Agent.objects.filter(name="Form-made").exists()


def test_the_schema_documents_the_error_answers_of_every_operation(api):
    paths = openapi(api)["paths"]

    assert set(paths["/api/agents/"]["post"]["responses"]) == {"201", "400", "401", "403", "415"}
    assert set(paths["/api/agents/{id}/"]["get"]["responses"]) == {"200", "401", "404"}
    # the list: a bad filter value is a 400, a page past the end a 404
    assert set(paths["/api/agents/"]["get"]["responses"]) == {"200", "400", "401", "404"}
    not_found = paths["/api/agents/{id}/"]["get"]["responses"]["404"]
    assert not_found["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorDetail"}
    assert list(paths["/api/agents/"]["post"]["requestBody"]["content"]) == ["application/json"]


def test_the_schema_says_an_empty_query_parameter_is_the_same_as_none(api, agent):
    parameters = openapi(api)["paths"]["/api/agents/"]["get"]["parameters"]

    assert all(p["allowEmptyValue"] for p in parameters if p["in"] == "query")
    assert api.get("/api/agents/", {"active": "", "page": "", "page_size": ""}).status_code == 200


def test_schema_descriptions_are_not_the_serializer_plumbings_docstring(api):
    components = openapi(api)["components"]["schemas"]

    described = {name: c["description"] for name, c in components.items() if "description" in c}
    assert not [name for name, text in described.items() if "refuses unknown keys" in text]
    assert "AgentRequest" in components and "description" not in components["AgentRequest"]
