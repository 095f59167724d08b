"""Writes to integrations. Credentials are replaced as a whole or left as they are."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import transaction

from agents.realtime import send_event_on_commit
from config.services import model_save

from .models import Integration

INTEGRATION_FIELDS = ("agent", "integration_type", "config", "credentials", "active")


def _notify(integration: Integration, change: str) -> None:
    send_event_on_commit(
        owner_id=integration.agent.owner_id,
        type="integration.changed",
        payload={
            "integration_id": integration.id,
            "agent_id": integration.agent_id,
            "integration_type": integration.integration_type,
            "active": integration.active,
            "change": change,
        },
    )


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
