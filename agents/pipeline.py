"""The reply pipeline (flow 2.5): an inbound message → its lead in the CRM → a reply
written by the agent's AI model from the agent's instructions, the lead's *allowed* CRM
fields and the recent conversation → sent on the channel it came from → stored, noted in
the CRM and logged.

Runs in the worker (``agents.tasks.reply_to_message``), one inbound message at a time.
Transient failures (the AI provider, the CRM or the channel answering 429/5xx or timing
out) put the message back to "received" and schedule another attempt with backoff; after
``MAX_ATTEMPTS``, or at once for a permanent failure, the message is "failed" with the
reason, and the admin can retry it.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django.utils.module_loading import import_string
from django_q.tasks import schedule

from agents import ai
from agents.ai.base import usage_for_agent
from agents.ai.errors import AIError, AIPermanentError, AIRateLimited
from agents.language import reply_language
from crm import connection as crm
from crm.client import Contact, FieldValue, Lead
from crm.services import write_once
from integrations.errors import IntegrationError, PermanentError, RateLimited, Unconfirmed
from integrations.models import Integration

from . import calendar_tools
from .channels import INTERRUPTED, NotSentAgain, send_once, sent_by_key
from .conversations import conversation_hand_off, reply_key
from .models import Agent, AgentCrmAccess, Conversation, ConversationMessage, ExecutionLog
from .services import execution_log_write

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
HISTORY_MESSAGES = 20  # earlier messages of the conversation given to the model
CRM_WAIT_SECONDS = 10  # at most this long for a slot of the CRM's rate limit
LEAD_CACHE_SECONDS = 300
Status = ConversationMessage.Status

# "I want to talk to a person", in the languages the product's customers sell in: whole
# words where words do not inflect, stems where they do (менеджера, оператором, людину)
_ASKS_FOR_HUMAN = re.compile(
    r"\b(?:human|humans|real person|live person|live agent|operator|manager|"
    r"humano|persona real|operador|asesor|atendente|pessoa|mensch|mitarbeiter|humain|conseiller|"
    r"insan|temsilci|yetkili)\b"
    r"|\b(?:человек|живо|оператор|менеджер|люд|консультант)\w*",
    re.IGNORECASE,
)


def asks_for_human(text: str) -> bool:
    return bool(_ASKS_FOR_HUMAN.search(text or ""))


@dataclass(frozen=True)
class LeadContext:
    lead: Lead | None
    contact: Contact | None


class Retry(Exception):
    """A transient failure: try the message again later."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class Fail(Exception):
    """A permanent failure: the message is failed with this reason."""


# --- the entry point ------------------------------------------------------------------------


def message_reply(*, message_id: int) -> str:
    """Answer one inbound message; returns its final status for this attempt."""
    claimed = ConversationMessage.objects.filter(
        pk=message_id, direction=ConversationMessage.Direction.INBOUND, status=Status.RECEIVED
    ).update(status=Status.PROCESSING, attempts=F("attempts") + 1, claimed_at=timezone.now())
    if not claimed:
        return "not_waiting"  # answered, being answered, or skipped already
    message = ConversationMessage.objects.select_related(
        "conversation__agent", "conversation__integration"
    ).get(pk=message_id)
    started = time.monotonic()
    earlier = sent_by_key(reply_key(message))
    if earlier is not None:  # an earlier attempt got as far as sending: never answer twice
        if earlier.status == Status.SENT:
            status, reason = Status.ANSWERED, "the reply had been sent; its outcome is recorded now"
        else:
            status, reason = Status.FAILED, f"channel: {earlier.error or INTERRUPTED}"
        _finish(message, status, reason, started)
        return status
    _tell_handlers(message)
    try:
        status, reason = _reply(message)
    except Retry as exc:
        if message.attempts >= MAX_ATTEMPTS:
            status, reason = Status.FAILED, f"{exc} (after {message.attempts} attempts)"
        else:
            _schedule_retry(message, exc.retry_after)
            status, reason = Status.RECEIVED, str(exc)
    except Fail as exc:
        status, reason = Status.FAILED, str(exc)
    except Exception as exc:  # a bug or the database: never leave the message "processing"
        logger.exception("agents.reply.error", extra={"message_id": message.pk})
        reason = f"unexpected error: {type(exc).__name__}"
        if message.attempts >= MAX_ATTEMPTS:
            status, reason = Status.FAILED, f"{reason} (after {message.attempts} attempts)"
        else:
            _schedule_retry(message, None)
            status = Status.RECEIVED
    _finish(message, status, reason, started)
    return status


def _tell_handlers(message: ConversationMessage) -> None:
    """settings.INBOUND_MESSAGE_HANDLERS hear of the message (the lead replied: its
    follow-up sequences end). One failing must not keep the lead unanswered."""
    for path in settings.INBOUND_MESSAGE_HANDLERS:
        try:
            import_string(path)(message)
        except Exception:
            logger.exception("agents.inbound_handler.failed", extra={"handler": path, "message_id": message.pk})


def _reply(message: ConversationMessage) -> tuple[str, str]:
    conversation = message.conversation
    agent = conversation.agent
    channel = conversation.integration
    now = timezone.now()
    if not agent.active:
        return Status.SKIPPED, "the agent is switched off"
    if channel is not None and not channel.active:
        return Status.SKIPPED, "the channel's integration is switched off"
    if conversation.handoff_until and conversation.handoff_until > now:
        return Status.SKIPPED, f"handed off to the team until {conversation.handoff_until:%Y-%m-%d %H:%M} UTC"

    hours = agent.working_hours  # None: around the clock
    if hours is not None and not hours.is_open(now):
        if agent.outside_hours == "silent":
            return Status.SKIPPED, "outside working hours (the agent stays silent)"
        if agent.outside_hours == "away_once":
            if conversation.away_sent_at or not agent.away_message.strip():
                return Status.SKIPPED, "outside working hours (away message already sent)"
            _send_and_store(message, agent.away_message.strip(), completion=None)
            Conversation.objects.filter(pk=conversation.pk).update(away_sent_at=now)
            return Status.ANSWERED, "outside working hours: away message sent"

    kommo = _kommo_of(agent)
    if conversation.is_test and not conversation.crm_lead_id:
        kommo = None  # a staff test chat reads only the lead staff named; it never creates one
    # a retry looks for a lead an earlier attempt may have created without hearing back
    retried_since = message.created_at if message.attempts > 1 else None
    context = _lead_context(kommo, conversation, retried_since=retried_since) if kommo else LeadContext(None, None)
    handoff = asks_for_human(message.text)
    language = reply_language(
        detection=agent.language_detection,
        default=agent.default_language,
        text=message.text,
        previous=conversation.language,
    )
    if language != conversation.language:
        Conversation.objects.filter(pk=conversation.pk).update(language=language)
    system = build_system_prompt(agent, context, language=language, handoff=handoff)
    history = _history(message)
    tools = _calendar_tools(agent, conversation, message, context, kommo) if not handoff else None
    try:
        with usage_for_agent(agent.pk):
            if tools is not None:
                system += "\n\n" + calendar_tools.prompt_note(agent)
                completion = ai.run_tools(agent.ai_model, system, history, tools.tools, tools)
            else:
                completion = ai.complete(model_spec=agent.ai_model, system=system, messages=history)
    except AIRateLimited as exc:
        raise Retry(f"AI provider: {exc}", exc.retry_after) from exc
    except AIPermanentError as exc:
        raise Fail(f"AI provider: {exc}") from exc
    except AIError as exc:
        raise Retry(f"AI provider: {exc}") from exc
    crm_writes = kommo if not conversation.is_test else None  # a test chat leaves no trace in the CRM
    if handoff:  # before the reply: a failure here retries the message, and nothing went out yet
        _hand_off(message, agent, crm_writes, context, reason="lead_asked")
    _send_and_store(message, completion.text, completion=completion)
    if crm_writes and context.lead:
        _note_exchange(crm_writes, context.lead.id, message.text, completion.text)
    return Status.ANSWERED, ""


def _calendar_tools(agent, conversation, message, context: LeadContext, kommo):
    """The calendar tools for this reply, when the agent has a usable Google Calendar."""
    calendar = calendar_tools.calendar_for(agent)
    if calendar is None:
        return None
    return calendar_tools.CalendarTools(
        agent=agent,
        calendar=calendar,
        conversation=conversation,
        message=message,
        lead=context.lead,
        contact=context.contact,
        kommo=kommo if not conversation.is_test else None,
    )


# --- CRM ------------------------------------------------------------------------------------


def _kommo_of(agent: Agent) -> Integration | None:
    return (
        Integration.objects.filter(agent=agent, integration_type=Integration.Type.KOMMO, active=True)
        .order_by("id")
        .first()
    )


def _crm(kommo: Integration, operation):
    return _crm_mapped(lambda: crm.call(kommo, operation, max_wait=CRM_WAIT_SECONDS))


def _crm_mapped(do):
    """``do()``, the CRM's errors turned into Retry or Fail."""
    try:
        return do()
    except RateLimited as exc:
        raise Retry(f"CRM: {exc}", exc.retry_after) from exc
    except PermanentError as exc:
        raise Fail(f"CRM: {exc}") from exc
    except IntegrationError as exc:  # auth, transient
        raise Retry(f"CRM: {exc}") from exc


def lead_cache_key(integration_id: int, lead_id: int) -> str:
    return f"agents:lead-context:{integration_id}:{lead_id}"


def read_lead_context(
    kommo: Integration, lead_id: int, *, contact_id: int | None = None, max_wait: float = CRM_WAIT_SECONDS
) -> LeadContext:
    """The lead and its contact (``contact_id``, else the lead's main contact), from the
    cache or the CRM; raises the client's IntegrationError. Shared by the reply pipeline
    and the trigger engine; a CRM event about the lead drops the entry."""
    key = lead_cache_key(kommo.pk, lead_id)
    cached = cache.get(key)
    if cached is not None:
        return cached
    lead = crm.call(kommo, lambda c: c.get_lead(lead_id), max_wait=max_wait)
    contact_id = contact_id or lead.main_contact_id
    contact = crm.call(kommo, lambda c: c.get_contact(contact_id), max_wait=max_wait) if contact_id else None
    context = LeadContext(lead, contact)
    cache.set(key, context, LEAD_CACHE_SECONDS)
    return context


def _lead_context(kommo: Integration, conversation: Conversation, *, retried_since=None) -> LeadContext:
    """The conversation's lead and contact, found by the stored link or the phone number,
    or created so that every conversation belongs to a lead.

    A creation whose answer never came (``Unconfirmed``) may have been done: the message
    is tried again later, and that attempt (``retried_since``: when the message came)
    looks for the lead first, by the phone number or else by its name, so that a chat
    gets one lead.

    A linked lead's data is cached for ``LEAD_CACHE_SECONDS``: a chat is many messages in
    a few minutes, and each would otherwise cost two CRM requests out of the account's
    7 a second. A CRM event about the lead or its contact drops the entry
    (agents/handlers.py), so a change made in the CRM is seen at the next message."""
    if conversation.crm_lead_id:
        try:
            return read_lead_context(kommo, conversation.crm_lead_id, contact_id=conversation.crm_contact_id)
        except RateLimited as exc:
            raise Retry(f"CRM: {exc}", exc.retry_after) from exc
        except PermanentError as exc:
            raise Fail(f"CRM: {exc}") from exc
        except IntegrationError as exc:  # auth, transient
            raise Retry(f"CRM: {exc}") from exc
    contact = None
    if conversation.phone:
        found = _crm(kommo, lambda c: c.find_contacts_by_phone(conversation.phone))
        contact = found[0] if found else None
    channel = conversation.integration.get_integration_type_display()
    name = conversation.sender_name or conversation.phone or f"{channel} {conversation.chat_id}"
    lead_name = f"Chat: {name}"
    earlier = None
    if retried_since is not None and not conversation.phone and not contact:
        earlier = _created_earlier(kommo, conversation, lead_name, retried_since)
    if contact and contact.lead_ids:
        lead = _crm(kommo, lambda c: c.get_lead(max(contact.lead_ids)))  # the newest of them
    elif earlier is not None:
        lead = earlier
        contact = Contact(id=lead.main_contact_id, name=name) if lead.main_contact_id else None
    else:
        try:
            created = _crm(
                kommo,
                lambda c: c.create_lead_with_contact(
                    lead_name=lead_name, contact_name=name, phone=conversation.phone or None
                ),
            )
        except Retry as exc:
            if isinstance(exc.__cause__, Unconfirmed):  # the next attempt looks for it first
                raise Retry(f"CRM: the lead's creation was not confirmed; it is looked for next time ({exc})") from exc
            raise
        # a lead created just now has no field values yet: nothing to read back
        lead = Lead(
            id=created.lead_id,
            name=f"Chat: {name}",
            price=None,
            status_id=0,
            pipeline_id=0,
            responsible_user_id=None,
        )
        contact = Contact(id=created.contact_id, name=name) if created.contact_id else None
    Conversation.objects.filter(pk=conversation.pk).update(
        crm_lead_id=lead.id, crm_contact_id=contact.id if contact else None
    )
    conversation.crm_lead_id, conversation.crm_contact_id = lead.id, contact.id if contact else None
    return LeadContext(lead, contact)


def _created_earlier(kommo: Integration, conversation: Conversation, lead_name: str, since) -> Lead | None:
    """The lead named ``lead_name`` that an earlier attempt created (since ``since``, less a
    minute for the CRM's clock), when there is exactly one; Fail when there are several."""
    created_since = int(since.timestamp()) - 60
    found = [lead for lead in _crm(kommo, lambda c: c.find_leads(lead_name, created_since=created_since))
             if lead.name == lead_name]  # fmt: skip
    linked = set(
        Conversation.objects.filter(
            agent_id=conversation.agent_id, crm_lead_id__in=[lead.id for lead in found]
        ).values_list("crm_lead_id", flat=True)
    )
    found = [lead for lead in found if lead.id not in linked]  # another chat's lead of the same name
    if len(found) > 1:
        raise Fail(f"CRM: {len(found)} leads named {lead_name!r} were created for this chat; link the right one")
    return found[0] if found else None


def _hand_off(message: ConversationMessage, agent, kommo, context: LeadContext, *, reason: str) -> None:
    """The team takes the conversation, and gets a task on the lead: one, even when this
    attempt is a retry after one whose task was not confirmed (it is looked for first).
    The task comes first: a conversation already handed off would skip the retry."""
    if kommo and context.lead:
        lead = context.lead
        due = int(time.time()) + 15 * 60
        text = f"The lead asked for a person in the chat: “{message.text[:200]}”"
        since = int(message.created_at.timestamp()) - 60 if message.attempts > 1 else None
        _crm_mapped(
            lambda: write_once(
                kommo,
                "task",
                lead.id,
                text,
                lambda c: c.create_task(
                    lead_id=lead.id, text=text, complete_till=due, responsible_user_id=lead.responsible_user_id
                ),
                verify_since=since,
                max_wait=CRM_WAIT_SECONDS,
            )
        )
    conversation_hand_off(conversation=message.conversation, reason=reason, minutes=agent.handoff_minutes)


def _note_exchange(kommo: Integration, lead_id: int, question: str, answer: str) -> None:
    try:
        _crm(kommo, lambda c: c.add_note(lead_id=lead_id, text=f"Lead: {question}\n\nAgent: {answer}"))
    except (Retry, Fail) as exc:
        # the reply went out; a missing note is logged, not worth another reply
        logger.warning("agents.reply.note_failed", extra={"lead_id": lead_id, "error": str(exc)})


# --- the prompt -----------------------------------------------------------------------------


def allowed_values(values: Sequence[FieldValue], allowed: Sequence[int]) -> list[tuple[str, str]]:
    """(name, value) of the fields the agent may read, in the order they were granted.
    Everything else the CRM returned is dropped here, before any prompt is built."""
    by_id = {value.field_id: value for value in values}
    shown = []
    for field_id in allowed:
        value = by_id.get(field_id)
        if value is None or not value.values:
            continue
        text = ", ".join(str(v.get("value") if isinstance(v, dict) else v) for v in value.values)
        shown.append((value.field_name or str(field_id), text))
    return shown


def build_system_prompt(agent: Agent, context: LeadContext, *, language: str, handoff: bool = False) -> str:
    access = AgentCrmAccess.objects.filter(agent=agent).first()
    lead_fields = access.lead_fields if access else []
    contact_fields = access.contact_fields if access else []
    parts = [agent.instructions.strip() or "You are a helpful sales assistant."]
    facts: list[str] = []
    if context.lead:
        facts += [f"- {name}: {value}" for name, value in allowed_values(context.lead.custom_fields, lead_fields)]
    if context.contact:
        facts += [
            f"- {name}: {value}" for name, value in allowed_values(context.contact.custom_fields, contact_fields)
        ]
    if facts:
        parts.append("What the CRM knows about this lead:\n" + "\n".join(facts))
    parts.append(f"Answer in the language with the code “{language}”.")
    if handoff:
        parts.append("The lead asked to talk to a person: say briefly that a team member will reply soon.")
    return "\n\n".join(parts)


def _history(message: ConversationMessage) -> list[ai.ChatMessage]:
    earlier = list(
        ConversationMessage.objects.filter(conversation_id=message.conversation_id, id__lt=message.id)
        .exclude(text="")
        .order_by("-id")[:HISTORY_MESSAGES]
    )
    inbound = ConversationMessage.Direction.INBOUND
    turns = [
        ai.ChatMessage(role="user" if m.direction == inbound else "assistant", text=m.text) for m in reversed(earlier)
    ]
    return [*turns, ai.ChatMessage(role="user", text=message.text)]


# --- sending and recording ------------------------------------------------------------------


def _send_and_store(message: ConversationMessage, text: str, *, completion) -> None:
    conversation = message.conversation
    if conversation.is_test:  # a staff test chat has no channel: the reply is only stored
        _store_test_reply(message, text, completion)
        return
    try:
        send_once(conversation, text, key=reply_key(message), completion=completion, reply_to=message)
    except NotSentAgain as exc:
        # it may have reached the lead (part of it, or unconfirmed): never written twice
        raise Fail(f"channel: {exc}") from exc
    except IntegrationError as exc:  # nothing went out
        if isinstance(exc, RateLimited):
            raise Retry(f"channel: {exc}", exc.retry_after) from exc
        if isinstance(exc, PermanentError):
            raise Fail(f"channel: {exc}") from exc
        raise Retry(f"channel: {exc}") from exc


def _store_test_reply(message: ConversationMessage, text: str, completion) -> None:
    ConversationMessage.objects.create(
        conversation=message.conversation,
        direction=ConversationMessage.Direction.OUTBOUND,
        author=ConversationMessage.Author.AGENT,
        key=reply_key(message),
        text=text,
        status=Status.SENT,
        reply_to=message,
        ai_provider=completion.provider if completion else "",
        ai_model=completion.model if completion else "",
        input_tokens=completion.input_tokens if completion else None,
        output_tokens=completion.output_tokens if completion else None,
        latency_ms=completion.latency_ms if completion else None,
        processed_at=timezone.now(),
    )


def _schedule_retry(message: ConversationMessage, retry_after: float | None) -> None:
    delay = max(retry_after or 0, min(300, 5 * 2 ** (message.attempts - 1)))
    schedule(
        "agents.tasks.reply_to_message",
        message.pk,
        schedule_type="O",
        next_run=timezone.now() + timedelta(seconds=delay),
    )


_LOG_STATUS = {
    Status.ANSWERED: ExecutionLog.Status.SUCCESS,
    Status.FAILED: ExecutionLog.Status.FAILED,
    Status.RECEIVED: ExecutionLog.Status.RETRYING,
}


def _finish(message: ConversationMessage, status: str, reason: str, started: float) -> None:
    conversation = message.conversation
    with transaction.atomic():
        ConversationMessage.objects.filter(pk=message.pk).update(
            status=status, error=reason, processed_at=timezone.now()
        )
        execution_log_write(
            agent=conversation.agent_id,
            kind=ExecutionLog.Kind.REPLY,
            status=_LOG_STATUS.get(status, ExecutionLog.Status.SKIPPED),
            ref_type="message",
            ref_id=message.pk,
            crm_lead_id=conversation.crm_lead_id,
            error=reason if status in (Status.FAILED, Status.RECEIVED) else "",
            detail={"reason": reason} if status == Status.SKIPPED else {},
            duration_ms=int((time.monotonic() - started) * 1000),
        )
    logger.info(
        "agents.reply.done",
        extra={"message_id": message.pk, "status": status, "attempt": message.attempts},
    )


def test_chat_send(*, agent, chat_id: str, sender_name: str, text: str, crm_lead_id: int | None = None) -> int:
    """A staff test chat (the admin): the message goes through the reply pipeline now, in
    this request, without a messenger; returns the inbound message's id."""
    conversation, _ = Conversation.objects.get_or_create(
        agent=agent, integration=None, chat_id=chat_id, defaults={"sender_name": sender_name}
    )
    if conversation.crm_lead_id != crm_lead_id:
        Conversation.objects.filter(pk=conversation.pk).update(crm_lead_id=crm_lead_id, crm_contact_id=None)
    now = timezone.now()
    message = ConversationMessage.objects.create(
        conversation=conversation,
        direction=ConversationMessage.Direction.INBOUND,
        author=ConversationMessage.Author.LEAD,
        text=text,
        status=ConversationMessage.Status.RECEIVED,
        sent_at=now,
    )
    Conversation.objects.filter(pk=conversation.pk).update(last_inbound_at=now, updated_at=now)
    message_reply(message_id=message.pk)
    return message.pk
