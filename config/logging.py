"""Logging shared by every process: one masking filter, the line formats, and a filter for
a duplicate django-q2 line.

Secrets travel through places that get logged: webhook URLs carry the integration's key
in their path, Telegram's API URLs the bot token, OAuth callbacks a code, outside
services quote the token they were sent in an error body, and a caller may pass a
dict of credentials as ``extra``. ``MaskSecrets`` takes them out of the message, its
arguments, the ``extra`` fields and the traceback before a handler writes the record:
by shape (Bearer tokens, API keys, JWTs, Telegram bot tokens, ``password=``…), by the
name of a field (``credentials``, ``access_token``…) and by value (the secrets in
settings). It is attached to the handlers and to the loggers that do not reach them
(config/settings/base.py).

Lines are ``<time> <level> <logger> <event> key=value …``: the codebase logs dotted
event names with their facts in ``extra``, which the plain formatter would drop.
``LOG_FORMAT=json`` writes one JSON object a line instead.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "[masked]"

# --- what a secret looks like ------------------------------------------------------------

_FIELD_NAMES = (
    r"password|passwd|pwd|secret|client_secret|app_secret|secret_token|verify_token|access_token|"
    r"refresh_token|id_token|auth_token|bot_token|api_key|apikey|x-api-key|x-goog-api-key|webhook_key|"
    r"authorization|proxy-authorization|cookie|set-cookie|sessionid|csrftoken|x-hub-signature-256|"
    r"x-twilio-signature|x-telegram-bot-api-secret-token"
)
_QUERY_NAMES = r"key|api_key|apikey|access_token|refresh_token|token|code|client_secret|password|signature|sig"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # our own webhook URLs: /api/webhooks/crm/<key>, /api/webhooks/telegram/<key>, …
    (re.compile(r"(/api/webhooks/[a-z_]+/)[^/?#\s\"'<>]+"), r"\1<key>"),
    # "Authorization: Bearer …", "'password': '…'", "client_secret=…" (headers, reprs, bodies)
    (
        re.compile(
            rf"(?i)([\"']?\b(?:{_FIELD_NAMES})\b[\"']?\s*[:=]\s*[\"']?)(?:(?:bearer|basic|token)\s+)?[^\"'\s&,;}}]+"
        ),
        rf"\1{MASK}",
    ),
    # the same names as URL query parameters, and Gemini's ?key=
    (re.compile(rf"(?i)([?&](?:{_QUERY_NAMES})=)[^&#\s\"'<>]+"), rf"\1{MASK}"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"), rf"\1 {MASK}"),
    (re.compile(r"\bToken\s+[0-9a-f]{40}\b"), f"Token {MASK}"),  # DRF's token header
    # Telegram bot tokens: /bot123456789:AA…/sendMessage
    (re.compile(r"\b(bot)?\d{5,}:[A-Za-z0-9_-]{30,}"), rf"\1{MASK}"),
    # vendors' key and token shapes: OpenAI / Anthropic, Google API keys, OAuth tokens and
    # client secrets, JSON Web Tokens (Kommo's access tokens are JWTs)
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), MASK),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{20,}"), MASK),
    (re.compile(r"\bya29\.[0-9A-Za-z_-]{10,}"), MASK),
    (re.compile(r"\b1//[0-9A-Za-z_-]{20,}"), MASK),
    (re.compile(r"\bGOCSPX-[0-9A-Za-z_-]{10,}"), MASK),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+"), MASK),
    # the password of a URL: postgres://user:…@host
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/?#\s@]*:)[^@/?#\s]+@"), rf"\1{MASK}@"),
)

# Fields whose whole value is secret, wherever they appear in ``extra`` or in a dict logged
# as an argument. Exact names: "input_tokens" is a count, not a token.
SECRET_FIELDS = frozenset(
    {
        "password", "passwd", "secret", "client_secret", "app_secret", "secret_token", "verify_token",
        "access_token", "refresh_token", "id_token", "auth_token", "bot_token", "token", "api_key",
        "apikey", "x-api-key", "authorization", "http_authorization", "proxy-authorization", "cookie",
        "http_cookie", "set-cookie", "sessionid", "csrftoken", "credentials", "webhook_key", "code_verifier",
        "encryption_keys", "secret_key",
    }
)  # fmt: skip

# Settings whose values are masked wherever they appear, whatever their shape.
SECRET_SETTINGS = (
    "SECRET_KEY",
    "ENCRYPTION_KEYS",
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_CLIENT_SECRET",
    "METRICS_TOKEN",
)
MIN_SECRET_LENGTH = 6  # shorter values would mask ordinary words


_secrets_cache: tuple[tuple[Any, ...], tuple[str, ...]] = ((), ())


def _configured_secrets() -> tuple[str, ...]:
    """The secret values in settings (an ENCRYPTION_KEYS entry and its key part, database
    passwords), longest first so that a secret containing another is masked whole. Read
    at every record, since tests and a reloaded configuration change them."""
    global _secrets_cache
    try:
        from django.conf import settings

        if not settings.configured:
            return ()
        raw = tuple(getattr(settings, name, None) for name in SECRET_SETTINGS) + tuple(
            database.get("PASSWORD") for database in getattr(settings, "DATABASES", {}).values()
        )
    except Exception:  # settings that cannot be read yet (the logging of a failing startup)
        return ()
    seen, secrets = _secrets_cache
    if seen == raw:
        return secrets
    values: list[str] = []
    for value in raw:
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, str):
                values += [item, item.partition(":")[2]]  # "id:base64key" → the key too
    secrets = tuple(sorted({v for v in values if len(v) >= MIN_SECRET_LENGTH}, key=len, reverse=True))
    _secrets_cache = (raw, secrets)
    return secrets


def mask(text: str, secrets: Iterable[str] | None = None) -> str:
    """``text`` with every secret it holds replaced by ``[masked]`` (webhook keys by ``<key>``)."""
    for secret in _configured_secrets() if secrets is None else secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def mask_webhook_keys(text: str) -> str:
    return _PATTERNS[0][0].sub(_PATTERNS[0][1], text)


def mask_value(value: Any, secrets: tuple[str, ...] | None = None) -> Any:
    """A copy of ``value`` with secrets masked: strings by ``mask``, the values of secret
    fields in dicts as a whole, lists and tuples item by item. Other objects are returned
    as they are (the formatters mask their text when they write them)."""
    secrets = _configured_secrets() if secrets is None else secrets
    if isinstance(value, str):
        return mask(value, secrets)
    if isinstance(value, Mapping):
        return {
            key: MASK if _is_secret_field(key) and value[key] not in (None, "") else mask_value(value[key], secrets)
            for key in value
        }
    if isinstance(value, list | tuple):
        items = [mask_value(item, secrets) for item in value]
        return items if isinstance(value, list) else tuple(items)
    return value


def _is_secret_field(name: Any) -> bool:
    return isinstance(name, str) and name.lower() in SECRET_FIELDS


# --- the filter ------------------------------------------------------------------------------

# LogRecord's own attributes: anything else on a record came from ``extra``.
RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
_traceback_formatter = logging.Formatter()


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in RECORD_ATTRIBUTES}


class MaskSecrets(logging.Filter):
    """Masks secrets in a record in place, before any formatter sees it (see the module
    docstring). Values handed in by the caller are replaced by masked copies, never changed."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = _configured_secrets()
        if record.args:
            record.args = mask_value(record.args, secrets)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the handler to report
            message = None
        if message is not None:
            masked = mask(message, secrets)
            if masked != message or not isinstance(record.msg, str):
                record.msg, record.args = masked, None
        for key, value in extra_fields(record).items():
            if _is_secret_field(key) and value not in (None, ""):
                setattr(record, key, MASK)
            elif isinstance(value, str | Mapping | list | tuple):
                masked_value = mask_value(value, secrets)
                if masked_value != value:
                    setattr(record, key, masked_value)
        if record.exc_info and not record.exc_text:
            # formatted once here, masked, and reused by every formatter (they format
            # exc_info only when exc_text is empty)
            record.exc_text = _traceback_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text, secrets)
        if record.stack_info:
            record.stack_info = mask(record.stack_info, secrets)
        return True


# The name the LOGGING setting and older code know it by: masking webhook keys was its
# first job.
MaskWebhookKeys = MaskSecrets


# --- the formats ---------------------------------------------------------------------------

# extras that repeat what the line already says, or objects that say nothing in a line:
# Django's request object (the request log line has its facts), uvicorn's coloured copy
# of the message, runserver's own timestamp
SKIPPED_EXTRAS = frozenset({"request", "color_message", "server_time"})
_BARE = re.compile(r"[^\s\"=]+")


def _printable(value: Any) -> Any:
    """A value as JSON can hold it; other objects as their (masked) text."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_printable(v) for v in value]
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    return mask(str(value))


def _logfmt(value: Any) -> str:
    value = _printable(value)
    if isinstance(value, str):
        return value if _BARE.fullmatch(value) else json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class StructuredFormatter(logging.Formatter):
    """The usual text line, followed by the record's ``extra`` fields as ``key=value``
    (values with spaces or quotes JSON-quoted), then the traceback if any."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's naming)
        line = super().formatMessage(record)
        pairs = [f"{key}={_logfmt(value)}" for key, value in extra_fields(record).items() if key not in SKIPPED_EXTRAS]
        return f"{line} {' '.join(pairs)}" if pairs else line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message (the event
    name), the ``extra`` fields, and the traceback as ``exc_info`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            if key not in SKIPPED_EXTRAS:
                data[key if key not in data else f"extra.{key}"] = _printable(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exc_info"] = record.exc_text
        if record.stack_info:
            data["stack_info"] = record.stack_info
        return json.dumps(data, ensure_ascii=False, default=str)


# crm/intake.py writes a delivery's django-q2 task into the same statement as its events,
# through async_task with a stand-in broker whose enqueue answers this; django-q2 then logs
# "Enqueued [cluster] (in the webhook's statement)" for every delivery, next to the
# intake's own crm.webhook.accepted line. That duplicate is dropped here.
QUEUED_IN_STATEMENT = "(in the webhook's statement)"


class DropQueuedInStatement(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.endswith(QUEUED_IN_STATEMENT))
