"""What the messenger channels share: the messages in and out, text splitting, the transport.

Each channel module (telegram, whatsapp_cloud, twilio) has a client that sends and pure
functions that check and parse the channel's webhooks; none of them touches the database.

A send that needs several messages (the text is over the channel's limit) sends them in
order; if one fails, the error raised carries ``sent``: the parts that did go out before
it (an empty tuple when none did), so a caller that retries can skip them.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import requests

from integrations import http, ratelimit
from integrations.errors import IntegrationError, PermanentError, RateLimited, TransientError
from integrations.http import RetryPolicy
from observability.metrics import integration_call_failed

logger = logging.getLogger(__name__)


class Channel:
    TELEGRAM = "telegram"
    WHATSAPP_CLOUD = "whatsapp_cloud"
    TWILIO_WHATSAPP = "twilio_whatsapp"


# --- Messages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class InboundMessage:
    """A text message a person sent to one of our bots or numbers."""

    channel: str
    external_id: str  # unique per integration: the key to drop a redelivered webhook
    message_id: str  # the vendor's id of the message (Telegram's is unique per chat only)
    chat_id: str  # what the channel's client sends a reply to
    sender_id: str
    sender_name: str
    text: str
    sent_at: datetime | None  # aware UTC; None when the vendor does not say (Twilio)
    phone: str | None = None  # +E.164, when the channel tells it
    sender_username: str | None = None  # Telegram's @username, without the @
    language: str | None = None  # an IETF language tag the sender's app uses (Telegram)
    recipient: str | None = None  # our side: WhatsApp's phone_number_id, Twilio's To number
    delivery_id: str | None = None  # the vendor's id of the webhook delivery (Telegram's update_id)


@dataclass(frozen=True)
class SentMessage:
    channel: str
    message_id: str
    chat_id: str
    text: str  # the part this message carried
    sent_at: datetime | None = None  # aware UTC, when the vendor says
    status: str | None = None  # Twilio's first status ("queued")


@dataclass(frozen=True)
class StatusError:
    code: int | None
    title: str
    details: str = ""


@dataclass(frozen=True)
class StatusUpdate:
    """What happened to a message we sent: sent, delivered, read or failed (with errors)."""

    channel: str
    message_id: str
    recipient_id: str
    status: str
    at: datetime | None = None
    errors: tuple[StatusError, ...] = ()
    recipient: str | None = None  # our side, as in InboundMessage


class MalformedPayload(ValueError):
    """A webhook body that is not what the vendor sends (not JSON, required fields missing).

    Webhook views answer it with 400; the message names what is wrong, never a value."""


# --- Splitting -----------------------------------------------------------------------------


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the way Telegram counts (an emoji outside the BMP is 2)."""
    return len(text.encode("utf-16-le")) // 2


# A sentence ends at . ! ? or … (with closing quotes or brackets) followed by white space.
_SENTENCE_END = re.compile(r"[.!?…]+[\"'»”’)\]]*(?=\s)")
_WHITESPACE = re.compile(r"\s")


def split_text(text: str, limit: int, measure: Callable[[str], int] = len) -> list[str]:
    """``text`` in parts of at most ``limit`` (as ``measure`` counts), cut cleanly.

    Each cut is at the last paragraph break that fits, else the last line break, else the
    last sentence end, else the last space — a break of a higher kind is used only when it
    keeps at least half a message in the part, so that a paragraph break near the start
    does not leave a one-line message. A word is cut only when it alone is longer than the
    limit. White space around the cuts is dropped; an empty or blank text gives no parts.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    parts: list[str] = []
    rest = text.strip()
    while rest:
        if measure(rest) <= limit:
            parts.append(rest)
            break
        end = _longest_fitting_prefix(rest, limit, measure)
        cut = _clean_cut(rest, end)
        head, rest = rest[:cut].rstrip(), rest[cut:].lstrip()
        if head:
            parts.append(head)
    return parts


def _longest_fitting_prefix(text: str, limit: int, measure: Callable[[str], int]) -> int:
    """The largest n with measure(text[:n]) <= limit (at least 1, so that splitting ends)."""
    if measure is len:
        return min(limit, len(text))
    low, high = 1, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if measure(text[:middle]) <= limit:
            low = middle
        else:
            high = middle - 1
    return low


def _clean_cut(text: str, end: int) -> int:
    """Where to cut ``text`` so that the head is within text[:end]; separators are dropped."""
    enough = end // 2
    # a separator may start at `end` itself: it is dropped, so the head still fits
    paragraph = text.rfind("\n\n", 0, end + 2)
    if paragraph >= enough:
        return paragraph
    line = text.rfind("\n", 0, end + 1)
    if line >= enough:
        return line
    sentence_ends = [m.end() for m in _SENTENCE_END.finditer(text, 0, end + 1)]
    if sentence_ends and sentence_ends[-1] >= enough:
        return sentence_ends[-1]
    spaces = [m.start() for m in _WHITESPACE.finditer(text, 0, end + 1)]
    if spaces and spaces[-1] > 0:
        return spaces[-1]
    return end  # one word longer than the limit


# --- Phone numbers -------------------------------------------------------------------------


def e164(number: str | None) -> str | None:
    """A number as +E.164 ("+79991234567") from "79991234567", "+7 999 123-45-67" or "whatsapp:+7…"."""
    if not number:
        return None
    digits = re.sub(r"\D", "", number.removeprefix("whatsapp:"))
    return f"+{digits}" if digits else None


# --- Transport -----------------------------------------------------------------------------


Acquire = Callable[..., object]  # integrations.ratelimit.acquire's signature: (key, per_second, *, max_wait)


def default_acquire(key: str, per_second: float, *, max_wait: float | None = None) -> object:
    # looked up at call time, so that tests can patch integrations.ratelimit.acquire
    return ratelimit.acquire(key, per_second, max_wait=max_wait)


@dataclass(frozen=True)
class Throttle:
    key: str
    per_second: float
    max_wait: float | None = None


class Transport:
    """Sends one kind of request for a client: rate limit, retry, typed errors, quiet logs.

    ``error_for(response)`` maps an answer to an error (None: success). Whatever a client
    knows to be secret is given as ``secrets`` and scrubbed from every message; requests'
    own exceptions are never quoted nor chained, since they can carry the URL (Telegram's
    token is in it) or the headers.
    """

    def __init__(
        self,
        *,
        vendor: str,
        log_name: str,
        secrets: Iterable[str],
        acquire: Acquire | None,
        retry: RetryPolicy | None,
        session: requests.Session | None,
    ) -> None:
        self.vendor = vendor
        self.log_name = log_name
        self.secrets = tuple(s for s in secrets if s)
        self.acquire = acquire if acquire is not None else default_acquire
        self.retry = retry if retry is not None else RetryPolicy()
        self.session = session

    def scrub(self, text: str, extra: Iterable[str] = ()) -> str:
        for secret in (*self.secrets, *extra):
            if secret and len(secret) >= 4:
                text = text.replace(secret, "[redacted]")
        return text

    def call(
        self,
        method: str,
        url: str,
        *,
        what: str,
        error_for: Callable[[requests.Response, str], IntegrationError | None],
        idempotent: bool,
        throttles: Iterable[Throttle] = (),
        **kwargs: Any,
    ) -> requests.Response:
        """The successful response, or the typed error of the last attempt.

        A 429 is retried (the vendor refused, nothing was done); a 5xx or a timeout only
        when ``idempotent``, since a message may have gone out; a connection that was
        never made always. ``what`` names the call in messages and must hold no secret."""
        throttles = tuple(throttles)
        last = self.retry.attempts - 1
        for attempt in range(self.retry.attempts):
            for throttle in throttles:
                self.acquire(throttle.key, throttle.per_second, max_wait=throttle.max_wait)
            response, error, sent = self._send(method, url, what, kwargs)
            if response is not None:
                logger.info(
                    self.log_name,
                    extra={"call": what, "status": response.status_code, "attempt": attempt + 1},
                )
                error = error_for(response, what)
                if error is None:
                    return response
            assert error is not None
            retryable = isinstance(error, RateLimited) or (
                isinstance(error, TransientError) and (idempotent or not sent)
            )
            retry_after = getattr(error, "retry_after", None)
            if not retryable or attempt == last or (retry_after or 0) > self.retry.max_delay:
                error = http.unconfirmed_if_sent(error, not idempotent and sent)
                integration_call_failed(vendor=self.vendor, call=what, error=error, attempts=attempt + 1)
                raise error
            delay = self.retry.delay(attempt, retry_after)
            logger.warning(
                f"{self.log_name}.retry",
                extra={"call": what, "error": type(error).__name__, "status": error.status,
                       "attempt": attempt + 1, "delay": round(delay, 2)},
            )  # fmt: skip
            self.retry.sleep(delay)
        raise AssertionError("unreachable")

    def _send(
        self, method: str, url: str, what: str, kwargs: dict[str, Any]
    ) -> tuple[requests.Response | None, IntegrationError | None, bool]:
        """(response, None, True) or (None, error, whether the vendor may have got it).

        The error is built inside the except block but raised by the caller outside it, so
        that it has no __context__ pointing at requests' exception (which quotes the URL)."""
        session = self.session or http.session()
        try:
            return session.request(method, url, **kwargs), None, True
        except requests.ConnectTimeout:
            return None, TransientError(f"{self.vendor} {what}: timed out connecting"), False
        except requests.Timeout:
            return None, TransientError(f"{self.vendor} {what}: timed out"), True
        except requests.ConnectionError as exc:
            error = TransientError(f"{self.vendor} {what}: connection failed ({type(exc).__name__})")
            return None, error, not http.never_connected(exc)
        except requests.RequestException as exc:
            error = PermanentError(f"{self.vendor} {what}: the request could not be sent ({type(exc).__name__})")
            return None, error, False


def json_body(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def with_sent(error: IntegrationError, sent: list[SentMessage]) -> IntegrationError:
    """The error, telling which parts of a split message went out before it."""
    error.sent = tuple(sent)  # type: ignore[attr-defined]
    return error


def send_parts(parts: Iterable[str], send_one: Callable[[str], SentMessage]) -> list[SentMessage]:
    """Send each part in order; an error raised midway carries ``sent``, the parts that
    went out before it (see the module docstring)."""
    sent: list[SentMessage] = []
    for part in parts:
        try:
            sent.append(send_one(part))
        except IntegrationError as error:
            with_sent(error, sent)
            raise
    return sent


class OutsideCustomerWindow(PermanentError):
    """WhatsApp refused a free-form message: the customer last wrote over 24 hours ago,
    so only an approved template may be sent (Meta's 131047, Twilio's 63016)."""


def parse_json_object(body: bytes | str) -> Mapping[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, TypeError):
        raise MalformedPayload("the body is not JSON") from None
    if not isinstance(data, dict):
        raise MalformedPayload("the body is not a JSON object")
    return data
