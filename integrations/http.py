"""One outgoing HTTP session for every client (connection pooling and a default timeout),
and what every vendor client shares about retrying a call."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter

from .errors import IntegrationError, TransientError, Unconfirmed

_local = threading.local()


class TimeoutSession(requests.Session):
    """A session whose requests time out unless the caller gives its own timeout."""

    def __init__(self, timeout: float | tuple[float, float]) -> None:
        super().__init__()
        self.default_timeout = timeout
        adapter = HTTPAdapter(pool_connections=20, pool_maxsize=20)
        self.mount("https://", adapter)
        self.mount("http://", adapter)

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if kwargs.get("timeout") is None:  # requests' None means wait for ever
            kwargs["timeout"] = self.default_timeout
        return super().request(method, url, **kwargs)


def session() -> TimeoutSession:
    """The calling thread's session (requests.Session is not safe to share across threads)."""
    current = getattr(_local, "session", None)
    if current is None:
        current = _local.session = TimeoutSession(
            (settings.HTTP_CONNECT_TIMEOUT_SECONDS, settings.HTTP_READ_TIMEOUT_SECONDS)
        )
    return current


@dataclass
class RetryPolicy:
    """How a client repeats a call that was refused (429) or, when safe, failed (5xx or a
    timeout): backoff with jitter, or the vendor's Retry-After, never longer than
    ``max_delay`` (a longer wait is not done here: the error goes to the caller)."""

    attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 30.0
    sleep: Callable[[float], None] = field(default=time.sleep)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        return min(self.base_delay * (2**attempt) * (0.5 + random.random() / 2), self.max_delay)


def retry_after(response: requests.Response) -> float | None:
    """Seconds the vendor asks to wait (``Retry-After`` as seconds or an HTTP date), or None."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        try:
            return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
        except (TypeError, ValueError):
            return None


def never_connected(exc: requests.ConnectionError) -> bool:
    """Whether a connection error came before anything was sent: the connection was
    refused, had no route, or the name did not resolve (a connection reset after the
    request left is not this: the vendor may have got it)."""
    from urllib3.exceptions import MaxRetryError, NewConnectionError

    reason = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    return isinstance(reason, NewConnectionError)


def unconfirmed_if_sent(error: IntegrationError, write_sent: bool) -> IntegrationError:
    """The error a client raises for its last attempt: a transient failure (a timeout, a
    dropped connection, a 5xx) of a write that was sent becomes ``Unconfirmed``, since the
    write may have been done; anything else is raised as it is."""
    if write_sent and isinstance(error, TransientError):
        return Unconfirmed(
            f"{error} (not confirmed: it may have been done)", status=error.status, retry_after=error.retry_after
        )
    return error
