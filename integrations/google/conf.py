"""Settings of the Google Calendar integration, read at call time with working defaults,
so that tests (override_settings) and deployments (environment variables) can change them."""

from __future__ import annotations

from django.conf import settings

AUTHORIZE_URL = "https://accounts.google.com/o/oauth2/v2/auth"
TOKEN_URL = "https://oauth2.googleapis.com/token"
CALENDAR_BASE_URL = "https://www.googleapis.com/calendar/v3"

# calendar.readonly: the calendar list and free/busy; calendar.events: creating events.
SCOPES = (
    "https://www.googleapis.com/auth/calendar.readonly",
    "https://www.googleapis.com/auth/calendar.events",
)


def client_id() -> str:
    return getattr(settings, "GOOGLE_CLIENT_ID", "") or ""


def client_secret() -> str:
    return getattr(settings, "GOOGLE_CLIENT_SECRET", "") or ""


def authorize_url() -> str:
    return getattr(settings, "GOOGLE_OAUTH_AUTHORIZE_URL", "") or AUTHORIZE_URL


def token_url() -> str:
    return getattr(settings, "GOOGLE_OAUTH_TOKEN_URL", "") or TOKEN_URL


def calendar_base_url() -> str:
    return (getattr(settings, "GOOGLE_CALENDAR_BASE_URL", "") or CALENDAR_BASE_URL).rstrip("/")


def timeout() -> tuple[float, float]:
    return (settings.HTTP_CONNECT_TIMEOUT_SECONDS, settings.HTTP_READ_TIMEOUT_SECONDS)
