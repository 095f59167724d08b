"""Telegram Bot API client and webhook parsing. Reference: https://core.telegram.org/bots/api

The bot token is part of every URL (``/bot<token>/<method>``): no message, log line or
rate-limit key built here contains a URL, and urllib3's debug lines, which do print
request paths, are masked by a filter this module installs.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests

from integrations import http
from integrations.errors import AuthError, IntegrationError, PermanentError, RateLimited, TransientError

from .base import (
    Acquire,
    Channel,
    InboundMessage,
    MalformedPayload,
    RetryPolicy,
    SentMessage,
    Throttle,
    Transport,
    e164,
    json_body,
    parse_json_object,
    send_parts,
    split_text,
    utf16_len,
    with_sent,
)

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.telegram.org"
SEND_MESSAGE = "sendMessage"
SET_WEBHOOK = "setWebhook"
DELETE_WEBHOOK = "deleteWebhook"
GET_ME = "getMe"

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MESSAGE_LIMIT = 4096  # UTF-16 code units of a message's text
# Telegram's limits: about one message a second to one chat, 20 a minute to one group,
# 30 a second from one bot (https://core.telegram.org/bots/faq#my-bot-is-hitting-limits-how-do-i-avoid-this).
PER_CHAT_PER_SECOND = 1.0
PER_GROUP_PER_SECOND = 20 / 60
PER_BOT_PER_SECOND = 30.0
# A webhook's secret_token: 1-256 characters of A-Z, a-z, 0-9, _ and -.
_SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
_TOKEN = re.compile(r"(\d+):[A-Za-z0-9_-]+")
_TOKEN_LOOKING = re.compile(r"(bot)?(\d{3,}):[A-Za-z0-9_-]{20,}")


@dataclass(frozen=True)
class BotInfo:
    id: int
    username: str
    first_name: str
    can_join_groups: bool = False


# --- Webhooks ------------------------------------------------------------------------------


def check_secret(header_value: str | None, expected: str | None) -> bool:
    """Whether the X-Telegram-Bot-Api-Secret-Token header is the secret_token we set."""
    if not header_value or not expected:
        return False
    return hmac.compare_digest(header_value.encode(), expected.encode())


def parse_update(body: bytes | str) -> InboundMessage | None:
    """The text message an update carries, or None for any other update.

    Taken: ``message`` updates from private chats with text, and the contact the sender
    shares of themselves (the "share my phone number" button): text "" and ``phone`` set.
    None for everything else, on purpose:

    - ``edited_message``: the agent has answered the original; answering the edit too
      would write twice about one question (and its id is the original's, so it would
      also be taken for a redelivery);
    - group, supergroup and channel messages: a sales bot added to a group must not answer
      every member;
    - photos, voice, stickers, a third person's contact and other non-text messages.

    MalformedPayload when the body is not an update.
    """
    update = parse_json_object(body)
    if not isinstance(update.get("update_id"), int):
        raise MalformedPayload("the update has no update_id")
    message = update.get("message")
    if not isinstance(message, Mapping):
        return None
    chat = message.get("chat")
    sender = message.get("from")
    if not isinstance(chat, Mapping) or not isinstance(sender, Mapping):
        raise MalformedPayload("the message has no chat or sender")
    if chat.get("type") != "private":
        return None
    text = message.get("text")
    phone = None
    contact = message.get("contact")
    if not (isinstance(text, str) and text.strip()):
        if isinstance(contact, Mapping) and contact.get("user_id") == sender.get("id"):
            text, phone = "", e164(str(contact.get("phone_number") or ""))
        if phone is None:
            return None
    try:
        chat_id, message_id, sender_id = int(chat["id"]), int(message["message_id"]), int(sender["id"])
        sent_at = datetime.fromtimestamp(int(message["date"]), UTC)
    except (KeyError, TypeError, ValueError, OverflowError):
        raise MalformedPayload("the message lacks its id, chat id, sender id or date") from None
    name = " ".join(str(sender.get(key) or "").strip() for key in ("first_name", "last_name")).strip()
    return InboundMessage(
        channel=Channel.TELEGRAM,
        external_id=f"{chat_id}:{message_id}",
        message_id=str(message_id),
        chat_id=str(chat_id),
        sender_id=str(sender_id),
        sender_name=name,
        sender_username=sender.get("username") or None,
        text=text,
        sent_at=sent_at,
        phone=phone,
        language=sender.get("language_code") or None,
        delivery_id=str(update["update_id"]),
    )


# --- The client ----------------------------------------------------------------------------


class TelegramClient:
    """Calls the Bot API as one bot. ``acquire`` defaults to integrations.ratelimit.acquire."""

    def __init__(
        self,
        bot_token: str,
        base_url: str | None = DEFAULT_BASE_URL,
        *,
        acquire: Acquire | None = None,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
        max_wait: float = 60.0,
    ) -> None:
        match = _TOKEN.fullmatch(bot_token or "")
        if match is None:
            raise AuthError("Telegram: the bot token is not of the form <bot id>:<secret>")
        self.bot_id = match.group(1)
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self._token = bot_token
        self._max_wait = max_wait
        self._transport = Transport(
            vendor="Telegram",
            log_name="channels.telegram.request",
            secrets=(bot_token,),
            acquire=acquire,
            retry=retry,
            session=session,
        )

    def __repr__(self) -> str:
        return f"TelegramClient(bot {self.bot_id}, {self.base_url!r})"

    def _call(
        self,
        method: str,
        payload: Mapping[str, Any],
        *,
        idempotent: bool,
        throttles: Iterable[Throttle] = (),
        secrets: Sequence[str] = (),
    ) -> Any:
        url = f"{self.base_url}/bot{self._token}/{method}"

        def error_for(response: requests.Response, what: str) -> IntegrationError | None:
            return self._error_for(response, what, secrets)

        response = self._transport.call(
            "POST", url, what=method, error_for=error_for, idempotent=idempotent, throttles=throttles, json=payload
        )
        data = json_body(response)
        if not isinstance(data, Mapping) or data.get("ok") is not True or "result" not in data:
            raise PermanentError(f"Telegram {method}: the answer is not a Bot API result", status=response.status_code)
        return data["result"]

    def _error_for(self, response: requests.Response, what: str, secrets: Sequence[str]) -> IntegrationError | None:
        status = response.status_code
        data = json_body(response)
        data = data if isinstance(data, Mapping) else {}
        if status < 400 and data.get("ok") is not False:
            return None
        code = data.get("error_code") if isinstance(data.get("error_code"), int) else status
        description = self._scrub(str(data.get("description") or ""), secrets)[:300]
        message = f"Telegram {what}: {code} {description}".rstrip()
        if code == 429 or status == 429:
            parameters = data.get("parameters") if isinstance(data.get("parameters"), Mapping) else {}
            retry_after = parameters.get("retry_after")
            retry_after = float(retry_after) if isinstance(retry_after, int | float) else http.retry_after(response)
            return RateLimited(message, retry_after=retry_after)
        if status >= 500 or code >= 500:
            return TransientError(message, status=status, retry_after=http.retry_after(response))
        if code in (401, 404):  # the token is wrong or revoked (404: no such bot)
            return AuthError(message, status=code)
        # 400 (chat not found, text is empty…), 403 (the user blocked the bot): not for retrying
        return PermanentError(message, status=code)

    def _scrub(self, text: str, extra: Sequence[str] = ()) -> str:
        return _TOKEN_LOOKING.sub(r"\1\2:[redacted]", self._transport.scrub(text, extra))

    # remote operations

    def get_me(self) -> BotInfo:
        result = self._call(GET_ME, {}, idempotent=True)
        try:
            return BotInfo(
                id=int(result["id"]),
                username=str(result.get("username") or ""),
                first_name=str(result.get("first_name") or ""),
                can_join_groups=bool(result.get("can_join_groups")),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise PermanentError("Telegram getMe: the answer has no bot id") from None

    def set_webhook(
        self, url: str, secret_token: str, allowed_updates: Sequence[str] = ("message",), *, drop_pending: bool = False
    ) -> None:
        """Telegram will POST updates to ``url`` with ``secret_token`` in the X-Telegram-Bot-Api-Secret-Token header."""
        if not _SECRET_TOKEN.fullmatch(secret_token or ""):
            raise PermanentError("Telegram setWebhook: secret_token must be 1-256 characters of A-Z a-z 0-9 _ -")
        payload = {
            "url": url,
            "secret_token": secret_token,
            "allowed_updates": list(allowed_updates),
            "drop_pending_updates": drop_pending,
        }
        # the webhook URL can hold its own secret key: an echo of it is scrubbed as well
        self._call(SET_WEBHOOK, payload, idempotent=True, secrets=(secret_token, url))

    def delete_webhook(self, *, drop_pending: bool = False) -> None:
        self._call(DELETE_WEBHOOK, {"drop_pending_updates": drop_pending}, idempotent=True)

    def send_message(self, chat_id: int | str, text: str) -> list[SentMessage]:
        """The text as plain text (no parse_mode), split at 4096 UTF-16 units; one SentMessage a part.

        Each part waits its turn for the chat (about one a second, 20 a minute in groups)
        and for the bot (30 a second); a 429 is retried after Telegram's retry_after."""
        parts = split_text(text, MESSAGE_LIMIT, utf16_len)
        if not parts:
            raise with_sent(PermanentError(f"Telegram {SEND_MESSAGE}: the text is empty"), [])
        throttles = self._throttles(chat_id)

        def send_one(part: str) -> SentMessage:
            result = self._call(SEND_MESSAGE, {"chat_id": chat_id, "text": part}, idempotent=False, throttles=throttles)
            return _sent(result, part)

        return send_parts(parts, send_one)

    def _throttles(self, chat_id: int | str) -> tuple[Throttle, ...]:
        group = isinstance(chat_id, int | str) and str(chat_id).startswith(("-", "@"))
        per_chat = PER_GROUP_PER_SECOND if group else PER_CHAT_PER_SECOND
        # the chat first: a long wait there must not hold one of the bot's slots unused
        return (
            Throttle(f"telegram:{self.bot_id}:chat:{chat_id}", per_chat, self._max_wait),
            Throttle(f"telegram:{self.bot_id}", PER_BOT_PER_SECOND, self._max_wait),
        )


def _sent(result: Any, part: str) -> SentMessage:
    try:
        return SentMessage(
            channel=Channel.TELEGRAM,
            message_id=str(int(result["message_id"])),
            chat_id=str(result["chat"]["id"]),
            text=part,
            sent_at=datetime.fromtimestamp(int(result["date"]), UTC),
        )
    except (KeyError, TypeError, ValueError, OverflowError):
        raise PermanentError(f"Telegram {SEND_MESSAGE}: the answer has no message id") from None


# --- Masking urllib3's request lines -------------------------------------------------------


class MaskBotTokens(logging.Filter):
    """urllib3 logs every request's path at DEBUG ("POST /bot<token>/sendMessage"): the
    secret half of any bot token is masked before a handler sees the line."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a broken record is left for logging to report
            return True
        masked = _TOKEN_LOOKING.sub(r"\1\2:[redacted]", text)
        if masked != text:
            record.msg, record.args = masked, None
        return True


_MASK = MaskBotTokens()
for _name in ("urllib3.connectionpool", "urllib3.util.retry"):
    _urllib3_logger = logging.getLogger(_name)
    # by name: a reloaded module (autoreload) has a new class, and one mask is enough
    if not any(type(f).__name__ == MaskBotTokens.__name__ for f in _urllib3_logger.filters):
        _urllib3_logger.addFilter(_MASK)
