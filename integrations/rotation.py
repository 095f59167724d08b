"""OAuth token rotation: no refresh token ages past 30 days (seed §4.1).

A daily django-q2 schedule (integrations/tasks.py) and ``manage.py rotate_oauth_tokens``
call ``tokens_rotate_due``. It picks the active integrations of a type listed in
OAUTH_ROTATORS whose refresh token was last renewed more than OAUTH_ROTATE_AFTER_DAYS
ago (or never recorded), and renews each through its type's rotator:

- Kommo (``crm.connection.rotate``): the refresh_token grant; Kommo answers with a new
  pair, stored encrypted under the same row lock as every other refresh.
- Google Calendar (``integrations.google.connection.rotate``): Google keeps one refresh
  token for the life of a consent and a refresh returns only a new access token, so the
  refresh token cannot be replaced without the user. The rotation proves it still works
  (which also keeps Google's six-month idle expiry away) and records when; a refused
  one needs re-connection, which is the only way to a new Google refresh token.

Tokens in daily use are renewed by their ordinary refreshes and never come due; the
schedule is for integrations that sit idle. Each outcome is logged (``oauth.rotated``,
``oauth.rotation_failed``; ids and types, never tokens) and written to the agent's
execution log (kind "integration", ref_type "integration"). A refused refresh marks the
integration "needs re-connection" (admin, live event) and it is left alone until someone
connects it again. Any other failure (5xx, timeout, 429) is retried by the next run; once
the token is within OAUTH_ROTATE_ALERT_DAYS of 30 days old, each failure is an error
and the integration shows "failing" with why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from django.utils.module_loading import import_string

from agents.models import ExecutionLog
from agents.services import execution_log_write

from .errors import AuthError, IntegrationError
from .models import Integration
from .services import integration_set_status

logger = logging.getLogger(__name__)

ROTATION_PERIOD = timedelta(days=30)  # the longest a refresh token may go unrenewed

Rotator = Callable[[Integration], bool]


class Outcome:
    ROTATED = "rotated"  # a new refresh token is stored
    CONFIRMED = "confirmed"  # the refresh token works; the vendor keeps the same one (Google)
    RENEWED_ELSEWHERE = "renewed_elsewhere"  # another process refreshed it meanwhile
    REFUSED = "refused"  # the vendor refused it: the integration needs re-connection
    FAILED = "failed"  # could not be renewed now: the next run tries again
    DUE = "due"  # a dry run: would be renewed
    SKIPPED = "skipped"  # not an OAuth connection (no refresh token)


FAILED_OUTCOMES = (Outcome.REFUSED, Outcome.FAILED)


@dataclass(frozen=True)
class RotationResult:
    integration_id: int
    integration_type: str
    agent_id: int
    outcome: str
    renewed_at: datetime | None  # after the attempt (before it, when it failed or was not made)
    detail: str = ""  # why it failed or was skipped; never a secret (typed error messages)
    overdue: bool = False  # failed, and the token is within OAUTH_ROTATE_ALERT_DAYS of 30 days old

    @property
    def failed(self) -> bool:
        return self.outcome in FAILED_OUTCOMES


def rotators() -> dict[str, Rotator]:
    return {kind: import_string(path) for kind, path in settings.OAUTH_ROTATORS.items()}


def integrations_due(
    *, now: datetime, older_than: timedelta, types: Iterable[str], integration_id: int | None = None
) -> list[Integration]:
    """Integrations whose refresh token was renewed before ``now - older_than`` or never
    recorded, oldest first: active ones not waiting for re-connection, or the one named
    by ``integration_id`` whatever its state. Those without a refresh token are included
    (the caller skips them): credentials are encrypted, so SQL cannot tell."""
    integrations = Integration.objects.filter(integration_type__in=list(types)).select_related("agent")
    if integration_id is not None:
        integrations = integrations.filter(pk=integration_id)
    else:
        integrations = integrations.filter(active=True).exclude(status=Integration.Status.NEEDS_RECONNECT)
    cutoff = now - older_than
    integrations = integrations.filter(
        Q(refresh_token_renewed_at__isnull=True) | Q(refresh_token_renewed_at__lt=cutoff)
    )
    return list(integrations.order_by("refresh_token_renewed_at", "id"))


def tokens_rotate_due(
    *,
    now: datetime | None = None,
    older_than: timedelta | None = None,
    integration_id: int | None = None,
    dry_run: bool = False,
) -> list[RotationResult]:
    """Renew every refresh token that is due (older than OAUTH_ROTATE_AFTER_DAYS unless
    ``older_than`` says otherwise; ``timedelta(0)``: all of them). One result per
    integration considered; a failure of one does not stop the others."""
    now = now or timezone.now()
    if older_than is None:
        older_than = timedelta(days=settings.OAUTH_ROTATE_AFTER_DAYS)
    by_type = rotators()
    results = []
    for integration in integrations_due(
        now=now, older_than=older_than, types=list(by_type), integration_id=integration_id
    ):
        if not (integration.credentials or {}).get("refresh_token"):
            results.append(_result(integration, Outcome.SKIPPED, detail="no refresh token (not connected with OAuth)"))
        elif dry_run:
            results.append(_result(integration, Outcome.DUE))
        else:
            results.append(
                token_rotate(integration=integration, rotator=by_type[integration.integration_type], now=now)
            )
    return results


def token_rotate(*, integration: Integration, rotator: Rotator, now: datetime | None = None) -> RotationResult:
    """Renew one integration's refresh token with ``rotator``; log and record the outcome."""
    now = now or timezone.now()
    previous_token = (integration.credentials or {}).get("refresh_token")
    previous_renewal = integration.refresh_token_renewed_at
    started = time.monotonic()
    try:
        renewed_here = rotator(integration)
    except AuthError as exc:
        # the rotator's refresh has marked it already; said again here, so that every rotator does
        integration_set_status(integration=integration, status=Integration.Status.NEEDS_RECONNECT, detail=str(exc))
        result = _result(integration, Outcome.REFUSED, detail=str(exc))
    except IntegrationError as exc:
        result = _failed(integration, str(exc), previous_renewal=previous_renewal, now=now)
    except Exception as exc:  # a bug, say: the other integrations still get their turn
        logger.exception(
            "oauth.rotation_error",
            extra={"integration_id": integration.pk, "integration_type": integration.integration_type},
        )
        detail = f"unexpected error ({type(exc).__name__})"  # its message might quote anything
        result = _failed(integration, detail, previous_renewal=previous_renewal, now=now)
    else:
        if not renewed_here:
            outcome = Outcome.RENEWED_ELSEWHERE
        elif (integration.credentials or {}).get("refresh_token") != previous_token:
            outcome = Outcome.ROTATED
        else:
            outcome = Outcome.CONFIRMED
        if integration.status != Integration.Status.CONNECTED:
            integration_set_status(integration=integration, status=Integration.Status.CONNECTED)
        result = _result(integration, outcome)
    _record(integration, result, previous_renewal=previous_renewal, now=now, started=started)
    return result


def _failed(
    integration: Integration, detail: str, *, previous_renewal: datetime | None, now: datetime
) -> RotationResult:
    """Left for the next run; said loudly once the token is close to 30 days old."""
    overdue = _overdue(previous_renewal, now)
    if overdue:
        integration_set_status(
            integration=integration,
            status=Integration.Status.FAILING,
            detail=f"The OAuth refresh token {_age_text(previous_renewal, now)} and could not be renewed "
            f"(tokens are renewed every 30 days; retried daily): {detail}",
        )
    return _result(integration, Outcome.FAILED, detail=detail, overdue=overdue)


def _result(integration: Integration, outcome: str, *, detail: str = "", overdue: bool = False) -> RotationResult:
    return RotationResult(
        integration_id=integration.pk,
        integration_type=integration.integration_type,
        agent_id=integration.agent_id,
        outcome=outcome,
        renewed_at=integration.refresh_token_renewed_at,
        detail=detail,
        overdue=overdue,
    )


def _overdue(renewed_at: datetime | None, now: datetime) -> bool:
    """Within OAUTH_ROTATE_ALERT_DAYS of the 30 days, or of an unknown age."""
    if renewed_at is None:
        return True
    return now - renewed_at >= ROTATION_PERIOD - timedelta(days=settings.OAUTH_ROTATE_ALERT_DAYS)


def _age_text(renewed_at: datetime | None, now: datetime) -> str:
    if renewed_at is None:
        return "is of unknown age"
    return f"is {(now - renewed_at).days} days old"


def _record(
    integration: Integration,
    result: RotationResult,
    *,
    previous_renewal: datetime | None,
    now: datetime,
    started: float,
) -> None:
    fields = {
        "integration_id": integration.pk,
        "integration_type": integration.integration_type,
        "agent_id": integration.agent_id,
        "outcome": result.outcome,
    }
    if result.failed:
        age = None if previous_renewal is None else (now - previous_renewal).days
        level = logging.ERROR if result.overdue or result.outcome == Outcome.REFUSED else logging.WARNING
        logger.log(level, "oauth.rotation_failed", extra=fields | {"age_days": age, "error": result.detail})
        status = (
            ExecutionLog.Status.RETRYING
            if result.outcome == Outcome.FAILED and not result.overdue
            else ExecutionLog.Status.FAILED
        )
    else:
        logger.info("oauth.rotated", extra=fields)
        status = (
            ExecutionLog.Status.SKIPPED if result.outcome == Outcome.RENEWED_ELSEWHERE else ExecutionLog.Status.SUCCESS
        )
    execution_log_write(
        agent=integration.agent_id,
        kind=ExecutionLog.Kind.INTEGRATION,
        status=status,
        ref_type="integration",
        ref_id=integration.pk,
        detail={
            "action": "oauth_token_rotation",
            "integration_type": integration.integration_type,
            "outcome": result.outcome,
            "renewed_at": result.renewed_at.isoformat() if result.renewed_at else None,
            "previous_renewed_at": previous_renewal.isoformat() if previous_renewal else None,
        },
        error=result.detail,
        duration_ms=int((time.monotonic() - started) * 1000),
    )
