"""Whose rows the database shows to the code running now.

On PostgreSQL every tenant table has a row-level security policy (tenancy/operations.py,
tenancy/migrations/): a row can be read or written only when

* the connection's ``app.system`` setting is ``on`` (system context), or
* its ``app.user_id`` setting is the id of the user who owns the row: the agent's owner,
  for a row hanging off an agent (directly, or through an integration, a conversation, a
  run, a firing).

With neither set, which is what any connection starts with, no tenant row is visible.

This module is the Python side: the scope the running code is in, kept in a context
variable, so that it follows a request into the threads of ``sync_to_async`` and into
asyncio tasks. The database backend (tenancy/backends/postgresql) hands the scope to the
connection before a query runs, whenever the connection holds another one.

==================  ===============================================  ==============================
context             who runs in it                                   what the database shows
==================  ===============================================  ==============================
``acting_for(u)``   HTTP requests and WebSockets of a user who is    rows of u's agents and what
                    not a superuser (API, admin, pages); code that   hangs off them; any other row
                    works for one owner                              is invisible and cannot be
                                                                     written
``system()``        superusers' requests (the admin); the views      every row
                    in ``TENANCY_SYSTEM_VIEWS`` (webhooks found by
                    their secret key, metrics); django-q2 tasks;
                    the sequence dispatcher; management commands;
                    code outside any request or task (the default)
``nobody()``        anonymous requests (before and without login)    no tenant row
==================  ===============================================  ==============================

Migrations (and ``flush``) run as the tables' owner, in system context.

Code outside a request, a WebSocket or an explicit context runs in system context: that
code is the worker, a command or a server's own thread, and serves every tenant. A
request never falls back to it: the middleware gives every request a scope, anonymous
ones included. A thread started while handling a request does not inherit the request's
scope (``threading`` does not copy context variables): start it with
``contextvars.copy_context().run`` or give it a context explicitly.

SQLite has no row-level security: there the scope changes nothing, and the API's own
scoping (selectors) is the only line.
"""
from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Scope:
    """What the database is told: the user whose rows are visible, or everything."""

    user_id: int | None = None
    system: bool = False

    def __str__(self) -> str:
        if self.system:
            return "system"
        return f"user {self.user_id}" if self.user_id is not None else "nobody"


SYSTEM = Scope(system=True)
NOBODY = Scope()


class ScopeSource(Protocol):
    """A scope known only later, e.g. a request's user once DRF has authenticated it."""

    def scope(self) -> Scope: ...


_current: contextvars.ContextVar[Scope | ScopeSource | None] = contextvars.ContextVar("tenancy_scope", default=None)


def current() -> Scope:
    """The scope of the code running now (system outside any request, task or context)."""
    value = _current.get()
    if value is None:
        return SYSTEM
    if isinstance(value, Scope):
        return value
    return value.scope()


def scope_for_user(user: Any) -> Scope:
    """A request's scope: nobody when anonymous, everything for an active superuser (who
    may see everything in the admin anyway), else the user's own rows."""
    if user is None or not getattr(user, "is_authenticated", False):
        return NOBODY
    if user.is_superuser and user.is_active:
        return SYSTEM
    return Scope(user_id=user.pk)


def enter(value: Scope | ScopeSource) -> contextvars.Token:
    """Start a scope; hand the token to ``leave``. The context managers below are the
    usual way; this pair is for middleware and signal receivers."""
    return _current.set(value)


def leave(token: contextvars.Token) -> None:
    _current.reset(token)


@contextmanager
def _scoped(value: Scope | ScopeSource) -> Iterator[Scope]:
    token = _current.set(value)
    try:
        yield current()
    finally:
        _current.reset(token)


def acting_for(owner: Any) -> AbstractContextManager[Scope]:
    """Work for one owner (a user, or a user id): the database shows and accepts only
    that user's rows, whoever the code is running for otherwise."""
    owner_id = getattr(owner, "pk", owner)
    if not isinstance(owner_id, int) or isinstance(owner_id, bool):
        raise TypeError(f"acting_for() takes a user or a user id, not {owner!r}")
    return _scoped(Scope(user_id=owner_id))


def system() -> AbstractContextManager[Scope]:
    """Work for every tenant: the database shows every row. For the worker, commands,
    and the few anonymous views that find their tenant themselves (by a secret key)."""
    return _scoped(SYSTEM)


def nobody() -> AbstractContextManager[Scope]:
    """Work for no one: the database shows no tenant row."""
    return _scoped(NOBODY)
