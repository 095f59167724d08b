"""One ``http.request`` line and the request metrics for every HTTP request.

``RequestLogMiddleware`` does it for what Django answers. CRM webhook deliveries under
ASGI are answered before Django, by crm/asgi.py, which calls ``log_request`` itself.

The line has the method, the path (no query string: it may carry an OAuth code, a phone
number; webhook keys are masked by config.logging), the status, the duration, the user
(their id, or "anonymous") and the URL name. The user is the one the request was
answered for: a user Django or DRF has not looked up (a webhook) is not looked up here,
which would cost a query.
"""

from __future__ import annotations

import logging
import time

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse
from django.utils.functional import SimpleLazyObject, empty

from . import metrics

logger = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
UNMATCHED = "unmatched"  # the view label of a path that matched no URL


def log_request(*, method: str, path: str, status: int, seconds: float, user: str, view: str) -> None:
    """The line and the metrics of one answered request."""
    logger.log(
        logging.WARNING if status >= 500 else logging.INFO,
        "http.request",
        extra={
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round(seconds * 1000, 1),
            "user": user,
            "view": view,
        },
    )
    metrics.http_request(view=view, method=method, status=status, seconds=seconds)


def user_of(request: HttpRequest) -> str:
    """The id of the user the request was answered for, without looking one up."""
    user = request.__dict__.get("user")  # set by AuthenticationMiddleware, replaced by DRF
    if isinstance(user, SimpleLazyObject):
        user = None if user._wrapped is empty else user._wrapped
    if user is None or not getattr(user, "is_authenticated", False):
        return ANONYMOUS
    return str(user.pk)


def view_of(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    return match.view_name if match is not None else UNMATCHED


class RequestLogMiddleware:
    """Sync and async: under ASGI it adds no thread hop of its own."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):
        if self.async_mode:
            return self.__acall__(request)
        started = time.perf_counter()
        response = self.get_response(request)
        self._log(request, response, started)
        return response

    async def __acall__(self, request: HttpRequest):
        started = time.perf_counter()
        response = await self.get_response(request)
        self._log(request, response, started)
        return response

    def _log(self, request: HttpRequest, response: HttpResponse, started: float) -> None:
        log_request(
            method=request.method or "",
            path=request.path,
            status=response.status_code,
            seconds=time.perf_counter() - started,
            user=user_of(request),
            view=view_of(request),
        )
