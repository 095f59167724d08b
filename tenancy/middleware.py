"""Every HTTP request and WebSocket connection runs in its user's scope (tenancy/context.py).

Where the user is known differs: the admin and pages have it from the session
(AuthenticationMiddleware), the API only once DRF has authenticated the request inside
the view (token or session), which then sets it on the request. So the request's scope is
read from the request whenever a query runs: the user Django or DRF has settled on by
then, or nobody while no one has (a user the session names but nothing has looked up yet
is not looked up here). The views listed in ``TENANCY_SYSTEM_VIEWS`` (URL names) are
anonymous by design and find their tenant themselves, by a secret key: they run in
system context.
"""
from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject, empty

from . import context


def request_user(request: HttpRequest):
    """The user the request is being answered for so far, without looking one up."""
    user = request.__dict__.get("user")  # set by AuthenticationMiddleware, replaced by DRF
    if isinstance(user, SimpleLazyObject):
        user = None if user._wrapped is empty else user._wrapped
    return user


class RequestScope:
    """A request's scope, read when a query runs (see the module's docstring)."""

    __slots__ = ("request", "system_views", "system_view")

    def __init__(self, request: HttpRequest, system_views: frozenset[str]) -> None:
        self.request = request
        self.system_views = system_views
        self.system_view: bool | None = None  # known once the URL is resolved

    def scope(self) -> context.Scope:
        if self.system_view is None:
            match = self.request.__dict__.get("resolver_match")
            if match is not None:
                self.system_view = match.url_name in self.system_views
        if self.system_view:
            return context.SYSTEM
        return context.scope_for_user(request_user(self.request))


class TenancyMiddleware:
    """Sync and async: under ASGI it adds no thread hop of its own."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.system_views = frozenset(getattr(settings, "TENANCY_SYSTEM_VIEWS", ()))
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):
        if self.async_mode:
            return self.__acall__(request)
        token = context.enter(RequestScope(request, self.system_views))
        try:
            return self.get_response(request)
        finally:
            context.leave(token)

    async def __acall__(self, request: HttpRequest):
        token = context.enter(RequestScope(request, self.system_views))
        try:
            return await self.get_response(request)
        finally:
            context.leave(token)


class WebSocketTenancyMiddleware:
    """Channels middleware, inside AuthMiddlewareStack (config/asgi.py): the connection's
    consumer runs in the scope of the user the session names."""

    def __init__(self, inner) -> None:
        self.inner = inner

    async def __call__(self, scope, receive, send):
        token = context.enter(context.scope_for_user(scope.get("user")))
        try:
            return await self.inner(scope, receive, send)
        finally:
            context.leave(token)
