"""Shapes of an integration's config and credentials, per integration type.

Each type registers a config schema and the credential keys it knows. The features that
use a type (CRM, messengers, calendar) own what the values mean; docs/json-fields.md
documents them.
"""
from __future__ import annotations

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
    calendar_id: str | None = None


class TelegramConfig(OpenConfig):
    api_base_url: str | None = None

    def problems(self) -> list[Problem]:
        return _https_or_http(self.api_base_url, "api_base_url")


class WhatsAppCloudConfig(OpenConfig):
    phone_number_id: str | None = None
    api_base_url: str | None = None

    def problems(self) -> list[Problem]:
        return _https_or_http(self.api_base_url, "api_base_url")


class TwilioWhatsAppConfig(OpenConfig):
    from_number: str | None = None
    api_base_url: str | None = None

    def problems(self) -> list[Problem]:
        return _https_or_http(self.api_base_url, "api_base_url")


CONFIG_SCHEMAS: dict[str, type[OpenConfig]] = {
    IntegrationType.KOMMO: KommoConfig,
    IntegrationType.GOOGLE_CALENDAR: GoogleCalendarConfig,
    IntegrationType.TELEGRAM: TelegramConfig,
    IntegrationType.WHATSAPP_CLOUD: WhatsAppCloudConfig,
    IntegrationType.TWILIO_WHATSAPP: TwilioWhatsAppConfig,
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
