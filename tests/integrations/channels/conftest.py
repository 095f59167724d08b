"""Shared by the channel tests: fixture files, stand-ins for sleep and the rate limiter."""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
import responses

from integrations.channels.base import RetryPolicy

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_json(name: str):
    return json.loads(fixture_bytes(name))


def fixture_form(name: str) -> dict[str, str]:
    """A form-encoded body (Twilio's webhooks) as the dict a view would get."""
    return dict(parse_qsl(fixture_bytes(name).decode(), keep_blank_values=True))


class Sleeps(list):
    """Stands in for time.sleep: records the seconds."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


class Acquired(list):
    """Stands in for integrations.ratelimit.acquire: records (key, per_second)."""

    def __call__(self, key: str, per_second: float, *, max_wait: float | None = None) -> None:
        self.append((key, per_second))


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def acquired() -> Acquired:
    return Acquired()


@pytest.fixture
def retry(sleeps) -> RetryPolicy:
    return RetryPolicy(sleep=sleeps)


@pytest.fixture
def api():
    with responses.RequestsMock() as mock:
        yield mock


def assert_secret_free(secret: str, error: BaseException, caplog, *shown_too: object) -> None:
    """Nowhere a person could read: the message, the repr, the traceback with its chain,
    the log lines with their extra fields, and whatever else is given (a client's repr)."""
    shown = [str(error), repr(error), "".join(traceback.format_exception(error)), caplog.text]
    shown += [str(vars(record)) for record in caplog.records]
    shown += [repr(item) for item in shown_too]
    chained = error.__cause__ or error.__context__
    if chained is not None:
        shown += [str(chained), repr(chained), repr(getattr(chained, "args", ""))]
    leaks = [text for text in shown if secret in text]
    assert not leaks, leaks
