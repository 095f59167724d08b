"""Sending a reply on the channel a conversation came from: the integration's type picks
the client (integrations/channels/), its config and encrypted credentials build it."""
from __future__ import annotations

from django.utils import timezone

from integrations.channels import telegram, twilio, whatsapp_cloud
from integrations.channels.base import OutsideCustomerWindow, SentMessage
from integrations.errors import PermanentError
from integrations.models import Integration

from .models import Conversation


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
