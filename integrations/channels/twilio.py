"""Twilio WhatsApp: Programmable Messaging client and webhook checks and parsing.
Reference: https://www.twilio.com/docs/messaging/api/message-resource (sending),
https://www.twilio.com/docs/usage/webhooks/webhooks-security (X-Twilio-Signature),
https://www.twilio.com/docs/messaging/guides/webhook-request (the incoming message's parameters).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

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
    send_parts,
    split_text,
    with_sent,
)

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.twilio.com"
MESSAGES = "/2010-04-01/Accounts/{account_sid}/Messages.json"
SIGNATURE_HEADER = "X-Twilio-Signature"
MESSAGE_LIMIT = 1600  # characters of a message's Body
WHATSAPP = "whatsapp:"
# Twilio queues what a sender cannot send at once; this keeps the queue short.
PER_SENDER_PER_SECOND = 20.0

# Twilio's error codes (https://www.twilio.com/docs/api/errors)
AUTHENTICATE = 20003
TOO_MANY_REQUESTS = 20429
OUTSIDE_WINDOW = 63016  # a free-form WhatsApp message outside the 24-hour window
_STATUSES = {"sent": "sent", "delivered": "delivered", "read": "read", "failed": "failed", "undelivered": "failed"}


# --- Webhooks ------------------------------------------------------------------------------


def compute_signature(url: str, params: Mapping[str, Any], auth_token: str) -> str:
    """Twilio's signature: base64 HMAC-SHA1, under the auth token, of the full URL followed
    by every POST parameter sorted by name, each name immediately followed by its value
    (a repeated name: its values sorted, as Twilio's SDKs do)."""
    data = url
    for name in sorted(params):
        for value in sorted(set(_values(params, name))):
            data += name + value
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _values(params: Mapping[str, Any], name: str) -> list[str]:
    getlist = getattr(params, "getlist", None)  # Django's QueryDict
    values = getlist(name) if callable(getlist) else params[name]
    return [str(v) for v in values] if isinstance(values, list | tuple) else [str(values)]


def check_signature(url: str, params: Mapping[str, Any], header_value: str | None, auth_token: str | None) -> bool:
    """Whether X-Twilio-Signature signs this request. ``url`` is the full URL Twilio called,
    query string included, exactly as configured in Twilio (behind a proxy: the public one);
    ``params`` the form-encoded POST parameters (none for a GET). Twilio is inconsistent
    about an explicit default port (":443"), so the URL is tried with and without it."""
    if not header_value or not auth_token:
        return False
    given = header_value.strip().encode()
    return any(
        hmac.compare_digest(compute_signature(candidate, params, auth_token).encode(), given)
        for candidate in _url_variants(url)
    )


def _url_variants(url: str) -> list[str]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return [url]
    host = parts.netloc.rsplit(":", 1)[0] if port else parts.netloc
    default = {"https": 443, "http": 80}.get(parts.scheme)
    without = urlunsplit(parts._replace(netloc=host))
    with_port = url if port else urlunsplit(parts._replace(netloc=f"{host}:{default}")) if default else url
    return list(dict.fromkeys([url, without, with_port]))


def parse_inbound(params: Mapping[str, Any]) -> InboundMessage | None:
    """The text message of an incoming-message webhook; None when it has no text (media
    only, a location) or does not come from WhatsApp (an SMS to the same number).

    Twilio does not say when the message was written: ``sent_at`` is None."""
    sid, sender = params.get("MessageSid"), params.get("From")
    if not isinstance(sid, str) or not sid or not isinstance(sender, str) or not sender:
        raise MalformedPayload("the request has no MessageSid or From")
    body = params.get("Body")
    if not sender.startswith(WHATSAPP) or not isinstance(body, str) or not body.strip():
        return None
    address = sender.removeprefix(WHATSAPP)
    wa_id = params.get("WaId") or ""
    to = params.get("To") or ""
    return InboundMessage(
        channel=Channel.TWILIO_WHATSAPP,
        external_id=sid,
        message_id=sid,
        chat_id=address,
        sender_id=str(wa_id or address.lstrip("+")),
        sender_name=str(params.get("ProfileName") or ""),
        text=body,
        sent_at=None,
        phone=e164(str(wa_id or address)),
        recipient=str(to).removeprefix(WHATSAPP) or None,
    )


def parse_status(params: Mapping[str, Any]) -> StatusUpdate | None:
    """A status callback (sent, delivered, read, failed — "undelivered" counts as failed);
    None for the steps before (queued, sending, accepted…) and for a request that is not a
    status callback (no MessageStatus: an incoming message, which parse_inbound reads)."""
    sid, raw = params.get("MessageSid"), params.get("MessageStatus")
    if not isinstance(sid, str) or not sid:
        raise MalformedPayload("the request has no MessageSid")
    status = _STATUSES.get(raw) if isinstance(raw, str) else None
    if status is None:
        return None
    code = str(params.get("ErrorCode") or "")
    errors = ()
    if code:
        errors = (StatusError(code=int(code) if code.isdigit() else None, title=str(params.get("ErrorMessage") or "")),)
    return StatusUpdate(
        channel=Channel.TWILIO_WHATSAPP,
        message_id=sid,
        recipient_id=str(params.get("To") or "").removeprefix(WHATSAPP),
        status=status,
        errors=errors,
        recipient=str(params.get("From") or "").removeprefix(WHATSAPP) or None,
    )


# --- The client ----------------------------------------------------------------------------


def whatsapp_address(number: str) -> str | None:
    """Twilio's WhatsApp address ("whatsapp:+14155238886") from "+1 415 523 8886", "14155238886" or itself."""
    phone = e164(number)
    return f"{WHATSAPP}{phone}" if phone else None


class TwilioClient:
    """Sends WhatsApp messages from one Twilio sender. ``acquire`` defaults to integrations.ratelimit.acquire."""

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        from_number: str,
        base_url: str | None = DEFAULT_BASE_URL,
        *,
        acquire: Acquire | None = None,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
        per_second: float = PER_SENDER_PER_SECOND,
        max_wait: float = 60.0,
    ) -> None:
        sender = whatsapp_address(from_number)
        if not sender:
            raise PermanentError("Twilio: from_number is not a phone number")
        self.from_address = sender
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self._account_sid = account_sid
        self._auth = (account_sid, auth_token)
        self._throttle = Throttle(f"twilio:{sender}", per_second, max_wait)
        self._transport = Transport(
            vendor="Twilio",
            log_name="channels.twilio.request",
            secrets=(auth_token,),
            acquire=acquire,
            retry=retry,
            session=session,
        )

    def __repr__(self) -> str:
        return f"TwilioClient({self.from_address!r}, {self.base_url!r})"

    def send_text(self, to: str, text: str) -> list[SentMessage]:
        """A WhatsApp text to ``to`` (a phone number or "whatsapp:+…"), split at 1600 characters."""
        what = "send message"
        recipient = whatsapp_address(to)
        if not recipient:
            raise with_sent(PermanentError(f"Twilio {what}: the recipient is not a phone number"), [])
        parts = split_text(text, MESSAGE_LIMIT)
        if not parts:
            raise with_sent(PermanentError(f"Twilio {what}: the text is empty"), [])
        url = self.base_url + MESSAGES.format(account_sid=quote(self._account_sid, safe=""))

        def send_one(part: str) -> SentMessage:
            response = self._transport.call(
                "POST", url, what=what, error_for=self._error_for, idempotent=False,
                throttles=(self._throttle,), auth=self._auth,
                data={"From": self.from_address, "To": recipient, "Body": part},
            )  # fmt: skip
            return _sent(json_body(response), recipient, part)

        return send_parts(parts, send_one)

    def _error_for(self, response: requests.Response, what: str) -> IntegrationError | None:
        status = response.status_code
        if status < 400:
            return None
        data = json_body(response)
        data = data if isinstance(data, Mapping) else {}
        code = data.get("code") if isinstance(data.get("code"), int) else None
        detail = self._transport.scrub(str(data.get("message") or ""), (self._account_sid,))[:300]
        message = f"Twilio {what}: {status}{f' ({code})' if code is not None else ''} {detail}".rstrip()
        if code == AUTHENTICATE or status in (401, 403):
            return AuthError(message, status=status)
        if code == TOO_MANY_REQUESTS or status == 429:
            return RateLimited(message, retry_after=http.retry_after(response), status=status)
        if status >= 500:
            return TransientError(message, status=status, retry_after=http.retry_after(response))
        if code == OUTSIDE_WINDOW:
            return OutsideCustomerWindow(message, status=status)
        return PermanentError(message, status=status)  # 21211 invalid To, 21610 unsubscribed, 63007 no sender…


def _sent(data: Any, recipient: str, part: str) -> SentMessage:
    try:
        created = data.get("date_created")
        return SentMessage(
            channel=Channel.TWILIO_WHATSAPP,
            message_id=str(data["sid"]),
            chat_id=str(data.get("to") or recipient).removeprefix(WHATSAPP),
            text=part,
            sent_at=parsedate_to_datetime(created) if created else None,
            status=data.get("status"),
        )
    except (AttributeError, KeyError, TypeError, ValueError):
        raise PermanentError("Twilio send message: the answer has no message sid") from None
