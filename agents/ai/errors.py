"""Typed errors of the AI provider layer. Callers decide whether to retry later.

The hierarchy says what to do: an ``AITransientError`` (``AIRateLimited`` among them) may
succeed later; an ``AIPermanentError`` (``AIConfigError`` among them) will fail the same way
until someone changes the request or the configuration. The SDK's own retries have already
been spent when any of these is raised.

Messages say which provider and model failed and why, never an API key.
"""

from __future__ import annotations


class AIError(Exception):
    """A call to an AI model failed.

    ``tool_log``: when raised by run_tools, the tool calls already made, with their results
    (a booking may have happened before the model failed to answer).
    """

    def __init__(self, message: str, *, provider: str = "", model: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.model = model
        self.status = status
        self.tool_log: tuple = ()


class AIPermanentError(AIError):
    """Retrying the same call will fail the same way: a 400, an unknown model, an empty reply."""


class AIConfigError(AIPermanentError):
    """The provider is not usable as configured: no API key, a refused key, an unknown provider."""


class AITransientError(AIError):
    """Worth retrying later: a 5xx, a timeout, a connection error."""


class AIRateLimited(AITransientError):
    """The provider said "too many requests"; ``retry_after`` seconds, when it said."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after
