"""WhatsApp Cloud API (Meta) client and webhook checks and parsing.
Reference: https://developers.facebook.com/docs/whatsapp/cloud-api/ (messages, webhooks,
error codes: https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import requests

from integrations import http
from integrations.errors import AuthError, IntegrationError, PermanentError, RateLimited, TransientError

from .base import (
    Acquire,
    Channel,
    InboundMessage,
    MalformedPayload,
    OutsideCustomerWindow,
    RetryPolicy,
    SentMessage,
    StatusError,
    StatusUpdate,
    Throttle,
    Transport,
    e164,
    json_body,
    parse_json_object,
    send_parts,
    split_text,
    with_sent,
)

__all__ = [
    "OutsideCustomerWindow",
    "WhatsAppCloudClient",
    "check_signature",
    "parse_webhook",
    "verify_subscription",
    "within_customer_window",
]

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://graph.facebook.com/v21.0"
MESSAGES = "/{phone_number_id}/messages"
SIGNATURE_HEADER = "X-Hub-Signature-256"
MESSAGE_LIMIT = 4096  # characters of a text message's body
CUSTOMER_WINDOW = timedelta(hours=24)
# Cloud API's default throughput is 80 messages a second per business number; this stays
# well under it (Meta answers 130429 beyond it).
PER_NUMBER_PER_SECOND = 20.0

# Meta's error codes (error.code of a Graph API error)
RE_ENGAGEMENT = 131047  # more than 24 hours since the customer last wrote
AUTH_CODES = frozenset({0, 3, 10, 190, *range(200, 300)})  # token expired or permission missing
RATE_LIMIT_CODES = frozenset({4, 80007, 130429, 131056})  # app, account, throughput, pair limits
TRANSIENT_CODES = frozenset({1, 2})  # "API Unknown", "API Service": temporary downtime

_SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})")
# Meta's challenge is a number; anything else is refused rather than echoed into a response.
_CHALLENGE = re.compile(r"[A-Za-z0-9._-]{1,256}")
_STATUSES = frozenset({"sent", "delivered", "read", "failed"})


# --- Webhooks ------------------------------------------------------------------------------


def verify_subscription(params: Mapping[str, Any], verify_token: str | None) -> str | None:
    """The GET handshake: the ``hub.challenge`` to answer with (200, text/plain) when
    ``hub.mode`` is "subscribe" and ``hub.verify_token`` is ours; otherwise None (answer 403)."""
    mode, token, challenge = (params.get(key) for key in ("hub.mode", "hub.verify_token", "hub.challenge"))
    if mode != "subscribe" or not isinstance(token, str) or not token or not verify_token:
        return None
    if not hmac.compare_digest(token.encode(), verify_token.encode()):
        return None
    if not isinstance(challenge, str) or not _CHALLENGE.fullmatch(challenge):
        return None
    return challenge


def check_signature(raw_body: bytes, header_value: str | None, app_secret: str | None) -> bool:
    """Whether ``X-Hub-Signature-256: sha256=<hex>`` is the HMAC-SHA256 of the raw body
    under the app secret. Check the bytes as received, before any JSON decoding."""
    if not header_value or not app_secret:
        return False
    match = _SIGNATURE.fullmatch(header_value.strip())
    if match is None:
        return False
    expected = hmac.new(app_secret.encode(), raw_body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, match.group(1).lower())


def parse_webhook(body: bytes | str) -> list[InboundMessage | StatusUpdate]:
    """The text messages and the status updates of one delivery, in its order.

    Messages of other types (images, locations, reactions…) and other change fields are
    left out. One item without what it needs (a message without its sender) is left out
    with a warning and the rest of the delivery is kept: refusing the delivery would have
    Meta send it again for days. MalformedPayload when the body is not a WhatsApp
    Business webhook at all."""
    data = parse_json_object(body)
    entries = data.get("entry")
    if data.get("object") != "whatsapp_business_account" or not isinstance(entries, list):
        raise MalformedPayload("the body is not a whatsapp_business_account webhook")
    items: list[InboundMessage | StatusUpdate] = []
    for entry in entries:
        changes = entry.get("changes") if isinstance(entry, Mapping) else None
        for change in changes if isinstance(changes, list) else []:
            if not isinstance(change, Mapping) or change.get("field", "messages") != "messages":
                continue
            value = change.get("value")
            if isinstance(value, Mapping):
                items.extend(_parse_value(value))
    return items


def _parse_value(value: Mapping[str, Any]) -> list[InboundMessage | StatusUpdate]:
    metadata = value.get("metadata")
    recipient = metadata.get("phone_number_id") if isinstance(metadata, Mapping) else None
    recipient = str(recipient) if recipient else None
    names = {
        str(contact.get("wa_id")): str((contact.get("profile") or {}).get("name") or "")
        for contact in _objects(value.get("contacts"))
    }
    items: list[InboundMessage | StatusUpdate] = []
    for message in _objects(value.get("messages")):
        text = message.get("text")
        body = text.get("body") if message.get("type") == "text" and isinstance(text, Mapping) else None
        if not isinstance(body, str) or not body.strip():
            continue
        try:
            sender, message_id, sent_at = str(message["from"]), str(message["id"]), _time(message["timestamp"])
        except (KeyError, TypeError, ValueError, OverflowError):
            logger.warning("channels.whatsapp_cloud.item_skipped", extra={"item": "message", "reason": "incomplete"})
            continue
        items.append(
            InboundMessage(
                channel=Channel.WHATSAPP_CLOUD,
                external_id=message_id,
                message_id=message_id,
                chat_id=sender,
                sender_id=sender,
                sender_name=names.get(sender, ""),
                text=body,
                sent_at=sent_at,
                phone=e164(sender),
                recipient=recipient,
            )
        )
    for status in _objects(value.get("statuses")):
        if status.get("status") not in _STATUSES:
            continue
        try:
            message_id = str(status["id"])
            at = _time(status["timestamp"]) if status.get("timestamp") else None
        except (KeyError, TypeError, ValueError, OverflowError):
            logger.warning("channels.whatsapp_cloud.item_skipped", extra={"item": "status", "reason": "incomplete"})
            continue
        items.append(
            StatusUpdate(
                channel=Channel.WHATSAPP_CLOUD,
                message_id=message_id,
                recipient_id=str(status.get("recipient_id") or ""),
                status=status["status"],
                at=at,
                errors=tuple(_status_error(error) for error in _objects(status.get("errors"))),
                recipient=recipient,
            )
        )
    return items


def _objects(value: Any) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def _status_error(error: Mapping[str, Any]) -> StatusError:
    data = error.get("error_data")
    return StatusError(
        code=error.get("code") if isinstance(error.get("code"), int) else None,
        title=str(error.get("title") or error.get("message") or ""),
        details=str(data.get("details") or "") if isinstance(data, Mapping) else "",
    )


def _time(timestamp: Any) -> datetime:
    return datetime.fromtimestamp(int(timestamp), UTC)


def within_customer_window(last_inbound_at: datetime | None, now: datetime) -> bool:
    """Whether a free-form message may be sent: the customer wrote less than 24 hours ago.
    Outside the window only an approved template may be sent (Meta refuses with 131047)."""
    if last_inbound_at is None:
        return False
    return now - last_inbound_at < CUSTOMER_WINDOW


# --- The client ----------------------------------------------------------------------------


class WhatsAppCloudClient:
    """Sends from one business phone number. ``acquire`` defaults to integrations.ratelimit.acquire."""

    def __init__(
        self,
        access_token: str,
        phone_number_id: str,
        base_url: str | None = DEFAULT_BASE_URL,
        *,
        acquire: Acquire | None = None,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
        per_second: float = PER_NUMBER_PER_SECOND,
        max_wait: float = 60.0,
    ) -> None:
        if not str(phone_number_id or "").isdigit():
            raise PermanentError("WhatsApp Cloud: phone_number_id must be digits")
        self.phone_number_id = str(phone_number_id)
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self._token = access_token
        self._throttle = Throttle(f"whatsapp_cloud:{self.phone_number_id}", per_second, max_wait)
        self._transport = Transport(
            vendor="WhatsApp Cloud",
            log_name="channels.whatsapp_cloud.request",
            secrets=(access_token,),
            acquire=acquire,
            retry=retry,
            session=session,
        )

    def __repr__(self) -> str:
        return f"WhatsAppCloudClient({self.phone_number_id}, {self.base_url!r})"

    def send_text(self, to: str, text: str) -> list[SentMessage]:
        """A free-form text to ``to`` (a phone number, any format), split at 4096 characters.

        OutsideCustomerWindow when the customer last wrote over 24 hours ago: check
        within_customer_window first to avoid the attempt."""
        recipient = (e164(to) or "").lstrip("+")
        what = "send message"
        if not recipient:
            raise with_sent(PermanentError(f"WhatsApp Cloud {what}: the recipient is not a phone number"), [])
        parts = split_text(text, MESSAGE_LIMIT)
        if not parts:
            raise with_sent(PermanentError(f"WhatsApp Cloud {what}: the text is empty"), [])
        url = self.base_url + MESSAGES.format(phone_number_id=quote(self.phone_number_id, safe=""))
        headers = {"Authorization": f"Bearer {self._token}"}

        def send_one(part: str) -> SentMessage:
            payload = {
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": recipient,
                "type": "text",
                "text": {"preview_url": False, "body": part},
            }
            response = self._transport.call(
                "POST", url, what=what, error_for=self._error_for, idempotent=False,
                throttles=(self._throttle,), json=payload, headers=headers,
            )  # fmt: skip
            return _sent(json_body(response), recipient, part)

        return send_parts(parts, send_one)

    def _error_for(self, response: requests.Response, what: str) -> IntegrationError | None:
        status = response.status_code
        if status < 400:
            return None
        data = json_body(response)
        error = data.get("error") if isinstance(data, Mapping) else None
        error = error if isinstance(error, Mapping) else {}
        code = error.get("code") if isinstance(error.get("code"), int) else None
        details = (error.get("error_data") or {}).get("details") if isinstance(error.get("error_data"), Mapping) else ""
        detail = self._transport.scrub(str(details or error.get("message") or ""))[:300]
        message = f"WhatsApp Cloud {what}: {status}{f' (#{code})' if code is not None else ''} {detail}".rstrip()
        if code == RE_ENGAGEMENT:
            return OutsideCustomerWindow(message, status=status)
        if code in AUTH_CODES or status == 401:
            return AuthError(message, status=status)
        if code in RATE_LIMIT_CODES or status == 429:
            return RateLimited(message, retry_after=http.retry_after(response), status=status)
        if code in TRANSIENT_CODES or status >= 500:
            return TransientError(message, status=status, retry_after=http.retry_after(response))
        return PermanentError(message, status=status)


def _sent(data: Any, recipient: str, part: str) -> SentMessage:
    try:
        contacts = data.get("contacts") or []
        wa_id = str(contacts[0].get("wa_id") or recipient) if contacts else recipient
        return SentMessage(
            channel=Channel.WHATSAPP_CLOUD, message_id=str(data["messages"][0]["id"]), chat_id=wa_id, text=part
        )
    except (AttributeError, IndexError, KeyError, TypeError):
        raise PermanentError("WhatsApp Cloud send message: the answer has no message id") from None
