"""One outgoing HTTP session for every client: connection pooling and a default timeout."""

from __future__ import annotations

import threading
from typing import Any

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter

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
