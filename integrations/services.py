"""Writes to integrations. Credentials are replaced as a whole or left as they are."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from django.db import transaction
from django.utils import timezone

from agents.realtime import send_event_on_commit
from config.services import model_save
from observability import metrics

from .models import Integration, new_webhook_key

logger = logging.getLogger(__name__)

INTEGRATION_FIELDS = ("agent", "integration_type", "config", "credentials", "active")


def _push(integration: Integration, type: str, **details: Any) -> None:
    send_event_on_commit(
        owner_id=integration.agent.owner_id,
        type=type,
        payload={
            "integration_id": integration.id,
            "agent_id": integration.agent_id,
            "integration_type": integration.integration_type,
            **details,
        },
    )


def _notify(integration: Integration, change: str) -> None:
    _push(integration, "integration.changed", active=integration.active, change=change)


@transaction.atomic
def integration_create(*, data: Mapping[str, Any]) -> Integration:
    integration = model_save(Integration(), data, allowed=INTEGRATION_FIELDS)
    _notify(integration, "created")
    return integration


@transaction.atomic
def integration_update(*, integration: Integration, data: Mapping[str, Any]) -> Integration:
    """``credentials`` absent from ``data``: the stored secrets stay as they are."""
    model_save(integration, data, allowed=INTEGRATION_FIELDS)
    _notify(integration, "updated")
    return integration


def integration_set_status(*, integration: Integration, status: str, detail: str = "") -> Integration:
    """Record the integration's health (connected, needs re-connection, failing).

    Only a change of status is written and pushed live; the detail is kept short and must
    not contain secrets (callers pass typed error messages, which never do).
    """
    detail = detail[:1000]
    if integration.status == status and integration.status_detail == detail:
        return integration
    with transaction.atomic():
        changed = integration.status != status
        previous = integration.status
        integration.status = status
        integration.status_detail = detail
        if changed:
            integration.status_changed_at = timezone.now()
        Integration.objects.filter(pk=integration.pk).update(
            status=status, status_detail=detail, status_changed_at=integration.status_changed_at
        )
        if changed:
            _push(integration, "integration.status", status=status, detail=detail)
    if changed:
        _log_status_change(integration, previous)
    return integration


def _log_status_change(integration: Integration, previous: str) -> None:
    """One ``integration.status_changed`` line (a warning when the integration broke) and
    one count per change of health; the failures themselves are logged and counted by the
    clients (integration.call_failed)."""
    broken = integration.status in (Integration.Status.FAILING, Integration.Status.NEEDS_RECONNECT)
    logger.log(
        logging.WARNING if broken else logging.INFO,
        "integration.status_changed",
        extra={
            "integration_id": integration.pk,
            "agent_id": integration.agent_id,
            "integration_type": integration.integration_type,
            "status": integration.status,
            "previous": previous,
            "detail": integration.status_detail,
        },
    )
    metrics.count(
        metrics.INTEGRATION_STATUS_CHANGES,
        integration_type=integration.integration_type,
        status=integration.status,
        agent=str(integration.agent_id),
    )


@transaction.atomic
def integration_regenerate_webhook_key(*, integration: Integration) -> Integration:
    """A new secret webhook URL; the old one answers 404 once the other processes' short
    key cache has expired (CRM_WEBHOOK_TARGET_CACHE_SECONDS)."""
    integration.webhook_key = new_webhook_key()
    integration.save(update_fields=["webhook_key", "updated_at"])
    _notify(integration, "webhook_key_regenerated")
    return integration
