"""CRM event handlers of the CRM adapter itself (listed in settings.CRM_EVENT_HANDLERS).

A handler takes a crm.models.CrmEvent (its ``integration`` is loaded) and returns
nothing; it raises integrations.errors.TransientError / RateLimited to be tried again
later, anything else to fail the event (crm/dispatch.py).
"""
from __future__ import annotations

import logging

from .models import CrmEvent

logger = logging.getLogger(__name__)


def log_event(event: CrmEvent) -> None:
    """A debug line per event: ids and kind only, never the data (personal data)."""
    logger.debug(
        "crm.event",
        extra={
            "event_id": event.id,
            "integration_id": event.integration_id,
            "kind": event.kind,
            "entity_type": event.entity_type,
            "entity_id": event.entity_id,
            "lead_id": event.lead_id,
        },
    )
