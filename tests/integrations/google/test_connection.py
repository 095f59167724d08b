"""A connected integration's tokens: refreshed before they expire and after a 401, stored
encrypted; a revoked grant marks the integration as needing re-connection."""
from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs

import pytest
import responses

from agents.models import LiveEvent
from integrations.errors import AuthError, TransientError
from integrations.google import calendar
from integrations.google.connection import NotConnected
from integrations.models import Integration
from tests.factories import make_integration

from .conftest import ACCESS, API, CLIENT_ID, CLIENT_SECRET, REFRESH, TOKEN_URL, fixture, iso

pytestmark = pytest.mark.django_db

CALENDAR_LIST = f"{API}/users/me/calendarList"
SECRETS = (ACCESS, REFRESH, CLIENT_SECRET, "ya29.ACCESS-REFRESHED")


def expiring(connected: Integration, *, in_seconds: int) -> Integration:
    connected.credentials = {**connected.credentials, "expiry": iso(datetime.now(UTC) + timedelta(seconds=in_seconds))}
    connected.save()
    return connected


def bearer(call) -> str:
    return call.request.headers["Authorization"]


@responses.activate
def test_a_valid_token_is_used_as_it_is(connected):
    listing = responses.get(CALENDAR_LIST, json=fixture("calendar_list.json"))

    calendar.list_calendars(connected)

    assert bearer(listing.calls[0]) == f"Bearer {ACCESS}"
    assert len(responses.calls) == 1


@responses.activate
def test_a_token_about_to_expire_is_refreshed_first_and_stored_encrypted(connected):
    expiring(connected, in_seconds=60)
    refresh = responses.post(TOKEN_URL, json=fixture("token_refreshed.json"))
    listing = responses.get(CALENDAR_LIST, json=fixture("calendar_list.json"))

    calendar.list_calendars(connected)

    sent = parse_qs(refresh.calls[0].request.body.decode())
    assert sent["grant_type"] == ["refresh_token"] and sent["refresh_token"] == [REFRESH]
    assert sent["client_id"] == [CLIENT_ID] and sent["client_secret"] == [CLIENT_SECRET]
    assert bearer(listing.calls[0]) == "Bearer ya29.ACCESS-REFRESHED"
    stored = Integration.objects.get(pk=connected.pk).credentials
    assert stored["access_token"] == "ya29.ACCESS-REFRESHED"
    assert stored["refresh_token"] == REFRESH  # Google sends none back: the old one stays
    expiry = datetime.fromisoformat(stored["expiry"])
    assert timedelta(minutes=55) < expiry - datetime.now(UTC) <= timedelta(hours=1)


@responses.activate
def test_a_refused_token_is_refreshed_once_and_the_call_repeated(connected):
    refresh = responses.post(TOKEN_URL, json=fixture("token_refreshed.json"))
    listing = responses.get(CALENDAR_LIST, status=401, json=fixture("error_unauthorized.json"))
    listing_again = responses.get(CALENDAR_LIST, json=fixture("calendar_list.json"))

    calendars = calendar.list_calendars(connected)

    assert [c.id for c in calendars][0] == "sales@acme.example.com"
    assert refresh.call_count == 1
    assert bearer(listing.calls[0]) == f"Bearer {ACCESS}"
    assert bearer(listing_again.calls[0]) == "Bearer ya29.ACCESS-REFRESHED"
    assert Integration.objects.get(pk=connected.pk).credentials["access_token"] == "ya29.ACCESS-REFRESHED"
    assert Integration.objects.get(pk=connected.pk).status == Integration.Status.CONNECTED


@responses.activate
def test_a_token_refused_after_its_refresh_needs_reconnection(connected):
    refresh = responses.post(TOKEN_URL, json=fixture("token_refreshed.json"))
    responses.get(CALENDAR_LIST, status=401, json=fixture("error_unauthorized.json"))

    with pytest.raises(AuthError) as error:
        calendar.list_calendars(connected)

    assert refresh.call_count == 1 and len(responses.calls) == 3
    connected.refresh_from_db()
    assert connected.status == Integration.Status.NEEDS_RECONNECT
    assert "connect the integration to Google again" in str(error.value)


@responses.activate
def test_a_revoked_grant_marks_the_integration_as_needing_reconnection_visibly(connected):
    expiring(connected, in_seconds=-60)
    responses.post(TOKEN_URL, status=400, json=fixture("token_invalid_grant.json"))
    listing = responses.get(CALENDAR_LIST, json=fixture("calendar_list.json"))

    with pytest.raises(AuthError) as error:
        calendar.list_calendars(connected)

    assert listing.call_count == 0
    assert "invalid_grant: Token has been expired or revoked." in str(error.value)
    stored = Integration.objects.get(pk=connected.pk)
    assert stored.status == Integration.Status.NEEDS_RECONNECT
    assert "Token has been expired or revoked" in stored.status_detail
    event = LiveEvent.objects.get(type="integration.status")
    assert event.payload == {
        "integration_id": connected.id,
        "agent_id": connected.agent_id,
        "integration_type": "google_calendar",
        "status": "needs_reconnect",
        "detail": stored.status_detail,
    }
    for secret in SECRETS:
        assert secret not in str(error.value) and secret not in stored.status_detail


@responses.activate
def test_a_refresh_that_fails_for_now_marks_the_integration_failing_not_disconnected(connected, no_waiting):
    expiring(connected, in_seconds=-60)
    responses.post(TOKEN_URL, status=503, json={"error": "temporarily_unavailable"})

    with pytest.raises(TransientError):
        calendar.list_calendars(connected)

    stored = Integration.objects.get(pk=connected.pk)
    assert stored.status == Integration.Status.FAILING
    assert stored.credentials["refresh_token"] == REFRESH


@responses.activate
def test_a_token_another_process_refreshed_meanwhile_is_used_without_refreshing(connected):
    # this process read the row when the token was about to expire…
    stale = Integration.objects.get(pk=connected.pk)
    stale.credentials = {**stale.credentials, "expiry": iso(datetime.now(UTC) - timedelta(seconds=60))}
    # …and another process refreshed it since
    fresh = {"access_token": "ya29.FROM-ANOTHER-PROCESS", "refresh_token": REFRESH,
             "expiry": iso(datetime.now(UTC) + timedelta(hours=1))}  # fmt: skip
    Integration.objects.filter(pk=connected.pk).update(credentials=fresh)
    refresh = responses.post(TOKEN_URL, json=fixture("token_refreshed.json"))
    listing = responses.get(CALENDAR_LIST, json=fixture("calendar_list.json"))

    calendar.list_calendars(stale)

    assert refresh.call_count == 0
    assert bearer(listing.calls[0]) == "Bearer ya29.FROM-ANOTHER-PROCESS"


@responses.activate
def test_a_success_after_failures_shows_the_integration_connected_again(connected):
    Integration.objects.filter(pk=connected.pk).update(status=Integration.Status.FAILING)
    connected.refresh_from_db()
    responses.get(CALENDAR_LIST, json=fixture("calendar_list.json"))

    calendar.list_calendars(connected)

    assert Integration.objects.get(pk=connected.pk).status == Integration.Status.CONNECTED


def test_an_integration_without_tokens_is_not_connected(agent):
    bare = make_integration(agent=agent, integration_type="google_calendar", credentials={})

    with pytest.raises(NotConnected, match="connect it to Google"):
        calendar.list_calendars(bare)


@responses.activate
def test_the_token_endpoint_and_api_address_are_configurable(connected, settings):
    settings.GOOGLE_OAUTH_TOKEN_URL = "https://oauth2.google.test/token"
    settings.GOOGLE_CALENDAR_BASE_URL = "http://127.0.0.1:9999/calendar/v3/"
    expiring(connected, in_seconds=60)
    refresh = responses.post("https://oauth2.google.test/token", json=fixture("token_refreshed.json"))
    listing = responses.get("http://127.0.0.1:9999/calendar/v3/users/me/calendarList", json={"items": []})

    assert calendar.list_calendars(connected) == []
    assert refresh.call_count == 1 and listing.call_count == 1


@responses.activate
def test_no_token_or_secret_reaches_the_logs(connected, caplog):
    caplog.set_level(logging.DEBUG)
    responses.post(TOKEN_URL, json=fixture("token_refreshed.json"))
    responses.get(CALENDAR_LIST, status=401, json=fixture("error_unauthorized.json"))
    responses.get(CALENDAR_LIST, json=fixture("calendar_list.json"))

    calendar.list_calendars(connected)

    assert any(record.msg == "google.token.refreshed" for record in caplog.records)
    logged = caplog.text + " ".join(str(record.__dict__) for record in caplog.records)
    for secret in SECRETS:
        assert secret not in logged
