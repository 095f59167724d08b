"""The dry run: which conditions of a trigger pass for a lead (read from the CRM) or a
sample event, which fail and why, and what each action would do with its texts
rendered — without doing anything (no CRM write, no message, no log, no state)."""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.utils import timezone

from crm.models import CrmEvent
from integrations.errors import IntegrationError, NotFound
from integrations.models import Integration

from . import actions as action_types
from .engine import Facts, contact_from_api, evaluate, lead_from_api, lead_values, plain
from .execution import agent_zone
from .models import EntityState, Trigger

# in a web request (the API, the admin): a busy account answers "try again" instead of
# holding the request for a slot of its 7 requests a second
WEB_CRM_WAIT_SECONDS = 5


class CrmUnavailable(Exception):
    """The CRM could not be read just now (the message says why)."""


def _kommo(trigger: Trigger) -> Integration | None:
    from .validation import agent_kommo

    return agent_kommo(trigger.agent_id)


def _custom(values: Mapping[str, Any] | None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for field_id, value in (values or {}).items():
        items = value if isinstance(value, list) else [value]
        out[str(field_id)] = [plain(v) for v in items if v not in (None, "")]
    return out


def _whole(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def sample_lead(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": data.get("id"),
        "name": data.get("name") or "",
        "price": _whole(data.get("price")),
        "pipeline_id": data.get("pipeline_id"),
        "status_id": data.get("status_id"),
        "responsible_user_id": data.get("responsible_user_id"),
        "tags": list(data.get("tags") or []),
        "cf": _custom(data.get("custom_fields")),
    }


def sample_contact(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": data.get("id"),
        "name": data.get("name") or "",
        "first_name": data.get("first_name") or "",
        "responsible_user_id": None,
        "tags": list(data.get("tags") or []),
        "cf": _custom(data.get("custom_fields")),
        "phones": [data["phone"]] if data.get("phone") else [],
        "emails": [data["email"]] if data.get("email") else [],
    }


def trigger_dry_run(
    *,
    trigger: Trigger,
    lead_id: int | None = None,
    sample: Mapping[str, Any] | None = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    """Evaluate ``trigger`` for a lead of the CRM or a sample event; nothing is done.

    Raises ValidationError (field-level) for a lead the CRM does not have or an agent
    without a Kommo connection, CrmUnavailable when the CRM cannot answer now."""
    agent = trigger.agent
    kommo = _kommo(trigger)
    sample = sample or {}
    facts = Facts(event=trigger.event, at=at or timezone.now(), zone=agent_zone(agent))
    if lead_id is not None:
        if kommo is None:
            raise ValidationError({"lead_id": ["the agent has no active Kommo integration to read the lead from"]})
        from agents.pipeline import read_lead_context

        try:
            context = read_lead_context(kommo, lead_id, max_wait=WEB_CRM_WAIT_SECONDS)
        except NotFound:
            raise ValidationError({"lead_id": [f"lead {lead_id} is not in the CRM"]}) from None
        except IntegrationError as exc:
            raise CrmUnavailable(f"the CRM could not be read: {exc}") from exc
        facts.lead = lead_from_api(context.lead)
        facts.contact = contact_from_api(context.contact) if context.contact else None
        state = EntityState.objects.filter(integration=kommo, entity_type="lead", entity_id=lead_id).first()
        facts.previous = state.values if state else None
    else:
        lead_id = sample.get("lead", {}).get("id")
        if sample.get("lead"):
            facts.lead = sample_lead(sample["lead"])
            if sample.get("previous") is not None:
                before = sample_lead({**sample["lead"], **sample["previous"]})
                before["cf"] = {**facts.lead["cf"], **_custom(sample["previous"].get("custom_fields"))}
                facts.previous = lead_values(before)
        if sample.get("contact"):
            facts.contact = sample_contact(sample["contact"])
    text = sample.get("text")
    if trigger.event == CrmEvent.Kind.INCOMING_MESSAGE:
        facts.message_text = text
    elif trigger.event == CrmEvent.Kind.NOTE_ADDED:
        facts.note_text = text
    result = evaluate(trigger.conditions, facts, explain_all=True)
    ctx = action_types.ActionContext(
        agent=agent,
        kommo=kommo,
        facts=facts,
        lead_id=lead_id,
        depth=0,
        trigger_id=trigger.pk,
        dry_run=True,
        now=facts.at,
    )
    planned = []
    for index, action in enumerate(trigger.actions):
        planned.append({"index": index, **action_types.describe(action, ctx)})
    return {
        "trigger_id": trigger.pk,
        "event": trigger.event,
        "lead_id": lead_id,
        "matched": result.passed,
        "reason": result.reason,
        "conditions": [child.as_dict() for child in result.children],
        "actions": planned,
        "would_run": result.passed and bool(planned),
    }
