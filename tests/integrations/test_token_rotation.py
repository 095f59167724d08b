"""OAuth token rotation: every OAuth integration's refresh token is renewed before it is 30
days old, by a daily schedule or `manage.py rotate_oauth_tokens`, with each outcome logged
and failures visible (integrations/rotation.py)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import requests
import responses
from django.core.management import ManagementUtility, call_command
from django.core.management.base import CommandError
from django.db import connection as db_connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_q.models import Schedule

from agents.models import ExecutionLog, LiveEvent
from crm import connection as kommo_connection
from crm import oauth as kommo_oauth
from integrations import crypto, rotation
from integrations.google import connection as google_connection
from integrations.models import Integration
from integrations.rotation import Outcome, token_rotate, tokens_rotate_due
from integrations.tasks import rotate_oauth_tokens
from tests.factories import make_agent, make_integration, make_user

ROOT = Path(__file__).resolve().parents[2]
BASE = "https://acme.kommo.com"
KOMMO_TOKEN_URL = f"{BASE}/oauth2/access_token"
NEW_PAIR = {"token_type": "Bearer", "expires_in": 86400, "access_token": "NEW-ACCESS", "refresh_token": "NEW-REFRESH"}
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
GOOGLE_CLIENT_SECRET = "GOOGLE-CLIENT-SECRET"
GOOGLE_REFRESHED = {
    "access_token": "ya29.ACCESS-REFRESHED",
    "expires_in": 3599,
    "scope": "https://www.googleapis.com/auth/calendar.events https://www.googleapis.com/auth/calendar.readonly",
    "token_type": "Bearer",
}
SECRETS = (
    "OLD-ACCESS",
    "OLD-REFRESH",
    "NEW-ACCESS",
    "NEW-REFRESH",
    "SECRET-OF-CLIENT",
    "ya29.ACCESS-OLD",
    "1//GOOGLE-REFRESH",
    "1//GOOGLE-REFRESH-NEW",
    "ya29.ACCESS-REFRESHED",
    GOOGLE_CLIENT_SECRET,
)


@pytest.fixture(autouse=True)
def settings_for_rotation(settings):
    settings.OAUTH_ROTATE_AFTER_DAYS = 25
    settings.OAUTH_ROTATE_ALERT_DAYS = 3
    settings.GOOGLE_CLIENT_ID = "client-1.apps.googleusercontent.com"
    settings.GOOGLE_CLIENT_SECRET = GOOGLE_CLIENT_SECRET


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    """google-auth retries a failed token request with backoff: at once here."""
    monkeypatch.setattr("google.auth._exponential_backoff.time.sleep", lambda seconds: None)


def days_ago(days: float) -> datetime:
    return timezone.now() - timedelta(days=days)


def kommo(*, renewed_days_ago: float | None, agent=None, **fields) -> Integration:
    integration = make_integration(
        agent=agent,
        integration_type="kommo",
        config={"base_url": BASE},
        credentials={
            "access_token": "OLD-ACCESS",
            "refresh_token": "OLD-REFRESH",
            "client_id": "client-1",
            "client_secret": "SECRET-OF-CLIENT",
            "redirect_uri": "https://agents.example.com/crm/oauth/callback",
            "expires_at": str(int(time.time()) + 20 * 3600),  # the access token is still good
        },
        **fields,
    )
    return renewed(integration, renewed_days_ago)


def google(*, renewed_days_ago: float | None, agent=None) -> Integration:
    expiry = (datetime.now(UTC) + timedelta(minutes=50)).strftime("%Y-%m-%dT%H:%M:%SZ")
    integration = make_integration(
        agent=agent,
        integration_type="google_calendar",
        config={},
        credentials={"access_token": "ya29.ACCESS-OLD", "refresh_token": "1//GOOGLE-REFRESH", "expiry": expiry},
    )
    return renewed(integration, renewed_days_ago)


def renewed(integration: Integration, days: float | None) -> Integration:
    at = None if days is None else days_ago(days)
    Integration.objects.filter(pk=integration.pk).update(refresh_token_renewed_at=at)
    integration.refresh_from_db()
    return integration


def raw_credentials(integration: Integration) -> str:
    table = db_connection.ops.quote_name(Integration._meta.db_table)
    with db_connection.cursor() as cursor:
        cursor.execute(f"SELECT credentials FROM {table} WHERE id = %s", [integration.pk])
        return cursor.fetchone()[0]


def rotation_logs(integration: Integration) -> list[ExecutionLog]:
    return list(ExecutionLog.objects.filter(ref_type="integration", ref_id=integration.pk, kind="integration"))


def logged_text(caplog) -> str:
    """Everything the records carry: message, extra fields, exception text."""
    return "\n".join(f"{record.getMessage()} {vars(record)}" for record in caplog.records)


def assert_no_secrets(text: str) -> None:
    leaked = [secret for secret in SECRETS if secret in text]
    assert leaked == []


# --- Kommo ---------------------------------------------------------------------------------


@pytest.mark.django_db
@responses.activate
def test_a_kommo_token_older_than_the_setting_is_rotated_and_stored_encrypted(caplog):
    caplog.set_level(logging.INFO)
    integration = kommo(renewed_days_ago=26)
    token = responses.post(KOMMO_TOKEN_URL, json=NEW_PAIR)

    (result,) = tokens_rotate_due()

    assert result.outcome == Outcome.ROTATED and result.integration_id == integration.pk
    sent = json.loads(token.calls[0].request.body)
    assert sent["grant_type"] == "refresh_token" and sent["refresh_token"] == "OLD-REFRESH"
    integration.refresh_from_db()
    assert integration.credentials["refresh_token"] == "NEW-REFRESH"
    assert integration.credentials["access_token"] == "NEW-ACCESS"
    assert timezone.now() - integration.refresh_token_renewed_at < timedelta(minutes=1)
    raw = raw_credentials(integration)
    assert raw.startswith(crypto.PREFIX) and "NEW-REFRESH" not in raw and "NEW-ACCESS" not in raw
    (entry,) = rotation_logs(integration)
    assert entry.status == ExecutionLog.Status.SUCCESS and entry.agent_id == integration.agent_id
    assert entry.detail["outcome"] == "rotated" and entry.detail["integration_type"] == "kommo"
    (line,) = [record for record in caplog.records if record.getMessage() == "oauth.rotated"]
    assert line.integration_id == integration.pk and line.integration_type == "kommo"
    assert_no_secrets(logged_text(caplog))
    assert_no_secrets(json.dumps(entry.detail) + entry.error)


@pytest.mark.django_db
@responses.activate
def test_recent_long_lived_inactive_and_disconnected_integrations_are_left_alone():
    recent = kommo(renewed_days_ago=3)
    long_lived = make_integration(
        integration_type="kommo", config={"base_url": BASE}, credentials={"access_token": "OLD-ACCESS"}
    )
    inactive = kommo(renewed_days_ago=40, active=False)
    disconnected = kommo(renewed_days_ago=40)
    Integration.objects.filter(pk=disconnected.pk).update(status=Integration.Status.NEEDS_RECONNECT)
    messenger = make_integration()  # telegram: no OAuth at all

    results = tokens_rotate_due()

    assert [(r.integration_id, r.outcome) for r in results] == [(long_lived.pk, Outcome.SKIPPED)]
    assert len(responses.calls) == 0
    for integration in (recent, long_lived, inactive, disconnected, messenger):
        before = integration.credentials
        integration.refresh_from_db()
        assert integration.credentials == before
    assert ExecutionLog.objects.count() == 0


@pytest.mark.django_db
@responses.activate
def test_a_token_whose_renewal_was_never_recorded_is_due():
    integration = kommo(renewed_days_ago=None)
    responses.post(KOMMO_TOKEN_URL, json=NEW_PAIR)

    (result,) = tokens_rotate_due()

    assert result.outcome == Outcome.ROTATED
    integration.refresh_from_db()
    assert integration.refresh_token_renewed_at is not None


@pytest.mark.django_db
@responses.activate
def test_the_due_age_follows_the_setting(settings):
    integration = kommo(renewed_days_ago=11)
    responses.post(KOMMO_TOKEN_URL, json=NEW_PAIR)

    assert tokens_rotate_due() == []
    settings.OAUTH_ROTATE_AFTER_DAYS = 10
    assert [r.integration_id for r in tokens_rotate_due()] == [integration.pk]


@pytest.mark.django_db
@responses.activate
def test_an_ordinary_refresh_renews_the_refresh_token_so_a_token_in_use_never_comes_due():
    integration = kommo(renewed_days_ago=26)
    Integration.objects.filter(pk=integration.pk).update(
        credentials={**integration.credentials, "expires_at": str(int(time.time()) + 60)}
    )
    integration.refresh_from_db()
    responses.post(KOMMO_TOKEN_URL, json=NEW_PAIR)
    responses.get(f"{BASE}/api/v4/account", json={"id": 42, "name": "Acme", "subdomain": "acme"})

    kommo_connection.call(integration, lambda client: client.account())

    integration.refresh_from_db()
    assert timezone.now() - integration.refresh_token_renewed_at < timedelta(minutes=1)
    assert tokens_rotate_due() == []


@pytest.mark.django_db
@responses.activate
def test_connecting_kommo_records_the_renewal():
    integration = make_integration(
        integration_type="kommo",
        config={"base_url": BASE},
        credentials={"client_id": "client-1", "client_secret": "SECRET-OF-CLIENT"},
    )
    responses.post(KOMMO_TOKEN_URL, json=NEW_PAIR)
    responses.get(f"{BASE}/api/v4/account", json={"id": 42, "name": "Acme", "subdomain": "acme"})

    kommo_oauth.complete(integration=integration, code="CODE-1")

    integration.refresh_from_db()
    assert timezone.now() - integration.refresh_token_renewed_at < timedelta(minutes=1)
    assert tokens_rotate_due() == []


@pytest.mark.django_db
@responses.activate
def test_a_refused_kommo_refresh_needs_reconnection_visibly_and_is_not_retried(caplog):
    caplog.set_level(logging.INFO)
    integration = kommo(renewed_days_ago=26)
    responses.post(KOMMO_TOKEN_URL, status=400, json={"hint": "Token has been revoked"})

    (result,) = tokens_rotate_due()

    assert result.outcome == Outcome.REFUSED and result.failed
    integration.refresh_from_db()
    assert integration.status == Integration.Status.NEEDS_RECONNECT
    assert "Token has been revoked" in integration.status_detail
    assert integration.credentials["refresh_token"] == "OLD-REFRESH"
    (event,) = LiveEvent.objects.filter(type="integration.status")
    assert event.owner_id == integration.agent.owner_id
    assert event.payload["integration_id"] == integration.pk and event.payload["status"] == "needs_reconnect"
    (entry,) = rotation_logs(integration)
    assert entry.status == ExecutionLog.Status.FAILED and "Token has been revoked" in entry.error
    (line,) = [record for record in caplog.records if record.getMessage() == "oauth.rotation_failed"]
    assert line.levelno == logging.ERROR and line.outcome == "refused" and line.integration_type == "kommo"
    assert_no_secrets(logged_text(caplog))

    assert tokens_rotate_due() == []  # left alone until someone connects it again
    assert len(responses.calls) == 1


@pytest.mark.django_db
@responses.activate
def test_a_kommo_5xx_is_left_for_the_next_run_and_logged(caplog):
    caplog.set_level(logging.INFO)
    integration = kommo(renewed_days_ago=26)
    before = integration.refresh_token_renewed_at
    responses.post(KOMMO_TOKEN_URL, status=503, json={"title": "Service Unavailable"})

    (result,) = tokens_rotate_due()

    assert result.outcome == Outcome.FAILED and not result.overdue
    integration.refresh_from_db()
    assert integration.credentials["refresh_token"] == "OLD-REFRESH"
    assert integration.refresh_token_renewed_at == before
    (entry,) = rotation_logs(integration)
    assert entry.status == ExecutionLog.Status.RETRYING and "503" in entry.error
    (line,) = [record for record in caplog.records if record.getMessage() == "oauth.rotation_failed"]
    assert line.levelno == logging.WARNING and line.age_days == 26
    assert_no_secrets(logged_text(caplog))

    responses.replace(responses.POST, KOMMO_TOKEN_URL, json=NEW_PAIR)
    (retried,) = tokens_rotate_due(now=timezone.now() + timedelta(days=1))

    assert retried.outcome == Outcome.ROTATED
    integration.refresh_from_db()
    assert integration.credentials["refresh_token"] == "NEW-REFRESH"
    assert integration.status == Integration.Status.CONNECTED


@pytest.mark.django_db
@responses.activate
def test_a_timeout_close_to_30_days_is_surfaced_as_overdue(caplog):
    caplog.set_level(logging.INFO)
    integration = kommo(renewed_days_ago=28)
    responses.post(KOMMO_TOKEN_URL, body=requests.Timeout("read timed out"))

    (result,) = tokens_rotate_due()

    assert result.outcome == Outcome.FAILED and result.overdue
    integration.refresh_from_db()
    assert integration.status == Integration.Status.FAILING
    assert "28 days old" in integration.status_detail and "timed out" in integration.status_detail
    (entry,) = rotation_logs(integration)
    assert entry.status == ExecutionLog.Status.FAILED
    (line,) = [record for record in caplog.records if record.getMessage() == "oauth.rotation_failed"]
    assert line.levelno == logging.ERROR
    assert LiveEvent.objects.filter(type="integration.status", payload__status="failing").exists()


def crashing_rotator(integration):
    raise RuntimeError("a bug")


@pytest.mark.django_db
@responses.activate
def test_a_crash_on_one_integration_does_not_stop_the_others(settings, caplog):
    settings.OAUTH_ROTATORS = {**settings.OAUTH_ROTATORS, "google_calendar": f"{__name__}.crashing_rotator"}
    crashed = google(renewed_days_ago=30)
    integration = kommo(renewed_days_ago=26)
    responses.post(KOMMO_TOKEN_URL, json=NEW_PAIR)

    results = {result.integration_id: result for result in tokens_rotate_due()}

    assert results[integration.pk].outcome == Outcome.ROTATED
    assert results[crashed.pk].outcome == Outcome.FAILED and results[crashed.pk].overdue
    assert results[crashed.pk].detail == "unexpected error (RuntimeError)"
    crashed.refresh_from_db()
    assert crashed.status == Integration.Status.FAILING and "30 days old" in crashed.status_detail
    assert any(record.getMessage() == "oauth.rotation_error" and record.exc_info for record in caplog.records)


@pytest.mark.django_db
@responses.activate
def test_a_second_rotation_with_a_stale_copy_does_not_rotate_again():
    integration = kommo(renewed_days_ago=26)
    stale_copy = Integration.objects.get(pk=integration.pk)
    token = responses.post(KOMMO_TOKEN_URL, json=NEW_PAIR)

    first = token_rotate(integration=integration, rotator=kommo_connection.rotate)
    second = token_rotate(integration=stale_copy, rotator=kommo_connection.rotate)

    assert (first.outcome, second.outcome) == (Outcome.ROTATED, Outcome.RENEWED_ELSEWHERE)
    assert token.call_count == 1
    assert stale_copy.credentials["refresh_token"] == "NEW-REFRESH"
    assert [entry.status for entry in rotation_logs(integration)] == ["skipped", "success"]


@pytest.mark.django_db(transaction=True)
@responses.activate
def test_concurrent_rotations_and_refreshes_spend_the_refresh_token_once():
    integration = kommo(renewed_days_ago=26)
    copies = [Integration.objects.get(pk=integration.pk) for _ in range(3)]

    def slow_token(request):
        time.sleep(0.3)  # the others pile up on the integration's lock meanwhile
        return 200, {}, json.dumps(NEW_PAIR)

    responses.add_callback(responses.POST, KOMMO_TOKEN_URL, callback=slow_token)
    outcomes, tokens, errors = [], [], []

    def rotator(copy):
        try:
            outcomes.append(token_rotate(integration=copy, rotator=kommo_connection.rotate).outcome)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            db_connection.close()

    def refresher(copy):  # an ordinary refresh after a 401, at the same moment
        try:
            tokens.append(kommo_connection.refresh(copy, stale_token="OLD-ACCESS"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            db_connection.close()

    threads = [
        threading.Thread(target=rotator, args=(copies[0],)),
        threading.Thread(target=rotator, args=(copies[1],)),
        threading.Thread(target=refresher, args=(copies[2],)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    assert len(responses.calls) == 1
    assert tokens == ["NEW-ACCESS"]
    assert sorted(outcomes) in (
        sorted([Outcome.ROTATED, Outcome.RENEWED_ELSEWHERE]),  # a rotator won the lock
        [Outcome.RENEWED_ELSEWHERE, Outcome.RENEWED_ELSEWHERE],  # the refresh won it
    )
    integration.refresh_from_db()
    assert integration.credentials["refresh_token"] == "NEW-REFRESH"


# --- Google --------------------------------------------------------------------------------


@pytest.mark.django_db
@responses.activate
def test_a_google_token_is_confirmed_by_a_refresh_and_keeps_its_refresh_token(caplog):
    caplog.set_level(logging.INFO)
    integration = google(renewed_days_ago=26)
    token = responses.post(GOOGLE_TOKEN_URL, json=GOOGLE_REFRESHED)

    (result,) = tokens_rotate_due()

    assert result.outcome == Outcome.CONFIRMED
    sent = parse_qs(token.calls[0].request.body.decode())
    assert sent["grant_type"] == ["refresh_token"] and sent["refresh_token"] == ["1//GOOGLE-REFRESH"]
    integration.refresh_from_db()
    assert integration.credentials["refresh_token"] == "1//GOOGLE-REFRESH"  # Google sent none
    assert integration.credentials["access_token"] == "ya29.ACCESS-REFRESHED"
    assert timezone.now() - integration.refresh_token_renewed_at < timedelta(minutes=1)
    assert "1//GOOGLE-REFRESH" not in raw_credentials(integration)
    (entry,) = rotation_logs(integration)
    assert entry.status == ExecutionLog.Status.SUCCESS and entry.detail["outcome"] == "confirmed"
    assert_no_secrets(logged_text(caplog))


@pytest.mark.django_db
@responses.activate
def test_a_new_google_refresh_token_is_stored_when_google_sends_one():
    integration = google(renewed_days_ago=26)
    responses.post(GOOGLE_TOKEN_URL, json={**GOOGLE_REFRESHED, "refresh_token": "1//GOOGLE-REFRESH-NEW"})

    (result,) = tokens_rotate_due()

    assert result.outcome == Outcome.ROTATED
    integration.refresh_from_db()
    assert integration.credentials["refresh_token"] == "1//GOOGLE-REFRESH-NEW"


@pytest.mark.django_db
@responses.activate
def test_a_revoked_google_grant_needs_reconnection_visibly(caplog):
    caplog.set_level(logging.INFO)
    integration = google(renewed_days_ago=26)
    responses.post(
        GOOGLE_TOKEN_URL,
        status=400,
        json={"error": "invalid_grant", "error_description": "Token has been expired or revoked."},
    )

    (result,) = tokens_rotate_due()

    assert result.outcome == Outcome.REFUSED
    integration.refresh_from_db()
    assert integration.status == Integration.Status.NEEDS_RECONNECT
    assert "invalid_grant" in integration.status_detail
    assert LiveEvent.objects.filter(type="integration.status", payload__status="needs_reconnect").exists()
    (entry,) = rotation_logs(integration)
    assert entry.status == ExecutionLog.Status.FAILED and "invalid_grant" in entry.error
    assert_no_secrets(logged_text(caplog))


@pytest.mark.django_db
@responses.activate
def test_a_google_5xx_is_left_for_the_next_run():
    integration = google(renewed_days_ago=26)
    responses.post(GOOGLE_TOKEN_URL, status=503, json={"error": "backend_error"})

    (result,) = tokens_rotate_due()

    assert result.outcome == Outcome.FAILED and not result.overdue
    integration.refresh_from_db()
    assert integration.status != Integration.Status.NEEDS_RECONNECT
    assert integration.credentials["access_token"] == "ya29.ACCESS-OLD"
    assert rotation_logs(integration)[0].status == ExecutionLog.Status.RETRYING
    assert [r.integration_id for r in tokens_rotate_due(dry_run=True)] == [integration.pk]


@pytest.mark.django_db
def test_connecting_google_records_the_renewal():
    integration = make_integration(integration_type="google_calendar", config={}, credentials={})

    google_connection.store_tokens(
        integration, access_token="ya29.ACCESS-OLD", refresh_token="1//GOOGLE-REFRESH", expiry=None
    )

    integration.refresh_from_db()
    assert timezone.now() - integration.refresh_token_renewed_at < timedelta(minutes=1)


# --- The schedule, the command, the admin, the settings -----------------------------------


@pytest.mark.django_db
def test_the_daily_schedule_exists_after_migrate():
    schedule = Schedule.objects.get(func="integrations.tasks.rotate_oauth_tokens")

    assert schedule.schedule_type == Schedule.DAILY and schedule.repeats == -1


@pytest.mark.django_db
@responses.activate
def test_the_scheduled_task_renews_what_is_due():
    due = kommo(renewed_days_ago=26)
    kommo(renewed_days_ago=1)
    responses.post(KOMMO_TOKEN_URL, json=NEW_PAIR)

    summary = rotate_oauth_tokens()

    assert summary == "1 rotated"
    due.refresh_from_db()
    assert due.credentials["refresh_token"] == "NEW-REFRESH"
    assert rotate_oauth_tokens() == "nothing due"


@pytest.mark.django_db
@responses.activate
def test_the_command_prints_a_line_per_integration_and_fails_when_one_failed():
    agent = make_agent()
    ok = kommo(renewed_days_ago=26, agent=agent)
    refused = google(renewed_days_ago=27, agent=agent)
    responses.post(KOMMO_TOKEN_URL, json=NEW_PAIR)
    responses.post(GOOGLE_TOKEN_URL, status=400, json={"error": "invalid_grant"})
    out, err = StringIO(), StringIO()

    with pytest.raises(CommandError, match="1 of 2 integrations could not be renewed"):
        call_command("rotate_oauth_tokens", stdout=out, stderr=err)

    assert f"integration {ok.pk} (kommo, agent {agent.pk}): rotated" in out.getvalue()
    assert f"integration {refused.pk} (google_calendar, agent {agent.pk}): refused" in err.getvalue()
    assert "invalid_grant" in err.getvalue()
    assert_no_secrets(out.getvalue() + err.getvalue())


@pytest.mark.django_db
@responses.activate
def test_the_command_exits_zero_when_all_went_well_and_its_dry_run_changes_nothing():
    integration = kommo(renewed_days_ago=26)
    responses.post(KOMMO_TOKEN_URL, json=NEW_PAIR)
    out = StringIO()

    call_command("rotate_oauth_tokens", "--dry-run", stdout=out)

    assert f"integration {integration.pk} (kommo" in out.getvalue() and "would be renewed" in out.getvalue()
    assert len(responses.calls) == 0
    out = StringIO()
    call_command("rotate_oauth_tokens", stdout=out)
    assert "rotated" in out.getvalue() and "1 integration(s) done." in out.getvalue()
    out = StringIO()
    call_command("rotate_oauth_tokens", stdout=out)
    assert "No refresh token is older than 25 days." in out.getvalue()


@pytest.mark.django_db
@responses.activate
def test_the_command_renews_a_named_integration_now_however_recent():
    integration = kommo(renewed_days_ago=1)
    other = kommo(renewed_days_ago=26)
    token = responses.post(KOMMO_TOKEN_URL, json=NEW_PAIR)
    out = StringIO()

    call_command("rotate_oauth_tokens", "--integration", str(integration.pk), stdout=out)

    assert f"integration {integration.pk} (kommo" in out.getvalue() and f"integration {other.pk} " not in out.getvalue()
    assert token.call_count == 1
    integration.refresh_from_db()
    assert integration.credentials["refresh_token"] == "NEW-REFRESH"
    with pytest.raises(CommandError, match="no integration with id"):
        call_command("rotate_oauth_tokens", "--integration", "999999")
    with pytest.raises(CommandError, match="not of a type with OAuth tokens"):
        call_command("rotate_oauth_tokens", "--integration", str(make_integration().pk))


@pytest.mark.django_db
@responses.activate
def test_the_command_exits_non_zero_when_run_like_from_the_shell():
    """What cron and operators see: the exit status of `manage.py rotate_oauth_tokens`."""
    google(renewed_days_ago=26)
    responses.post(GOOGLE_TOKEN_URL, status=400, json={"error": "invalid_grant"})

    with pytest.raises(SystemExit) as exit_status:
        ManagementUtility(["manage.py", "rotate_oauth_tokens"]).execute()

    assert exit_status.value.code == 1


@pytest.mark.django_db
def test_the_admin_page_shows_when_the_refresh_token_was_renewed():
    user = make_user(is_staff=True)
    browser = Client()
    browser.force_login(user)
    integration = kommo(renewed_days_ago=2, agent=make_agent(owner=user))
    calendar = google(renewed_days_ago=2, agent=integration.agent)
    telegram = make_integration(agent=integration.agent)

    def page(of: Integration) -> str:
        return browser.get(reverse("admin:integrations_integration_change", args=[of.pk])).content.decode()

    assert "Refresh token renewed" in page(integration)
    assert "Refresh token last confirmed" in page(calendar)
    assert "Refresh token renewed" not in page(telegram) and "last confirmed" not in page(telegram)
    assert_no_secrets(page(integration) + page(calendar))


def test_a_rotation_age_of_30_days_or_more_is_refused_at_startup():
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=os.environ | {"DJANGO_SETTINGS_MODULE": "config.settings.test", "OAUTH_ROTATE_AFTER_DAYS": "30"},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode != 0
    assert "OAUTH_ROTATE_AFTER_DAYS must be between 1 and 29" in result.stderr


def test_every_oauth_integration_type_has_a_rotator():
    assert set(rotation.rotators()) == {Integration.Type.KOMMO, Integration.Type.GOOGLE_CALENDAR}
