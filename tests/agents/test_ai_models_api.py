"""GET /api/ai/models: the curated AI models, which providers have a key, cached for a day."""
from __future__ import annotations

from unittest import mock

import pytest
from rest_framework.test import APIClient

from agents.ai import catalogue
from agents.schemas import check_ai_model

pytestmark = pytest.mark.django_db


@pytest.fixture
def keys(settings):
    settings.OPENAI_API_KEY = "sk-test-catalogue-1234"
    settings.ANTHROPIC_API_KEY = ""
    settings.GEMINI_API_KEY = "AIza-test-catalogue-5678"
    return settings


def test_the_models_are_listed_with_whether_their_provider_has_a_key(api, keys):
    response = api.get("/api/ai/models")

    assert response.status_code == 200
    body = response.json()
    assert body["default"] == "openai:gpt-4o-mini"
    assert {p["provider"]: p["configured"] for p in body["providers"]} == {
        "openai": True,
        "anthropic": False,
        "gemini": True,
    }
    models = {m["id"]: m for m in body["models"]}
    assert {"openai:gpt-4o-mini", "anthropic:claude-sonnet-4-5", "gemini:gemini-2.5-flash"} <= set(models)
    assert models["gemini:gemini-2.5-flash"]["available"] is True
    assert models["anthropic:claude-sonnet-4-5"]["available"] is False
    assert all(m["description"] for m in body["models"])


def test_no_key_is_ever_in_the_answer(api, keys):
    response = api.get("/api/ai/models")

    assert "sk-test-catalogue-1234" not in response.content.decode()
    assert "AIza-test-catalogue-5678" not in response.content.decode()


def test_every_listed_model_is_a_valid_ai_model_for_an_agent():
    for info in catalogue.MODELS:
        assert check_ai_model(info.id) == [], info.id


def test_the_list_is_cached_so_a_second_call_does_not_rebuild_it(api, keys):
    with mock.patch.object(catalogue, "build_catalogue", wraps=catalogue.build_catalogue) as build:
        first = api.get("/api/ai/models")
        second = api.get("/api/ai/models/")

    assert build.call_count == 1
    assert first.json() == second.json()


def test_another_set_of_keys_is_not_answered_from_the_cache(api, keys):
    api.get("/api/ai/models")
    keys.ANTHROPIC_API_KEY = "sk-ant-test-added"

    response = api.get("/api/ai/models")

    assert {p["provider"]: p["configured"] for p in response.json()["providers"]}["anthropic"] is True


def test_the_models_need_a_signed_in_user(keys):
    response = APIClient().get("/api/ai/models")

    assert response.status_code == 401


def test_the_endpoint_is_in_the_openapi_schema(api):
    schema = api.get("/api/schema/?format=json").json()

    (path,) = [p for p in schema["paths"] if p.startswith("/api/ai/models")]
    answer = schema["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/AIModelCatalogue"}
    assert {"default", "providers", "models"} <= set(schema["components"]["schemas"]["AIModelCatalogue"]["properties"])
