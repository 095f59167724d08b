"""Fixtures of the Google Calendar tests: a configured OAuth client, a connected integration."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from integrations.google import calendar
from integrations.http import RetryPolicy
from tests.factories import make_integration

FIXTURES = Path(__file__).parent / "fixtures"
CLIENT_ID = "client-1.apps.googleusercontent.com"
CLIENT_SECRET = "GOOGLE-CLIENT-SECRET"
TOKEN_URL = "https://oauth2.googleapis.com/token"
API = "https://www.googleapis.com/calendar/v3"
ACCESS = "ya29.ACCESS-OLD"
REFRESH = "1//REFRESH-TOKEN"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(autouse=True)
def google_client(settings):
    settings.GOOGLE_CLIENT_ID = CLIENT_ID
    settings.GOOGLE_CLIENT_SECRET = CLIENT_SECRET


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    """Retries happen at once; google-auth's own backoff on the token endpoint too."""
    slept: list[float] = []
    monkeypatch.setattr(calendar, "RETRY", RetryPolicy(attempts=3, max_delay=10.0, sleep=slept.append))
    monkeypatch.setattr("google.auth._exponential_backoff.time.sleep", slept.append)
    return slept


@pytest.fixture
def connected(agent):
    """A Google Calendar integration with a token valid for another hour."""
    return make_integration(
        agent=agent,
        integration_type="google_calendar",
        config={},
        credentials={
            "access_token": ACCESS,
            "refresh_token": REFRESH,
            "expiry": iso(datetime.now(UTC) + timedelta(hours=1)),
        },
    )
