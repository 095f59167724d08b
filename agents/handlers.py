"""CRM event handlers of the agents app (listed in settings.CRM_EVENT_HANDLERS)."""
from __future__ import annotations

from django.core.cache import cache

from crm.models import CrmEvent

from .models import Conversation
from .pipeline import lead_cache_key


def forget_changed_lead(event: CrmEvent) -> None:
    """A lead or contact changed in the CRM: the reply pipeline reads it afresh next time."""
    lead_ids = set()
    if event.lead_id:
        lead_ids.add(event.lead_id)
    if event.entity_type == "contact" and event.entity_id:
        lead_ids.update(
            Conversation.objects.filter(agent__integrations=event.integration_id, crm_contact_id=event.entity_id)
            .exclude(crm_lead_id=None)
            .values_list("crm_lead_id", flat=True)
        )
    if lead_ids:
        cache.delete_many([lead_cache_key(event.integration_id, lead_id) for lead_id in lead_ids])
