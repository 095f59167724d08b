"""Sending a reply on the channel a conversation came from: the integration's type picks
the client (integrations/channels/), its config and encrypted credentials build it.

``send_once`` sends a message at most once per key (a reply, a trigger action, a sequence
step): its row is written, status "sending", and committed before the channel is called,
then marked sent. So afterwards the row tells what happened: none — nothing went out;
"sent" — done; "sending" — unknown (a worker killed mid-send, or the messenger never
confirmed it), and it is never sent a second time."""
from __future__ import annotations

from django.utils import timezone

from integrations.channels import telegram, twilio, whatsapp_cloud
from integrations.channels.base import OutsideCustomerWindow, SentMessage
from integrations.errors import IntegrationError, PermanentError, Unconfirmed
from integrations.models import Integration

from .models import Conversation, ConversationMessage

ERROR_MAX_CHARS = 1000


class NotSentAgain(PermanentError):
    """A message that may have reached the lead: it is not sent a second time."""


class SendInterrupted(NotSentAgain):
    """A message with this key was handed to the channel and its answer never recorded
    (a worker killed mid-send): whether it reached the lead is not known."""


class SendUnconfirmed(NotSentAgain):
    """The channel took the message and never confirmed it (a timeout, a 5xx): it may
    have reached the lead."""


class PartlySent(NotSentAgain):
    """Some parts of a long message went out, then the channel failed."""


INTERRUPTED = (
    "interrupted while sending (the worker stopped); the message was not sent again, "
    "since whether it reached the lead is not known"
)
UNCONFIRMED = (
    "the messenger did not confirm the message ({error}); it may have reached the lead, so it was "
    "not sent again — send it again by hand if it did not arrive"
)


def sent_by_key(key: str) -> ConversationMessage | None:
    """The message sent (or being sent) under ``key``, if it got that far."""
    return ConversationMessage.objects.filter(key=key).first() if key else None


def send_once(
    conversation: Conversation,
    text: str,
    *,
    key: str,
    completion=None,
    reply_to: ConversationMessage | None = None,
    max_wait: float = 60.0,
) -> tuple[ConversationMessage, int | None]:
    """Send ``text`` in the chat and store it, at most once for ``key``: (the message, how
    many parts went out — None when an earlier attempt had sent it).

    Raises the channel's error when nothing went out (the row is removed: as if never
    tried), SendInterrupted for a row left "sending", SendUnconfirmed when the messenger
    did not confirm (the row stays "sending"), PartlySent when only some parts went out
    (the row keeps those)."""
    earlier = sent_by_key(key)
    if earlier is not None:
        if earlier.status == ConversationMessage.Status.SENT:
            return earlier, None
        raise SendInterrupted(INTERRUPTED)
    message = ConversationMessage.objects.create(
        conversation=conversation,
        direction=ConversationMessage.Direction.OUTBOUND,
        author=ConversationMessage.Author.AGENT,
        text=text,
        key=key,
        reply_to=reply_to,
        status=ConversationMessage.Status.SENDING,
        ai_provider=completion.provider if completion else "",
        ai_model=completion.model if completion else "",
        input_tokens=completion.input_tokens if completion else None,
        output_tokens=completion.output_tokens if completion else None,
        latency_ms=completion.latency_ms if completion else None,
    )
    try:
        sent = send_text(conversation.integration, conversation, text, max_wait=max_wait)
    except IntegrationError as exc:
        went_out = getattr(exc, "sent", ())
        if went_out:
            # part of a long message reached the lead: keep what did; sending it again
            # would repeat those parts
            mark_sent(message, " ".join(part.text for part in went_out), went_out)
            raise PartlySent(f"{len(went_out)} part(s) of the message sent, then: {exc}") from exc
        if isinstance(exc, Unconfirmed):
            reason = UNCONFIRMED.format(error=exc)[:ERROR_MAX_CHARS]
            ConversationMessage.objects.filter(pk=message.pk).update(error=reason)
            raise SendUnconfirmed(reason) from exc
        message.delete()  # nothing went out
        raise
    mark_sent(message, text, sent)
    return message, len(sent)


def mark_sent(message: ConversationMessage, text: str, sent) -> None:
    message.text, message.status = text, ConversationMessage.Status.SENT
    message.external_id = sent[0].message_id if sent else ""
    message.processed_at = timezone.now()
    message.save(update_fields=["text", "status", "external_id", "processed_at"])


def send_text(
    integration: Integration, conversation: Conversation, text: str, *, max_wait: float = 60.0
) -> list[SentMessage]:
    """Send ``text`` to the conversation's chat; one SentMessage a part. ``max_wait``
    bounds the wait for the channel's rate limits (a web request passes a few seconds).

    WhatsApp (Meta or Twilio): outside the 24-hour customer window a free-form message is
    not even attempted: OutsideCustomerWindow (a template is needed)."""
    config, credentials = integration.config or {}, integration.credentials or {}
    kind = integration.integration_type
    if kind == Integration.Type.TELEGRAM:
        client = telegram.TelegramClient(
            _secret(credentials, "bot_token", kind), config.get("base_url"), max_wait=max_wait
        )
        return client.send_message(conversation.chat_id, text)
    if kind in (Integration.Type.WHATSAPP_CLOUD, Integration.Type.TWILIO_WHATSAPP):
        if not whatsapp_cloud.within_customer_window(conversation.last_inbound_at, timezone.now()):
            raise OutsideCustomerWindow(
                "WhatsApp: the lead last wrote over 24 hours ago; only an approved template may be sent"
            )
        to = conversation.phone or conversation.chat_id
        if kind == Integration.Type.WHATSAPP_CLOUD:
            client = whatsapp_cloud.WhatsAppCloudClient(
                _secret(credentials, "access_token", kind),
                config.get("phone_number_id"),
                config.get("base_url"),
                max_wait=max_wait,
            )
        else:
            client = twilio.TwilioClient(
                _secret(credentials, "account_sid", kind),
                _secret(credentials, "auth_token", kind),
                config.get("from_number"),
                config.get("base_url"),
                max_wait=max_wait,
            )
        return client.send_text(to, text)
    raise PermanentError(f"{integration.get_integration_type_display()} is not a messenger channel")


def _secret(credentials: dict, key: str, kind: str) -> str:
    value = credentials.get(key)
    if not value:
        raise PermanentError(f"{kind}: credentials.{key} is not set")
    return value
