"""Shapes of an integration's config and credentials, per integration type.

Each type registers a config schema and the credential keys it knows. The features that
use a type (CRM, messengers, calendar) own what the values mean; docs/json-fields.md
documents them.
"""
from __future__ import annotations

import re
from typing import Any

from pydantic import ConfigDict

from config.validation import Problem, Schema, check_schema, show


class IntegrationType:
    KOMMO = "kommo"
    GOOGLE_CALENDAR = "google_calendar"
    TELEGRAM = "telegram"
    WHATSAPP_CLOUD = "whatsapp_cloud"
    TWILIO_WHATSAPP = "twilio_whatsapp"

    CHOICES = [
        (KOMMO, "Kommo / amoCRM"),
        (GOOGLE_CALENDAR, "Google Calendar"),
        (TELEGRAM, "Telegram"),
        (WHATSAPP_CLOUD, "WhatsApp Cloud API (Meta)"),
        (TWILIO_WHATSAPP, "Twilio WhatsApp"),
    ]


class OpenConfig(Schema):
    """Settings a later feature adds are allowed; the ones listed here are checked."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


def _https_or_http(value: str | None, key: str) -> list[Problem]:
    if value is not None and not (value.startswith("https://") or value.startswith("http://")):
        return [((key,), f"expected an http(s) URL, got {show(value)}")]
    return []


class KommoConfig(OpenConfig):
    base_url: str | None = None  # https://{subdomain}.kommo.com or https://{subdomain}.amocrm.ru

    def problems(self) -> list[Problem]:
        return _https_or_http(self.base_url, "base_url")


class GoogleCalendarConfig(OpenConfig):
    # a calendar of the connected account (the admin's picker, GET …/google/calendars); default "primary"
    calendar_id: str | None = None

    def problems(self) -> list[Problem]:
        if self.calendar_id is not None and not self.calendar_id.strip():
            return [(("calendar_id",), "must not be empty (leave it out for the account's primary calendar)")]
        return []


# Before the messenger clients these keys were called api_base_url; a value left under the
# old name would be ignored without a word, so it is refused with the new name.
def _renamed(config: OpenConfig) -> list[Problem]:
    extra = config.model_extra or {}
    return [(("api_base_url",), "renamed: use base_url")] if "api_base_url" in extra else []


# +E.164: a plus, a country code (not 0) and up to 15 digits in all; Twilio also shows its
# WhatsApp senders as "whatsapp:+14155238886", which is accepted as it is.
_E164 = re.compile(r"(whatsapp:)?\+[1-9]\d{6,14}")


class TelegramConfig(OpenConfig):
    base_url: str | None = None  # default https://api.telegram.org (a local Bot API server, a test double)

    def problems(self) -> list[Problem]:
        return _https_or_http(self.base_url, "base_url") + _renamed(self)


class WhatsAppCloudConfig(OpenConfig):
    phone_number_id: str | None = None  # WhatsApp Manager → the number's "Phone number ID"
    base_url: str | None = None  # default https://graph.facebook.com/v21.0

    def problems(self) -> list[Problem]:
        problems = _https_or_http(self.base_url, "base_url") + _renamed(self)
        value = self.phone_number_id
        if value is not None and not (value.isascii() and value.isdigit()):
            message = f"expected the number's Phone number ID (digits only), got {show(value)}"
            problems.append((("phone_number_id",), message))
        return problems


class TwilioWhatsAppConfig(OpenConfig):
    from_number: str | None = None  # the WhatsApp sender, +E.164: "+14155238886"
    base_url: str | None = None  # default https://api.twilio.com

    def problems(self) -> list[Problem]:
        problems = _https_or_http(self.base_url, "base_url") + _renamed(self)
        value = self.from_number
        if value is not None and not _E164.fullmatch(value):
            message = f"expected a phone number in international format like +14155238886, got {show(value)}"
            problems.append((("from_number",), message))
        return problems


CONFIG_SCHEMAS: dict[str, type[OpenConfig]] = {
    IntegrationType.KOMMO: KommoConfig,
    IntegrationType.GOOGLE_CALENDAR: GoogleCalendarConfig,
    IntegrationType.TELEGRAM: TelegramConfig,
    IntegrationType.WHATSAPP_CLOUD: WhatsAppCloudConfig,
    IntegrationType.TWILIO_WHATSAPP: TwilioWhatsAppConfig,
}

# The credential keys each messenger's client and webhook checks read (docs/json-fields.md);
# Google Calendar's are written by its OAuth connection (integrations/google/connection.py).
CREDENTIAL_KEYS: dict[str, tuple[str, ...]] = {
    IntegrationType.GOOGLE_CALENDAR: ("access_token", "refresh_token", "expiry"),
    IntegrationType.TELEGRAM: ("bot_token", "secret_token"),
    IntegrationType.WHATSAPP_CLOUD: ("access_token", "app_secret", "verify_token"),
    IntegrationType.TWILIO_WHATSAPP: ("account_sid", "auth_token"),
}


def check_config(value: Any, integration_type: str | None = None) -> list[Problem]:
    if not isinstance(value, dict):
        return [((), f"expected an object, got {show(value)}")]
    schema = CONFIG_SCHEMAS.get(integration_type or "", OpenConfig)
    return check_schema(schema, value)[1]


def check_credentials(value: Any) -> list[Problem]:
    """Credentials are an object of secret strings (tokens, keys, passwords)."""
    if not isinstance(value, dict):
        return [((), "expected an object of secrets, e.g. {\"bot_token\": \"…\"}")]
    problems: list[Problem] = []
    for key, secret in value.items():
        if not isinstance(key, str) or not key.strip():
            problems.append(((), "every key must be a non-empty name"))
        elif not isinstance(secret, str):
            # never echo the value: it is a secret
            problems.append(((key,), "expected a string"))
        elif not secret:
            problems.append(((key,), "must not be empty (leave the key out instead)"))
    return problems
