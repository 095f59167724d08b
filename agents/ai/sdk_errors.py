"""SDK exceptions → agents.ai.errors, for the parts the vendors' SDKs have in common.

The openai and anthropic SDKs are generated from the same template: the same exception
classes (APIStatusError with status_code, body and response; APIConnectionError with
APITimeoutError under it) under each package's own name.
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime
from types import ModuleType
from typing import Any

from django.utils import timezone

from .base import redact
from .errors import AIConfigError, AIError, AIPermanentError, AIRateLimited, AITransientError

# Statuses the SDKs retry and so that are worth retrying later: timeout, lock timeout.
TRANSIENT_STATUSES = frozenset({408, 409})


def retry_after(headers: Any) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date), None without one."""
    if headers is None:
        return None
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - timezone.now()).total_seconds())
    except (TypeError, ValueError, OverflowError):
        return None


def error_detail(body: Any) -> str:
    """The message of an error body: {"error": {"message": …}} or {"message": …}."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(inner, str):
            return inner
    return ""


def status_error(
    *,
    provider: str,
    model: str,
    status: int,
    detail: str,
    api_key: str,
    headers: Any = None,
) -> AIError:
    """The typed error for an HTTP error answer of a provider."""
    where = f"{provider} {model}"
    if status in (401, 403):
        # No detail: providers quote (part of) the refused key back.
        return AIConfigError(
            f"{where}: the API key was refused (HTTP {status})", provider=provider, model=model, status=status
        )
    said = f": {redact(detail, api_key)}" if detail else ""
    if status == 429:
        return AIRateLimited(
            f"{where}: too many requests (HTTP 429){said}",
            retry_after=retry_after(headers),
            provider=provider,
            model=model,
            status=status,
        )
    if status >= 500 or status in TRANSIENT_STATUSES:
        return AITransientError(f"{where}: HTTP {status}{said}", provider=provider, model=model, status=status)
    return AIPermanentError(f"{where}: HTTP {status}{said}", provider=provider, model=model, status=status)


def translate_stainless(exc: Exception, sdk: ModuleType, *, provider: str, model: str, api_key: str) -> AIError:
    """An openai / anthropic SDK exception as a typed error."""
    where = f"{provider} {model}"
    if isinstance(exc, sdk.APIStatusError):
        return status_error(
            provider=provider,
            model=model,
            status=exc.status_code,
            detail=error_detail(exc.body),
            api_key=api_key,
            headers=exc.response.headers,
        )
    if isinstance(exc, sdk.APITimeoutError):
        return AITransientError(f"{where}: timed out", provider=provider, model=model)
    if isinstance(exc, sdk.APIConnectionError):
        return AITransientError(f"{where}: cannot connect", provider=provider, model=model)
    return AIPermanentError(
        f"{where}: {type(exc).__name__}: {redact(str(exc), api_key)}", provider=provider, model=model
    )
