"""Tokens of a Kommo integration: refresh before expiry, once on 401, once across callers."""
from __future__ import annotations

import json
import threading
import time

import pytest
import responses
from django.db import connection as db_connection

from agents.models import LiveEvent
from crm import connection
from integrations.errors import AuthError
from integrations.models import Integration
from tests.factories import make_integration

BASE = "https://acme.kommo.com"
USERS = {"_embedded": {"users": [{"id": 7, "name": "Olga", "email": "olga@example.com"}]}}
TOKEN_PAIR = {"token_type": "Bearer", "expires_in": 86400, "access_token": "NEW-ACCESS", "refresh_token": "NEW-REFRESH"}


def oauth_integration(**credentials) -> Integration:
    return make_integration(
        integration_type="kommo",
        config={"base_url": BASE},
        credentials={
            "access_token": "OLD-ACCESS",
            "refresh_token": "OLD-REFRESH",
            "client_id": "client-1",
            "client_secret": "SECRET-OF-CLIENT",
            "redirect_uri": "https://agents.example.com/crm/oauth/callback",
            "expires_at": str(int(time.time()) + 3600),
        }
        | credentials,
    )


def users_call(integration):
    return connection.call(integration, lambda client: client.users())


def authorized_with(token: str):
    return responses.matchers.header_matcher({"Authorization": f"Bearer {token}"})


@pytest.mark.django_db
@responses.activate
def test_a_valid_token_is_used_as_it_is():
    integration = oauth_integration()
    responses.get(f"{BASE}/api/v4/users", json=USERS, match=[authorized_with("OLD-ACCESS")])

    users = users_call(integration)

    assert [user.name for user in users] == ["Olga"]
    integration.refresh_from_db()
    assert integration.status == Integration.Status.CONNECTED


@pytest.mark.django_db
@responses.activate
def test_a_token_about_to_expire_is_refreshed_first():
    integration = oauth_integration(expires_at=str(int(time.time()) + 60))
    token = responses.post(f"{BASE}/oauth2/access_token", json=TOKEN_PAIR)
    responses.get(f"{BASE}/api/v4/users", json=USERS, match=[authorized_with("NEW-ACCESS")])

    users_call(integration)

    assert token.call_count == 1
    sent = responses.calls[0].request.body
    assert b'"grant_type": "refresh_token"' in sent and b'"refresh_token": "OLD-REFRESH"' in sent
    integration.refresh_from_db()
    assert integration.credentials["access_token"] == "NEW-ACCESS"
    assert integration.credentials["refresh_token"] == "NEW-REFRESH"
    assert int(integration.credentials["expires_at"]) > time.time() + 86000


@pytest.mark.django_db
@responses.activate
def test_a_401_refreshes_once_and_retries():
    integration = oauth_integration()
    responses.get(
        f"{BASE}/api/v4/users", status=401, json={"title": "Unauthorized"}, match=[authorized_with("OLD-ACCESS")]
    )
    token = responses.post(f"{BASE}/oauth2/access_token", json=TOKEN_PAIR)
    responses.get(f"{BASE}/api/v4/users", json=USERS, match=[authorized_with("NEW-ACCESS")])

    assert [user.id for user in users_call(integration)] == [7]
    assert token.call_count == 1


@pytest.mark.django_db
@responses.activate
def test_a_refused_refresh_marks_the_integration_for_reconnection_visibly():
    integration = oauth_integration()
    responses.get(f"{BASE}/api/v4/users", status=401, json={"title": "Unauthorized"})
    token = responses.post(f"{BASE}/oauth2/access_token", status=400, json={"hint": "Token has been revoked"})

    with pytest.raises(AuthError) as error:
        users_call(integration)
    with pytest.raises(AuthError):
        users_call(integration)  # refused again: one refresh per call at most, no retry loop

    assert token.call_count == 2
    integration.refresh_from_db()
    assert integration.status == Integration.Status.NEEDS_RECONNECT
    assert "Token has been revoked" in integration.status_detail
    event = LiveEvent.objects.get(type="integration.status")
    assert event.payload["status"] == "needs_reconnect" and event.owner_id == integration.agent.owner_id
    for secret in ("OLD-REFRESH", "SECRET-OF-CLIENT", "OLD-ACCESS"):
        assert secret not in str(error.value) and secret not in integration.status_detail


@pytest.mark.django_db
@responses.activate
def test_a_refused_long_lived_token_asks_for_reconnection_without_refreshing():
    integration = make_integration(
        integration_type="kommo", config={"base_url": BASE}, credentials={"access_token": "LONG-LIVED"}
    )
    responses.get(f"{BASE}/api/v4/users", status=401)

    with pytest.raises(AuthError, match="cannot be refreshed"):
        users_call(integration)

    assert len(responses.calls) == 1
    integration.refresh_from_db()
    assert integration.status == Integration.Status.NEEDS_RECONNECT


@pytest.mark.django_db
def test_an_integration_without_a_token_is_not_connected():
    integration = make_integration(integration_type="kommo", config={"base_url": BASE}, credentials={})

    with pytest.raises(connection.NotConnected):
        users_call(integration)


@pytest.mark.django_db(transaction=True)
@responses.activate
def test_concurrent_callers_refresh_once_and_all_use_the_new_token():
    integration = oauth_integration()
    responses.get(f"{BASE}/api/v4/users", status=401, match=[authorized_with("OLD-ACCESS")])
    responses.get(f"{BASE}/api/v4/users", json=USERS, match=[authorized_with("NEW-ACCESS")])

    def slow_refresh(request):
        time.sleep(0.3)  # the other callers pile up on the lock meanwhile
        return 200, {}, json.dumps(TOKEN_PAIR)

    responses.add_callback(responses.POST, f"{BASE}/oauth2/access_token", callback=slow_refresh)
    results, errors = [], []

    def caller():
        try:
            own = Integration.objects.get(pk=integration.pk)
            results.append(users_call(own))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            db_connection.close()

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    assert len(results) == 4
    refreshes = [call for call in responses.calls if call.request.url.endswith("/oauth2/access_token")]
    assert len(refreshes) == 1
    integration.refresh_from_db()
    assert integration.credentials["refresh_token"] == "NEW-REFRESH"
