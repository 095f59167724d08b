"""The live activity page: what the signed-in user's agents did, newest first, live.

The page opens with the user's last ``ACTIVITY_PAGE_EVENTS`` activity events (stored
``LiveEvent`` rows, agents/realtime.py) and then listens on the events WebSocket. Events
carry ids, not names, so rows are worded here, in one place, with the names of the
trigger, sequence, integration and agent looked up in bulk: the browser asks
``activity/events?after=<id>`` for the rows of what the socket announced, and again after
a reconnect for what it missed. Everything is scoped to the owner of the events — a
superuser sees their own agents here too, as on the socket.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.text import Truncator
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from agents.models import Agent, LiveEvent
from integrations.models import Integration
from sequences.models import Sequence
from triggers.models import Trigger

TRIGGER_FIRED = "trigger.fired"
SEQUENCE_STEP = "sequence.step"
INTEGRATION_STATUS = "integration.status"
ERROR_SHOWN_CHARS = 200


# --- reads ---------------------------------------------------------------------------------


def activity_event_list(*, owner, after: int | None = None, limit: int | None = None) -> list[LiveEvent]:
    """The owner's newest activity events (newer than ``after`` when given), newest first."""
    limit = settings.ACTIVITY_PAGE_EVENTS if limit is None else limit
    events = LiveEvent.objects.filter(owner=owner, type__in=list(DESCRIBERS))
    if after is not None:
        events = events.filter(id__gt=after)
    return list(events.order_by("-id")[:limit])


# --- wording -------------------------------------------------------------------------------


@dataclass
class Names:
    """Names of what a batch of events refers to, among the owner's own objects only."""

    agents: dict[int, str] = field(default_factory=dict)
    triggers: dict[int, str] = field(default_factory=dict)
    sequences: dict[int, tuple[str, int]] = field(default_factory=dict)  # id → (name, agent id)
    integrations: dict[int, str] = field(default_factory=dict)  # id → type label

    @classmethod
    def of(cls, events: list[LiveEvent], *, owner) -> Names:
        def ids(type: str, key: str) -> set[int]:
            payloads = (e.payload for e in events if e.type == type and isinstance(e.payload, dict))
            return {value for payload in payloads if isinstance(value := payload.get(key), int)}

        names = cls()
        trigger_ids, sequence_ids = ids(TRIGGER_FIRED, "trigger_id"), ids(SEQUENCE_STEP, "sequence_id")
        integration_ids = ids(INTEGRATION_STATUS, "integration_id")
        if trigger_ids:
            names.triggers = dict(
                Trigger.objects.filter(id__in=trigger_ids, agent__owner=owner).values_list("id", "name")
            )
        if sequence_ids:
            names.sequences = {
                id: (name, agent_id)
                for id, name, agent_id in Sequence.objects.filter(id__in=sequence_ids, agent__owner=owner).values_list(
                    "id", "name", "agent_id"
                )
            }
        if integration_ids:
            labels = dict(Integration.Type.CHOICES)
            names.integrations = {
                id: labels.get(type, type)
                for id, type in Integration.objects.filter(id__in=integration_ids, agent__owner=owner).values_list(
                    "id", "integration_type"
                )
            }
        agent_ids = ids(TRIGGER_FIRED, "agent_id") | ids(INTEGRATION_STATUS, "agent_id")
        agent_ids |= {agent_id for _, agent_id in names.sequences.values()}
        if agent_ids:
            names.agents = dict(Agent.objects.filter(id__in=agent_ids, owner=owner).values_list("id", "name"))
        return names


@dataclass(frozen=True)
class Row:
    kind: str
    text: str
    tone: str = "info"  # ok, warning, failed, info: the row's colour
    agent_id: int | None = None
    url: str | None = None
    next_at: str | None = None  # a sequence's next due time, shown in the reader's time zone


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _error(text: Any) -> str:
    return Truncator(str(text or "").strip()).chars(ERROR_SHOWN_CHARS)


def _for_lead(lead_id: Any) -> str:
    return f" for lead {lead_id}" if lead_id else ""


def _admin_url(name: str, pk: Any) -> str:
    return reverse(f"admin:{name}_change", args=[pk])


def describe_trigger_fired(payload: dict, names: Names) -> Row:
    trigger_id = payload.get("trigger_id")
    name = names.triggers.get(trigger_id)
    title = f"Trigger “{name}”" if name else f"Trigger #{trigger_id} (deleted)"
    subject = f"{title} fired{_for_lead(payload.get('lead_id'))}"
    actions = payload.get("actions") or []
    done = sum(1 for action in actions if action.get("status") == "done")
    status, error = payload.get("status"), _error(payload.get("error"))
    if status == "done":
        text, tone = f"{subject}: {_plural(done, 'action')} done" if actions else f"{subject}: no actions", "ok"
    elif status == "failed":
        text, tone = f"{subject}: {done} of {_plural(len(actions), 'action')} done, then it failed", "failed"
    elif status == "retrying":
        text, tone = f"{subject}: {done} of {_plural(len(actions), 'action')} done, will retry", "warning"
    else:
        text, tone = f"{subject}: {done} of {_plural(len(actions), 'action')} done so far", "info"
    if error and status != "done":
        text += f": {error}"
    return Row(
        kind="Trigger",
        text=text,
        tone=tone,
        agent_id=payload.get("agent_id"),
        url=_admin_url("triggers_trigger", trigger_id) if name else None,
    )


# sequences.runner._record: what happened to the run → (wording, tone); {step} is "step 2 (send message)"
SEQUENCE_WORDING = {
    "started": ("started{lead}", "info"),
    "step_done": ("{lead}: {step} done", "ok"),
    "waiting": ("{lead}: {step} waiting", "info"),
    "retrying": ("{lead}: {step} failed, will retry", "warning"),
    "step_failed": ("{lead}: {step} failed", "failed"),
    "done": ("finished{lead}", "ok"),
    "failed": ("failed{lead}", "failed"),
    "exited": ("ended by an exit rule{lead}", "info"),
    "cancelled": ("cancelled{lead}", "info"),
    "paused": ("paused{lead}", "info"),
    "resumed": ("resumed{lead}", "info"),
    "retried": ("retried{lead}", "info"),
}
# after these the run waits for its next step: the row says when that is due
NEXT_STEP_EVENTS = {"step_done", "waiting", "retrying", "resumed", "retried"}


def describe_sequence_step(payload: dict, names: Names) -> Row:
    sequence_id = payload.get("sequence_id")
    name, agent_id = names.sequences.get(sequence_id, (None, None))
    title = f"Sequence “{name}”" if name else f"Sequence #{sequence_id} (deleted)"
    event = payload.get("event") or ""
    wording, tone = SEQUENCE_WORDING.get(event, ("{lead}: " + event.replace("_", " "), "info"))
    step = ""
    if isinstance(payload.get("step"), int):
        step = f"step {payload['step'] + 1}"
        if payload.get("step_type"):
            step += f" ({payload['step_type'].replace('_', ' ')})"
    text = (
        title
        + ("" if wording.startswith("{lead}") else " ")
        + wording.format(lead=_for_lead(payload.get("lead_id")), step=step or "a step")
    )
    active = event in NEXT_STEP_EVENTS and payload.get("run_status") in {"scheduled", "waiting", "running"}
    return Row(
        kind="Sequence",
        text=text,
        tone=tone,
        agent_id=agent_id,
        url=_admin_url("sequences_sequencerun", payload["run_id"]) if name and payload.get("run_id") else None,
        next_at=payload.get("next_due_at") if active else None,
    )


INTEGRATION_WORDING = {
    Integration.Status.CONNECTED: ("is connected", "ok"),
    Integration.Status.NEEDS_RECONNECT: ("needs re-connection", "failed"),
    Integration.Status.FAILING: ("is failing", "warning"),
    Integration.Status.NEW: ("is not used yet", "info"),
}


def describe_integration_status(payload: dict, names: Names) -> Row:
    integration_id = payload.get("integration_id")
    label = names.integrations.get(integration_id)
    status = payload.get("status") or ""
    phrase, tone = INTEGRATION_WORDING.get(status, (f"is {status.replace('_', ' ')}", "info"))
    subject = label or f"Integration #{integration_id} (deleted)"
    text = f"{subject} {phrase}"
    if detail := _error(payload.get("detail")):
        text += f": {detail}"
    return Row(
        kind="Integration",
        text=text,
        tone=tone,
        agent_id=payload.get("agent_id"),
        url=_admin_url("integrations_integration", integration_id) if label else None,
    )


# the activity page's event types and how each reads
DESCRIBERS: dict[str, Callable[[dict, Names], Row]] = {
    TRIGGER_FIRED: describe_trigger_fired,
    SEQUENCE_STEP: describe_sequence_step,
    INTEGRATION_STATUS: describe_integration_status,
}


def activity_rows(events: list[LiveEvent], *, owner) -> list[dict[str, Any]]:
    """The page's rows of these events, as JSON-ready dicts (in the same order)."""
    names = Names.of(events, owner=owner)
    rows = []
    for event in events:
        row = DESCRIBERS[event.type](event.payload if isinstance(event.payload, dict) else {}, names)
        rows.append(
            {
                "id": event.id,
                "type": event.type,
                "created_at": event.created_at.isoformat(),
                "kind": row.kind,
                "agent": names.agents.get(row.agent_id, ""),
                "text": row.text,
                "tone": row.tone,
                "url": row.url,
                "next_at": row.next_at,
            }
        )
    return rows


# --- views ---------------------------------------------------------------------------------


@never_cache
@login_required
@require_GET
def activity_page(request: HttpRequest) -> HttpResponse:
    rows = activity_rows(activity_event_list(owner=request.user), owner=request.user)
    context = {
        **admin.site.each_context(request),
        "title": "Live activity",
        "rows": rows,
        "limit": settings.ACTIVITY_PAGE_EVENTS,
        "types": list(DESCRIBERS),
    }
    return render(request, "observability/activity.html", context)


@never_cache
@require_GET
def activity_events(request: HttpRequest) -> JsonResponse:
    """``?after=<id>``: the user's activity rows newer than that event, newest first."""
    if not request.user.is_authenticated:  # a status for the script, not the login page's HTML
        return JsonResponse({"detail": "Sign in to see the activity."}, status=401)
    after = request.GET.get("after")
    if after is not None:
        if not (after.isascii() and after.isdigit() and int(after) < 2**63):
            return JsonResponse({"detail": "after: expected an event id (a whole number ≥ 0)"}, status=400)
        after = int(after)
    events = activity_event_list(owner=request.user, after=after)
    return JsonResponse({"events": activity_rows(events, owner=request.user), "limit": settings.ACTIVITY_PAGE_EVENTS})
