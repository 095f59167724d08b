"""Typed errors of every outside-service client. Services decide whether to retry.

Messages carry what went wrong and where, never a token, key or password.
"""

from __future__ import annotations


class IntegrationError(Exception):
    """A call to an outside service failed."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AuthError(IntegrationError):
    """The credentials were refused (401/403) or cannot be refreshed."""


class RateLimited(IntegrationError):
    """The service said "too many requests"; ``retry_after`` seconds, when it said."""

    def __init__(self, message: str, *, retry_after: float | None = None, status: int | None = 429) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class TransientError(IntegrationError):
    """Worth retrying later: a timeout, a connection error, a 5xx (``retry_after`` when it said)."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class Unconfirmed(IntegrationError):
    """A write that was sent got no answer saying it was done: a timeout, a dropped
    connection or a 5xx after the request left. It may have been done (the task exists,
    the message reached the lead), so it must not simply be sent again: the caller looks
    for it first (a Kommo task or note, a lead) or fails visibly (a message).

    Deliberately not a TransientError: code that retries transient errors blindly would
    do the write twice. ``retry_after`` is the vendor's, when it said."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class PermanentError(IntegrationError):
    """Retrying the same call will fail the same way: a 4xx, a malformed answer."""


class NotFound(PermanentError):
    """The entity does not exist (any more): Kommo answers 204 or 404 for it."""
