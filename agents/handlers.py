"""CRM event handlers of the agents app (listed in settings.CRM_EVENT_HANDLERS)."""
from __future__ import annotations

from django.core.cache import cache

from crm.models import CrmEvent

from .conversations import conversation_hand_off
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


def hand_off_when_the_team_writes(event: CrmEvent) -> None:
    """Someone on the account's side wrote to the lead in a Kommo chat: the agent's
    conversations with that lead are handed off to the team (for the agent's
    ``handoff_minutes``), so the agent does not talk over a manager.

    Kommo bots (author type "bot") do not count. The agent's own replies never come back
    this way: it writes through its own messenger integrations, not Kommo's chats."""
    if event.kind != CrmEvent.Kind.OUTGOING_MESSAGE or not event.lead_id:
        return
    author = event.data.get("author") if isinstance(event.data, dict) else None
    if isinstance(author, dict) and str(author.get("type") or "").lower() == "bot":
        return
    conversations = Conversation.objects.filter(
        agent__integrations=event.integration_id, crm_lead_id=event.lead_id
    ).select_related("agent")
    for conversation in conversations:
        conversation_hand_off(conversation=conversation, reason="team_wrote_in_crm")
