"""Connecting a Google account: consent page with PKCE, callback, code exchange."""
from __future__ import annotations

import base64
import hashlib
from urllib.parse import parse_qs, urlparse

import pytest
import responses
from django.db import connection
from django.test import Client

from agents.models import LiveEvent
from integrations.google import oauth
from integrations.models import Integration
from tests.factories import make_integration, make_user

from .conftest import CLIENT_ID, CLIENT_SECRET, TOKEN_URL, fixture

pytestmark = pytest.mark.django_db

CALLBACK = "http://127.0.0.1:8000/google/oauth/callback"


@pytest.fixture
def browser(user):
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def integration(agent):
    return make_integration(agent=agent, integration_type="google_calendar", config={}, credentials={})


def start(browser, integration, *, consent_page: str = "https://accounts.google.com/o/oauth2/v2/auth") -> dict:
    response = browser.get(f"/google/oauth/start/{integration.id}")
    assert response.status_code == 302, response.content
    url = urlparse(response["Location"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == consent_page
    return {key: values[0] for key, values in parse_qs(url.query).items()}


def raw_credentials(integration: Integration) -> str:
    table = connection.ops.quote_name(Integration._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT credentials FROM {table} WHERE id = %s", [integration.pk])
        return cursor.fetchone()[0]


def test_the_consent_page_asks_for_offline_access_with_a_pkce_challenge(browser, integration):
    query = start(browser, integration)

    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == CALLBACK
    assert query["response_type"] == "code"
    assert query["access_type"] == "offline" and query["prompt"] == "consent"
    assert set(query["scope"].split()) == {
        "https://www.googleapis.com/auth/calendar.readonly",
        "https://www.googleapis.com/auth/calendar.events",
    }
    assert query["code_challenge_method"] == "S256"
    # the verifier stays on the server; only its hash travels
    verifier = browser.session[oauth.SESSION_KEY][next(iter(browser.session[oauth.SESSION_KEY]))]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    assert query["code_challenge"] == challenge
    assert verifier not in browser.get(f"/google/oauth/start/{integration.id}")["Location"]


@responses.activate
def test_the_callback_exchanges_the_code_with_the_verifier_and_stores_the_tokens_encrypted(browser, integration):
    query = start(browser, integration)
    verifier = next(iter(browser.session[oauth.SESSION_KEY].values()))
    exchange = responses.post(TOKEN_URL, json=fixture("token_exchanged.json"))

    response = browser.get("/google/oauth/callback", {"code": "4/CODE-1", "state": query["state"], "scope": "x"})

    assert response.status_code == 200
    assert response.content == b"Google Calendar is connected. You can close this page."
    sent = parse_qs(exchange.calls[0].request.body)
    assert sent["grant_type"] == ["authorization_code"]
    assert sent["code"] == ["4/CODE-1"]
    assert sent["code_verifier"] == [verifier]
    assert sent["redirect_uri"] == [CALLBACK]
    assert sent["client_id"] == [CLIENT_ID] and sent["client_secret"] == [CLIENT_SECRET]
    integration.refresh_from_db()
    assert integration.status == Integration.Status.CONNECTED
    assert integration.credentials["access_token"] == "ya29.ACCESS-NEW"
    assert integration.credentials["refresh_token"] == "1//REFRESH-NEW"
    assert integration.credentials["expiry"].endswith("Z")
    stored = raw_credentials(integration)
    assert stored.startswith("enc:v1:") and "ya29" not in stored and "REFRESH" not in stored
    event = LiveEvent.objects.get(type="integration.status")
    assert event.payload["status"] == "connected" and event.payload["integration_id"] == integration.id


@responses.activate
def test_staff_come_back_to_the_integration_page(integration, user):
    user.is_staff = True
    user.save()
    browser = Client()
    browser.force_login(user)
    query = start(browser, integration)
    responses.post(TOKEN_URL, json=fixture("token_exchanged.json"))

    response = browser.get("/google/oauth/callback", {"code": "C", "state": query["state"]})

    assert response.status_code == 302
    assert response["Location"] == f"/admin/integrations/integration/{integration.id}/change/"


@responses.activate
def test_a_wrong_state_is_refused_and_nothing_is_stored(browser, integration):
    start(browser, integration)

    response = browser.get("/google/oauth/callback", {"code": "C", "state": "forged"})

    assert response.status_code == 400
    assert b"not started here" in response.content
    assert len(responses.calls) == 0
    integration.refresh_from_db()
    assert integration.credentials == {} and integration.status == Integration.Status.NEW


@responses.activate
def test_a_state_whose_verifier_is_not_in_this_browser_is_refused(user, browser, integration):
    query = start(browser, integration)
    other_browser = Client()  # the same user, signed in elsewhere: no verifier in that session
    other_browser.force_login(user)

    response = other_browser.get("/google/oauth/callback", {"code": "C", "state": query["state"]})

    assert response.status_code == 400
    assert b"another user or browser" in response.content
    assert len(responses.calls) == 0
    integration.refresh_from_db()
    assert integration.credentials == {}


@responses.activate
def test_a_state_works_once(browser, integration):
    query = start(browser, integration)
    responses.post(TOKEN_URL, json=fixture("token_exchanged.json"))
    params = {"code": "C", "state": query["state"]}

    assert browser.get("/google/oauth/callback", params).status_code == 200
    again = browser.get("/google/oauth/callback", params)

    assert again.status_code == 400
    assert len(responses.calls) == 1


def test_a_state_started_by_another_user_is_refused(browser, integration):
    query = start(browser, integration)
    intruder = Client()
    intruder.force_login(make_user())

    response = intruder.get("/google/oauth/callback", {"code": "C", "state": query["state"]})

    assert response.status_code == 400
    assert b"another user" in response.content


def test_an_expired_state_is_refused(browser, integration, monkeypatch):
    query = start(browser, integration)
    monkeypatch.setattr(oauth, "STATE_MAX_AGE", -1)

    response = browser.get("/google/oauth/callback", {"code": "C", "state": query["state"]})

    assert response.status_code == 400
    assert b"expired" in response.content


def test_a_refused_consent_changes_nothing(browser, integration):
    query = start(browser, integration)

    response = browser.get("/google/oauth/callback", {"error": "access_denied", "state": query["state"]})

    assert response.status_code == 400
    integration.refresh_from_db()
    assert integration.credentials == {}


@responses.activate
def test_a_refused_code_is_reported_without_secrets(browser, integration):
    query = start(browser, integration)
    responses.post(TOKEN_URL, status=400, json={"error": "invalid_grant", "error_description": "Bad Request"})

    response = browser.get("/google/oauth/callback", {"code": "C", "state": query["state"]})

    assert response.status_code == 400
    assert b"invalid_grant" in response.content
    assert CLIENT_SECRET.encode() not in response.content
    integration.refresh_from_db()
    assert integration.credentials == {} and integration.status == Integration.Status.NEW


@responses.activate
def test_a_consent_without_the_calendar_scopes_is_refused(browser, integration):
    query = start(browser, integration)
    partial = fixture("token_exchanged.json") | {"scope": "https://www.googleapis.com/auth/calendar.readonly"}
    responses.post(TOKEN_URL, json=partial)

    response = browser.get("/google/oauth/callback", {"code": "C", "state": query["state"]})

    assert response.status_code == 400
    assert b"create events" in response.content and b"tick every box" in response.content
    integration.refresh_from_db()
    assert integration.credentials == {}


@responses.activate
def test_the_consent_page_and_token_endpoint_are_configurable(browser, integration, settings):
    settings.GOOGLE_OAUTH_AUTHORIZE_URL = "https://accounts.google.test/auth"
    settings.GOOGLE_OAUTH_TOKEN_URL = "https://oauth2.google.test/token"
    query = start(browser, integration, consent_page="https://accounts.google.test/auth")
    exchange = responses.post("https://oauth2.google.test/token", json=fixture("token_exchanged.json"))

    assert browser.get("/google/oauth/callback", {"code": "C", "state": query["state"]}).status_code == 200
    assert exchange.call_count == 1


def test_starting_needs_the_servers_google_client(api, integration, settings):
    settings.GOOGLE_CLIENT_ID = ""

    response = api.post(f"/api/integrations/{integration.id}/google/oauth/start")

    assert response.status_code == 400
    assert "GOOGLE_CLIENT_ID" in response.json()["integration"][0]


def test_the_api_returns_the_consent_page_for_the_frontend(api, integration):
    response = api.post(f"/api/integrations/{integration.id}/google/oauth/start")

    assert response.status_code == 200
    url = urlparse(response.json()["authorize_url"])
    assert url.netloc == "accounts.google.com" and "code_challenge=" in url.query


def test_another_users_or_another_types_integration_cannot_be_started(api, agent):
    someone_elses = make_integration(integration_type="google_calendar", credentials={})
    kommo = make_integration(agent=agent, integration_type="kommo", credentials={})

    assert api.post(f"/api/integrations/{someone_elses.id}/google/oauth/start").status_code == 404
    assert api.post(f"/api/integrations/{kommo.id}/google/oauth/start").status_code == 404
    intruder = Client()
    intruder.force_login(make_user())
    assert intruder.get(f"/google/oauth/start/{someone_elses.id}").status_code == 404
