"""What each action type does (the shapes are in triggers/schemas.py).

An action function takes the action (a validated dict) and the :class:`ActionContext`
of its firing, does the one thing, and returns a small JSON result for the log. It
raises ``integrations.errors.TransientError`` / ``RateLimited`` (and the AI's transient
errors) to be tried again later, ``ActionFailed`` or any other ``IntegrationError`` to
fail. Changes to the lead are announced first (``ctx.own_change``) so that the webhook
event reporting them is known as the trigger's own (triggers/loops.py).

``describe`` says what an action would do, with its texts rendered, for the dry run.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import F
from django.utils import timezone

from agents import ai, booking
from agents.ai.base import usage_for_agent
from agents.channels import NotSentAgain, send_once
from agents.models import Agent, Conversation, ConversationMessage
from agents.schemas import Schedule, parse_schedule
from crm import connection as crm
from crm.client import LeadUpdate
from crm.services import snapshot_metadata, write_once
from integrations.errors import PermanentError
from integrations.models import Integration

from .engine import Facts
from .schemas import TEMPLATE_VARIABLE, custom_field_of

CRM_WAIT_SECONDS = 10  # at most this long for a slot of the account's 7 requests a second
HISTORY_MESSAGES = 20


class ActionFailed(PermanentError):
    """The action cannot be done, and trying again will not change that."""


@dataclass
class ActionContext:
    agent: Agent
    kommo: Integration | None  # None only in a dry run of an agent without a CRM connection
    facts: Facts
    lead_id: int | None
    depth: int  # chain depth of the event that fired; own changes cause depth + 1
    trigger_id: int | None = None
    now: datetime = field(default_factory=lambda: timezone.now())  # looked up per call: a test clock reaches it
    dry_run: bool = False
    reference: str = ""  # what started this work ("trigger:5:event:9"), for runs it starts
    action_key: str = ""  # the action or step being done, for its message's key
    # an earlier attempt's CRM write may have been done (not confirmed, or its worker died):
    # look for it among the lead's tasks or notes since then (Unix time) before writing
    verify_since: int | None = None
    _names: dict[str, dict[int, str]] = field(default_factory=dict, init=False, repr=False)

    # -- the CRM --------------------------------------------------------------------------

    def crm(self, operation: Callable[[Any], Any]) -> Any:
        if self.kommo is None:
            raise ActionFailed("the agent has no active Kommo integration")
        return crm.call(self.kommo, operation, max_wait=CRM_WAIT_SECONDS)

    def crm_write(self, kind: str, lead_id: int, text: str, operation: Callable[[Any], int]) -> tuple[int, bool]:
        """A task or note made at most once: (its id, whether an earlier attempt had made it)."""
        if self.kommo is None:
            raise ActionFailed("the agent has no active Kommo integration")
        return write_once(
            self.kommo, kind, lead_id, text, operation, verify_since=self.verify_since, max_wait=CRM_WAIT_SECONDS
        )

    def own_change(self, kinds: list[str], expect: Mapping[str, Any]) -> None:
        from .loops import own_change_record

        own_change_record(
            integration=self.kommo,
            lead_id=self.lead_id,
            trigger_id=self.trigger_id,
            depth=self.depth + 1,
            kinds=kinds,
            expect=expect,
        )

    def require_lead(self) -> int:
        if not self.lead_id:
            raise ActionFailed("the event concerns no lead")
        return self.lead_id

    # -- templates ------------------------------------------------------------------------

    def _name_of(self, kind: str, item_id: Any) -> str:
        if self.kommo is None:
            return ""
        if kind not in self._names:
            names: dict[int, str] = {}
            if kind == "statuses":
                for pipeline in snapshot_metadata(self.kommo, "pipelines") or []:
                    names.update({int(s["id"]): s.get("name") or "" for s in pipeline.get("statuses") or []})
            else:
                names = {int(i["id"]): i.get("name") or "" for i in snapshot_metadata(self.kommo, kind) or []}
            self._names[kind] = names
        try:
            return self._names[kind].get(int(item_id), "")
        except (TypeError, ValueError):
            return ""

    def variable(self, name: str) -> str:
        facts = self.facts
        if name == "agent.name":
            return self.agent.name
        parsed = custom_field_of(name)
        if parsed:
            entity, field_id = parsed
            values = facts.values(f"{entity}.cf.{field_id}")
            return ", ".join(map(str, values)) if isinstance(values, list) else ""
        if name.startswith("contact."):
            facts.values("contact.name")  # loads the contact when needed
            contact = facts.contact or {}
            key = name.split(".", 1)[1]
            if key == "phone":
                return (contact.get("phones") or [""])[0]
            if key == "email":
                return (contact.get("emails") or [""])[0]
            return str(contact.get(key) or "")
        facts.values("name")  # loads the lead when needed
        lead = facts.lead or {}
        if name == "lead.id":
            return str(lead.get("id") or self.lead_id or "")
        if name == "lead.name":
            return str(lead.get("name") or "")
        if name == "lead.price":
            return "" if lead.get("price") is None else str(lead["price"])
        if name == "lead.status":
            return self._name_of("statuses", lead.get("status_id"))
        if name == "lead.pipeline":
            return self._name_of("pipelines", lead.get("pipeline_id"))
        if name == "responsible.name":
            return self._name_of("users", lead.get("responsible_user_id"))
        return ""

    def render(self, template: str) -> str:
        return TEMPLATE_VARIABLE.sub(lambda m: self.variable(m.group(1)), template).strip()


# --- the actions ---------------------------------------------------------------------------


def _conversation(ctx: ActionContext, integration_id: int | None) -> Conversation:
    lead_id = ctx.require_lead()
    chats = Conversation.objects.filter(
        agent=ctx.agent, crm_lead_id=lead_id, integration__isnull=False, integration__active=True
    ).select_related("integration")
    if integration_id:
        chats = chats.filter(integration_id=integration_id)
    chat = chats.order_by(F("last_inbound_at").desc(nulls_last=True), "-id").first()
    if chat is None:
        where = f"on integration {integration_id}" if integration_id else "on any of its messengers"
        raise ActionFailed(
            f"lead {lead_id} has no chat with this agent {where}: a message goes only to a chat the lead started"
        )
    return chat


def _generate(ctx: ActionContext, conversation: Conversation | None, instruction: str) -> ai.Completion:
    from agents.pipeline import build_system_prompt, read_lead_context

    context = read_lead_context(ctx.kommo, ctx.require_lead(), max_wait=CRM_WAIT_SECONDS)
    language = (conversation.language if conversation else "") or ctx.agent.default_language
    system = build_system_prompt(ctx.agent, context, language=language)
    turns: list[ai.ChatMessage] = []
    if conversation is not None:
        earlier = list(
            ConversationMessage.objects.filter(conversation=conversation).exclude(text="").order_by("-id")[
                :HISTORY_MESSAGES
            ]
        )
        inbound = ConversationMessage.Direction.INBOUND
        turns = [
            ai.ChatMessage("user" if m.direction == inbound else "assistant", m.text) for m in reversed(earlier)
        ]
    turns.append(ai.ChatMessage("user", f"(Write your next message to the lead now. Instruction: {instruction})"))
    with usage_for_agent(ctx.agent.pk):  # the tokens count towards the agent's usage
        return ai.complete(ctx.agent.ai_model, system, turns)


def send_message(action: Mapping[str, Any], ctx: ActionContext) -> dict[str, Any]:
    conversation = _conversation(ctx, action.get("integration_id"))
    completion = None
    if action.get("text"):
        text = ctx.render(action["text"])
    else:
        completion = _generate(ctx, conversation, action["ai_instruction"])
        text = completion.text.strip()
    return deliver(conversation, text, completion, key=ctx.action_key)


def lead_chat(ctx: ActionContext, integration_id: int | None = None) -> Conversation:
    """The lead's chat with the agent that a message goes to (ActionFailed when none)."""
    return _conversation(ctx, integration_id)


def generate(ctx: ActionContext, conversation: Conversation | None, instruction: str) -> ai.Completion:
    """A message written by the agent's model from ``instruction``, the lead's allowed
    CRM fields and the conversation so far."""
    return _generate(ctx, conversation, instruction)


def deliver(conversation: Conversation, text: str, completion=None, *, key: str = "") -> dict[str, Any]:
    """Send ``text`` in the chat and store it, at most once for ``key`` (the action or
    step: agents.channels.send_once); the JSON result of a send. A message that may have
    reached the lead fails the action rather than being sent again."""
    if not text:
        raise ActionFailed("the message is empty once its variables are filled in")
    try:
        message, parts = send_once(conversation, text, key=key, completion=completion)
    except NotSentAgain as exc:
        raise ActionFailed(str(exc)) from exc
    result = {"conversation_id": message.conversation_id, "message_id": message.pk, "text": message.text[:500]}
    if parts is not None:
        result["parts"] = parts
    return result


def task_due(action: Mapping[str, Any], ctx: ActionContext) -> datetime:
    due = ctx.now + timedelta(minutes=action.get("due_in_minutes", 60))
    if action.get("within_working_hours"):
        schedule = parse_schedule(ctx.agent.schedule)
        opens = schedule.next_open(due) if schedule else None
        if opens is not None:
            due = opens
    return due


def _responsible(action: Mapping[str, Any], ctx: ActionContext) -> int | None:
    if action.get("responsible_user_id"):
        return action["responsible_user_id"]
    values = ctx.facts.values("responsible_user")
    return values[0] if isinstance(values, list) and values else None


def create_task(action: Mapping[str, Any], ctx: ActionContext) -> dict[str, Any]:
    lead_id = ctx.require_lead()
    text = ctx.render(action["text"]) or action["text"]
    due = task_due(action, ctx)
    responsible = _responsible(action, ctx)
    task_id, found = ctx.crm_write(
        "task",
        lead_id,
        text,
        lambda c: c.create_task(
            lead_id=lead_id,
            text=text,
            complete_till=int(due.timestamp()),
            responsible_user_id=responsible,
            task_type_id=action.get("task_type_id"),
        ),
    )
    result = {"task_id": task_id, "due": due.isoformat(), "responsible_user_id": responsible, "text": text[:500]}
    return {**result, "found_done": True} if found else result


def change_stage(action: Mapping[str, Any], ctx: ActionContext) -> dict[str, Any]:
    lead_id = ctx.require_lead()
    pipeline_id, status_id = action["pipeline_id"], action["status_id"]
    ctx.own_change(["lead_status_changed", "lead_updated"], {"status": [[pipeline_id, status_id]]})
    ctx.crm(lambda c: c.update_lead(lead_id, LeadUpdate(pipeline_id=pipeline_id, status_id=status_id)))
    return {"pipeline_id": pipeline_id, "status_id": status_id}


def _field_value(action: Mapping[str, Any], ctx: ActionContext) -> Any:
    value = action["value"]
    return ctx.render(value) if isinstance(value, str) else value


def update_field(action: Mapping[str, Any], ctx: ActionContext) -> dict[str, Any]:
    lead_id = ctx.require_lead()
    name, value = action["field"], _field_value(action, ctx)
    if name == "price":
        change = LeadUpdate(price=value)
    elif name == "name":
        change = LeadUpdate(name=value)
    else:
        _, field_id = custom_field_of(name)
        change = LeadUpdate(custom_fields={field_id: value})
    ctx.own_change(["lead_updated", "lead_status_changed"], {name: [] if value is None else [value]})
    ctx.crm(lambda c: c.update_lead(lead_id, change))
    return {"field": name, "value": value}


def add_tags(action: Mapping[str, Any], ctx: ActionContext) -> dict[str, Any]:
    lead_id = ctx.require_lead()
    tags = [tag.strip() for tag in action["tags"]]
    ctx.own_change(["lead_updated"], {"tags_has": tags})
    ctx.crm(lambda c: c.update_lead(lead_id, LeadUpdate(tags_to_add=tags)))
    return {"tags": tags}


def remove_tags(action: Mapping[str, Any], ctx: ActionContext) -> dict[str, Any]:
    lead_id = ctx.require_lead()
    tags = [tag.strip() for tag in action["tags"]]
    ctx.own_change(["lead_updated"], {"tags_not": tags})
    ctx.crm(lambda c: c.update_lead(lead_id, LeadUpdate(tags_to_delete=tags)))
    return {"tags": tags}


def add_note(action: Mapping[str, Any], ctx: ActionContext) -> dict[str, Any]:
    lead_id = ctx.require_lead()
    text = ctx.render(action["text"]) or action["text"]
    ctx.own_change(["note_added"], {"note.text": [text]})
    note_id, found = ctx.crm_write("note", lead_id, text, lambda c: c.add_note(lead_id=lead_id, text=text))
    result = {"note_id": note_id, "text": text[:500]}
    return {**result, "found_done": True} if found else result


def start_sequence(action: Mapping[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Starting twice is harmless: a lead has one active run of a sequence, and a run
    this firing started already is found by its reference."""
    from sequences.models import Sequence, SequenceRun
    from sequences.runner import AlreadyRunning, CannotStart, run_start

    lead_id = ctx.require_lead()
    sequence = Sequence.objects.filter(pk=action["sequence_id"], agent=ctx.agent).first()
    if sequence is None:
        raise ActionFailed(f"sequence {action['sequence_id']} is not one of this agent's")
    ref = ctx.reference
    if ref and (earlier := SequenceRun.objects.filter(sequence=sequence, started_ref=ref).first()):
        return {"run_id": earlier.pk, "sequence": sequence.name}
    try:
        run = run_start(
            sequence=sequence, lead_id=lead_id, started_by="trigger", started_ref=ref, integration=ctx.kommo
        )
    except AlreadyRunning as exc:
        return {"run_id": exc.run.pk, "already_running": True, "note": str(exc)}
    except CannotStart as exc:
        raise ActionFailed(str(exc)) from exc
    return {"run_id": run.pk, "sequence": sequence.name}


def stop_sequence(action: Mapping[str, Any], ctx: ActionContext) -> dict[str, Any]:
    from sequences.models import ACTIVE_RUN_STATUSES, SequenceRun
    from sequences.runner import run_cancel

    lead_id = ctx.require_lead()
    runs = SequenceRun.objects.filter(agent=ctx.agent, crm_lead_id=lead_id, status__in=ACTIVE_RUN_STATUSES)
    if action.get("sequence_id"):
        runs = runs.filter(sequence_id=action["sequence_id"])
    stopped = [run.pk for run in runs if run_cancel(run, by=f"trigger {ctx.trigger_id}")]
    return {"stopped_runs": stopped}


# --- create_calendar_event -----------------------------------------------------------------

SEQUENCE_KEY_PREFIX = "seq-run-"  # sequences.models.SequenceStep.idempotency_key
FIT_STEP = timedelta(minutes=15)  # how finely a start is moved for the meeting to fit the working hours
FIT_HORIZON = timedelta(days=8)


def _calendar(ctx: ActionContext):
    calendar = booking.agent_calendar(ctx.agent)
    if calendar is None:
        raise ActionFailed("the agent has no active Google Calendar integration")
    return calendar


def _fits(schedule: Schedule, start: datetime, end: datetime) -> bool:
    # the rule of agents.booking: open at every quarter of the meeting and in its last minute
    moment = start
    while moment < end:
        if not schedule.is_open(moment):
            return False
        moment += FIT_STEP
    return schedule.is_open(end - timedelta(minutes=1))


def meeting_start(action: Mapping[str, Any], ctx: ActionContext) -> datetime:
    """When the meeting is planned (UTC): ``start_in_minutes`` after ``ctx.now`` rounded up
    to the minute and, ``within_working_hours``, moved to the first time in the agent's
    working hours where the whole meeting fits. Busy times are the booking's to avoid."""
    start = (ctx.now + timedelta(minutes=action.get("start_in_minutes", 60))).astimezone(UTC)
    if start.second or start.microsecond:
        start = start.replace(second=0, microsecond=0) + timedelta(minutes=1)
    schedule = parse_schedule(ctx.agent.schedule) if action.get("within_working_hours", True) else None
    if schedule is None:
        return start
    duration = timedelta(minutes=action.get("duration_minutes", 30))
    moment = start
    while moment < start + FIT_HORIZON:  # UTC arithmetic: a clock change does not stretch a meeting
        opens = schedule.next_open(moment)
        if opens is None:
            return start  # never open: the booking says so
        opens = opens.astimezone(UTC)
        if _fits(schedule, opens, opens + duration):
            return opens
        moment = opens + FIT_STEP
    return start


def _meeting_key(action: Mapping[str, Any], ctx: ActionContext) -> str:
    """The booking's idempotency key: the action's or step's own; without one (a caller
    outside triggers and sequences) one from what started the work, the lead and the action."""
    if ctx.action_key:
        return ctx.action_key
    digest = hashlib.sha256(json.dumps(dict(action), sort_keys=True).encode()).hexdigest()[:16]
    origin = ctx.reference or f"agent-{ctx.agent.pk}-at-{ctx.now.timestamp():.0f}"
    return f"calendar-{origin}-lead-{ctx.lead_id}-{digest}"[:120]


def _attendees(action: Mapping[str, Any], ctx: ActionContext) -> list[str]:
    if not action.get("invite_contact", True):
        return []
    email = ctx.variable("contact.email").strip()
    return [email] if email else []


def _meeting_texts(action: Mapping[str, Any], ctx: ActionContext) -> tuple[str, str]:
    summary = ctx.render(action["summary"]) or action["summary"]
    description = ctx.render(action["description"]) if action.get("description") else ""
    return summary, description


def _slots(slots, zone) -> str:
    return ", ".join(slot.start.astimezone(zone).strftime("%Y-%m-%d %H:%M") for slot in slots) or "none found"


def create_calendar_event(action: Mapping[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Book the meeting under the action's key (agents.booking.book): done again after a
    crash or a retry, it finds the meeting (or the Google event) instead of booking a
    second one. A busy start, with ``if_busy: next_free``, books the first free slot
    (within working hours) instead."""
    calendar = _calendar(ctx)
    summary, description = _meeting_texts(action, ctx)
    start = meeting_start(action, ctx)
    zone = booking.agent_zone(ctx.agent)
    arguments = {
        "key": _meeting_key(action, ctx),
        "duration": timedelta(minutes=action.get("duration_minutes", 30)),
        "summary": summary,
        "description": description,
        "attendees": _attendees(action, ctx),
        "lead_id": ctx.lead_id,
        "kommo": ctx.kommo,
        "responsible_user_id": _responsible({}, ctx),
        "booked_by": "sequence" if ctx.action_key.startswith(SEQUENCE_KEY_PREFIX) else "trigger",
        "send_updates": action.get("send_updates", "all"),
        "check_hours": action.get("within_working_hours", True),
    }

    def book(at: datetime) -> booking.Booked:
        return booking.book(ctx.agent, calendar, start=at, **arguments)

    moved = ""
    try:
        booked = book(start)
    except booking.SlotUnavailable as exc:
        if action.get("if_busy", "next_free") != "next_free" or not exc.alternatives:
            raise ActionFailed(
                f"{exc} ({start.astimezone(zone):%Y-%m-%d %H:%M %Z}); free: {_slots(exc.alternatives, zone)}"
            ) from exc
        moved = str(exc)
        try:
            # UTC: the slot's own zone would add the duration on the wall clock
            booked = book(exc.alternatives[0].start.astimezone(UTC))
        except booking.SlotUnavailable as again:  # taken in the meantime
            raise ActionFailed(f"{exc}, and the next free time too: {again}") from again
    meeting = booked.meeting
    result = {
        "meeting_id": meeting.pk,
        "event_id": meeting.event_id,
        "start": meeting.start.astimezone(zone).isoformat(),
        "end": meeting.end.astimezone(zone).isoformat(),
        "link": meeting.html_link,
        "already_booked": not booked.created,
    }
    if moved and booked.created:
        result["moved"] = f"{moved} ({start.astimezone(zone).isoformat()}): the next free time was booked"
    return result


HANDLERS: dict[str, Callable[[Mapping[str, Any], ActionContext], dict[str, Any]]] = {
    "send_message": send_message,
    "create_task": create_task,
    "change_stage": change_stage,
    "update_field": update_field,
    "add_tags": add_tags,
    "remove_tags": remove_tags,
    "add_note": add_note,
    "start_sequence": start_sequence,
    "stop_sequence": stop_sequence,
    "create_calendar_event": create_calendar_event,
}


def describe(action: Mapping[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """What the action would do, texts rendered, touching nothing (the dry run). The
    CRM may be read (the lead, its contact) to fill in variables; nothing is written."""
    kind = action["type"]
    out: dict[str, Any] = {"type": kind}
    try:
        if kind == "send_message":
            out["to"] = _describe_chat(ctx, action.get("integration_id"))
            if action.get("text"):
                out["text"] = ctx.render(action["text"])
            else:
                out["ai_instruction"] = action["ai_instruction"]
                out["text"] = None
                out["note"] = f"written by {ctx.agent.ai_model} when it runs, from this instruction"
        elif kind == "create_task":
            out["text"] = ctx.render(action["text"]) or action["text"]
            out["due"] = task_due(action, ctx).isoformat()
            out["responsible_user_id"] = _responsible(action, ctx)
            if action.get("task_type_id"):
                out["task_type_id"] = action["task_type_id"]
        elif kind == "change_stage":
            out.update(pipeline_id=action["pipeline_id"], status_id=action["status_id"])
            out["stage"] = ctx._name_of("statuses", action["status_id"]) or None
        elif kind == "update_field":
            out.update(field=action["field"], value=_field_value(action, ctx))
        elif kind in ("add_tags", "remove_tags"):
            out["tags"] = action["tags"]
        elif kind == "add_note":
            out["text"] = ctx.render(action["text"]) or action["text"]
        elif kind in ("start_sequence", "stop_sequence"):
            out.update(_describe_sequence(action, ctx))
        elif kind == "create_calendar_event":
            out.update(_describe_meeting(action, ctx))
        else:
            out.update({k: v for k, v in action.items() if k != "type"})
    except ActionFailed as exc:
        out["would_fail"] = str(exc)
    return out


def _describe_chat(ctx: ActionContext, integration_id: int | None) -> dict[str, Any]:
    chat = _conversation(ctx, integration_id)
    return {
        "conversation_id": chat.pk,
        "integration_id": chat.integration_id,
        "channel": chat.integration.integration_type,
        "chat": chat.sender_name or chat.chat_id,
    }


def _describe_sequence(action: Mapping[str, Any], ctx: ActionContext) -> dict[str, Any]:
    from sequences.models import ACTIVE_RUN_STATUSES, Sequence, SequenceRun

    out: dict[str, Any] = {"sequence_id": action.get("sequence_id")}
    if action.get("sequence_id"):
        sequence = Sequence.objects.filter(pk=action["sequence_id"], agent=ctx.agent).first()
        out["sequence"] = sequence.name if sequence else None
    if ctx.lead_id:
        runs = SequenceRun.objects.filter(agent=ctx.agent, crm_lead_id=ctx.lead_id, status__in=ACTIVE_RUN_STATUSES)
        if action.get("sequence_id"):
            runs = runs.filter(sequence_id=action["sequence_id"])
        out["active_runs"] = list(runs.values_list("id", flat=True))
    return out


def _describe_meeting(action: Mapping[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """The meeting as planned: no free/busy look-up, nothing booked."""
    summary, description = _meeting_texts(action, ctx)
    zone = booking.agent_zone(ctx.agent)
    start = meeting_start(action, ctx)
    out: dict[str, Any] = {
        "summary": summary,
        "start": start.astimezone(zone).isoformat(),
        "end": (start + timedelta(minutes=action.get("duration_minutes", 30))).astimezone(zone).isoformat(),
        "attendees": _attendees(action, ctx),
        "if_busy": action.get("if_busy", "next_free"),
    }
    if description:
        out["description"] = description
    if booking.agent_calendar(ctx.agent) is None:
        out["would_fail"] = "the agent has no active Google Calendar integration"
    return out
