"""Connecting a Kommo account with OAuth: consent page, callback, code exchange."""
from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest
import responses
from django.test import Client

from integrations.models import Integration
from tests.factories import make_agent, make_integration, make_user

pytestmark = pytest.mark.django_db

BASE = "https://acme.kommo.com"
PAIR = {"token_type": "Bearer", "expires_in": 86400, "access_token": "ACCESS-1", "refresh_token": "REFRESH-1"}


@pytest.fixture
def browser(user):
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def integration(agent):
    return make_integration(
        agent=agent,
        integration_type="kommo",
        config={},
        credentials={"client_id": "client-1", "client_secret": "CLIENT-SECRET"},
    )


def start(browser, integration) -> dict[str, str]:
    response = browser.get(f"/crm/oauth/start/{integration.id}")
    assert response.status_code == 302
    url = urlparse(response["Location"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == "https://www.kommo.com/oauth"
    return {key: values[0] for key, values in parse_qs(url.query).items()}


@responses.activate
def test_the_callback_exchanges_the_code_and_stores_the_tokens_encrypted(browser, integration):
    query = start(browser, integration)
    exchange = responses.post(f"{BASE}/oauth2/access_token", json=PAIR)
    responses.get(f"{BASE}/api/v4/account", json={"id": 42, "name": "Acme", "subdomain": "acme"})

    response = browser.get(
        "/crm/oauth/callback", {"code": "CODE-1", "state": query["state"], "referer": "acme.kommo.com"}
    )

    assert response.status_code == 200
    assert query["client_id"] == "client-1"
    sent = exchange.calls[0].request.body
    assert b'"grant_type": "authorization_code"' in sent and b'"code": "CODE-1"' in sent
    integration.refresh_from_db()
    assert integration.credentials["access_token"] == "ACCESS-1"
    assert integration.credentials["refresh_token"] == "REFRESH-1"
    assert integration.credentials["redirect_uri"] == "http://127.0.0.1:8000/crm/oauth/callback"
    assert integration.config == {"base_url": BASE, "account_id": 42}
    assert integration.status == Integration.Status.CONNECTED


def test_a_wrong_state_is_refused_and_nothing_changes(browser, integration):
    start(browser, integration)

    response = browser.get("/crm/oauth/callback", {"code": "CODE-1", "state": "forged", "referer": "acme.kommo.com"})

    assert response.status_code == 400
    assert b"not started here" in response.content
    integration.refresh_from_db()
    assert "access_token" not in integration.credentials


def test_a_state_started_by_another_user_is_refused(browser, integration):
    query = start(browser, integration)
    intruder = Client()
    intruder.force_login(make_user())

    response = intruder.get("/crm/oauth/callback", {"code": "C", "state": query["state"], "referer": "acme.kommo.com"})

    assert response.status_code == 400
    assert b"another user" in response.content


@responses.activate
def test_a_state_works_once(browser, integration):
    query = start(browser, integration)
    responses.post(f"{BASE}/oauth2/access_token", json=PAIR)
    responses.get(f"{BASE}/api/v4/account", json={"id": 42, "name": "Acme", "subdomain": "acme"})
    params = {"code": "C", "state": query["state"], "referer": "acme.kommo.com"}

    assert browser.get("/crm/oauth/callback", params).status_code == 200
    assert browser.get("/crm/oauth/callback", params).status_code == 400


def test_an_untrusted_referer_without_a_base_url_is_refused(browser, integration):
    query = start(browser, integration)

    response = browser.get("/crm/oauth/callback", {"code": "C", "state": query["state"], "referer": "evil.example.com"})

    assert response.status_code == 400
    assert b"config.base_url" in response.content


@responses.activate
def test_a_refused_code_is_reported_without_secrets(browser, integration):
    query = start(browser, integration)
    responses.post(f"{BASE}/oauth2/access_token", status=400, json={"hint": "Authorization code has expired"})

    response = browser.get("/crm/oauth/callback", {"code": "C", "state": query["state"], "referer": "acme.kommo.com"})

    assert response.status_code == 400
    assert b"Authorization code has expired" in response.content
    assert b"CLIENT-SECRET" not in response.content


def test_starting_needs_the_client_id_and_secret(api, agent):
    bare = make_integration(agent=agent, integration_type="kommo", config={}, credentials={})

    response = api.post("/api/crm/oauth/start", {"integration": bare.id}, format="json")

    assert response.status_code == 400
    assert "credentials.client_id and credentials.client_secret" in response.json()["integration"][0]


def test_the_api_returns_the_consent_page_for_the_frontend(api, user, integration):
    response = api.post("/api/crm/oauth/start", {"integration": integration.id}, format="json")

    assert response.status_code == 200
    assert response.json()["authorize_url"].startswith("https://www.kommo.com/oauth?client_id=client-1&state=")


def test_another_users_integration_cannot_be_started(integration):
    intruder = Client()
    intruder.force_login(make_user())

    assert intruder.get(f"/crm/oauth/start/{integration.id}").status_code == 404


def test_the_webhook_url_is_in_the_api_and_can_be_regenerated(api, agent):
    kommo = make_integration(agent=make_agent(owner=agent.owner), integration_type="kommo", config={})

    before = api.get(f"/api/integrations/{kommo.id}/").json()["webhook_url"]
    after = api.post(f"/api/integrations/{kommo.id}/regenerate-webhook-key/").json()["webhook_url"]

    assert before.startswith("http://127.0.0.1:8000/api/webhooks/crm/")
    assert after != before and after.startswith("http://127.0.0.1:8000/api/webhooks/crm/")
