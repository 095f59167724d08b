"""Conversations with leads: messages from the messenger channels stored before the
channel is answered (each once, with the reply pipeline queued in the same transaction;
no CRM or AI call happens there: it runs inside the webhook request), the channels' word
on what we sent, and what staff do with them (retry, hand back), plus the sweeper."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from config.tasks import enqueue_with_transaction
from integrations.channels.base import InboundMessage, StatusUpdate
from integrations.errors import PermanentError
from integrations.models import Integration

from .channels import send_text
from .models import Conversation, ConversationMessage

logger = logging.getLogger(__name__)

REPLY_TASK = "agents.tasks.reply_to_message"
WEB_MAX_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class StoredInbound:
    message_id: int | None  # None for a redelivery
    conversation_id: int
    duplicate: bool


def inbound_store(*, integration: Integration, message: InboundMessage) -> StoredInbound:
    """Store ``message`` (from the channel ``integration``) unless it was stored before,
    and queue its reply. A redelivered message (same ``external_id`` in the same chat) is
    recognised by a unique constraint, also when two deliveries race."""
    now = timezone.now()
    with transaction.atomic():
        conversation, _ = Conversation.objects.get_or_create(
            integration=integration,
            chat_id=message.chat_id,
            defaults={"agent_id": integration.agent_id, "sender_name": message.sender_name[:200]},
        )
        # a message without text (the lead shared their phone number) is kept, not answered
        answerable = bool(message.text.strip())
        try:
            with transaction.atomic():
                row = ConversationMessage.objects.create(
                    conversation=conversation,
                    direction=ConversationMessage.Direction.INBOUND,
                    author=ConversationMessage.Author.LEAD,
                    external_id=message.external_id[:120],
                    text=message.text,
                    status=ConversationMessage.Status.RECEIVED if answerable else ConversationMessage.Status.SKIPPED,
                    error="" if answerable else "no text to answer (the lead shared a contact)",
                    sent_at=message.sent_at,
                )
        except IntegrityError:
            logger.info("agents.inbound.duplicate", extra={"integration_id": integration.pk})
            return StoredInbound(message_id=None, conversation_id=conversation.pk, duplicate=True)
        changes = {"last_inbound_at": now, "updated_at": now}
        if message.sender_name and message.sender_name != conversation.sender_name:
            changes["sender_name"] = message.sender_name[:200]
        if message.phone and message.phone != conversation.phone:
            changes["phone"] = message.phone
        Conversation.objects.filter(pk=conversation.pk).update(**changes)
        if answerable:
            enqueue_with_transaction(REPLY_TASK, row.pk)
    logger.info(
        "agents.inbound.stored",
        extra={"integration_id": integration.pk, "conversation_id": conversation.pk, "message_id": row.pk},
    )
    return StoredInbound(message_id=row.pk, conversation_id=conversation.pk, duplicate=False)


def outbound_status_apply(*, integration: Integration, update: StatusUpdate) -> bool:
    """A channel's word on a message we sent: a failure marks it not sent, with the
    channel's reason; sent/delivered/read change nothing we act on. Whether it matched."""
    messages = ConversationMessage.objects.filter(
        conversation__integration=integration,
        direction=ConversationMessage.Direction.OUTBOUND,
        external_id=update.message_id,
    )
    if update.status != "failed":
        return messages.exists()
    reason = "; ".join(f"{e.code}: {e.title}" if e.code is not None else e.title for e in update.errors)
    matched = messages.update(status=ConversationMessage.Status.NOT_SENT, error=reason or "failed")
    logger.warning("agents.outbound.failed", extra={"integration_id": integration.pk, "matched": matched})
    return bool(matched)


def reply_key(message: ConversationMessage) -> str:
    """The key of the reply to an inbound message: one reply each (agents.channels.send_once)."""
    return f"reply-to-{message.pk}"


def message_retry(*, message: ConversationMessage) -> bool:
    """Answer a failed inbound message again, from the start (an admin action). Whether
    it was failed (only failed messages are retried). A reply whose send was never
    confirmed is given up: staff decided it did not arrive, so it is written again."""
    with transaction.atomic():
        retried = ConversationMessage.objects.filter(
            pk=message.pk, direction=ConversationMessage.Direction.INBOUND, status=ConversationMessage.Status.FAILED
        ).update(status=ConversationMessage.Status.RECEIVED, attempts=0, error="", processed_at=None)
        if retried:
            ConversationMessage.objects.filter(
                key=reply_key(message), status=ConversationMessage.Status.SENDING
            ).update(
                status=ConversationMessage.Status.NOT_SENT,
                key="",
                error="its send was not confirmed; the message was retried, so it is answered again",
            )
            enqueue_with_transaction(REPLY_TASK, message.pk)
    return bool(retried)


def conversation_hand_off(*, conversation: Conversation, reason: str, minutes: int | None = None) -> None:
    """A person from the team takes the conversation: the agent stays quiet in it for the
    agent's ``handoff_minutes`` (or ``minutes``), or until it is handed back."""
    minutes = conversation.agent.handoff_minutes if minutes is None else minutes
    Conversation.objects.filter(pk=conversation.pk).update(
        handoff_until=timezone.now() + timedelta(minutes=minutes), handoff_reason=reason[:40]
    )


def conversation_hand_back(*, conversation: Conversation) -> None:
    """The team hands the conversation back to the agent: it answers the next message."""
    Conversation.objects.filter(pk=conversation.pk).update(handoff_until=None, handoff_reason="")


# a message still "received" this long after it arrived, never attempted, lost its task;
# one "processing" this long lost its worker (an attempt takes at most ~2 minutes: the AI
# call with its retries, the CRM's and the channel's rate limits)
LOST_AFTER = timedelta(minutes=10)


def messages_sweep() -> int:
    """Queue again the inbound messages whose processing was lost; how many."""
    cutoff = timezone.now() - LOST_AFTER
    lost = ConversationMessage.objects.filter(direction=ConversationMessage.Direction.INBOUND).filter(
        Q(status=ConversationMessage.Status.RECEIVED, attempts=0, created_at__lt=cutoff)
        | Q(status=ConversationMessage.Status.PROCESSING, claimed_at__lt=cutoff)
    )
    count = 0
    for message_id, status in lost.values_list("id", "status")[:1000]:
        with transaction.atomic():
            if status == ConversationMessage.Status.PROCESSING:
                # only if it is still stuck (the update is the check)
                if not ConversationMessage.objects.filter(
                    pk=message_id, status=ConversationMessage.Status.PROCESSING, claimed_at__lt=cutoff
                ).update(status=ConversationMessage.Status.RECEIVED):
                    continue
            enqueue_with_transaction(REPLY_TASK, message_id)
        count += 1
    if count:
        logger.warning("agents.messages.swept", extra={"count": count})
    return count


def team_message_send(*, conversation: Conversation, text: str) -> ConversationMessage:
    """A person from the team writes to the lead on the conversation's channel: the
    message is sent and stored, and the agent stays quiet in this conversation for its
    handoff time (the team has taken over). Channel errors are raised to the caller."""
    if conversation.integration_id is None:
        raise PermanentError("a test chat has no channel to write to")
    # in a web request: a few seconds for the channel's rate limits at most
    sent = send_text(conversation.integration, conversation, text, max_wait=WEB_MAX_WAIT_SECONDS)
    with transaction.atomic():
        message = ConversationMessage.objects.create(
            conversation=conversation,
            direction=ConversationMessage.Direction.OUTBOUND,
            author=ConversationMessage.Author.TEAM,
            external_id=sent[0].message_id if sent else "",
            text=text,
            status=ConversationMessage.Status.SENT,
            processed_at=timezone.now(),
        )
        conversation_hand_off(conversation=conversation, reason="team_wrote")
    return message
